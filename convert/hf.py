"""Exact conversions between Hugging Face models and bmojo's baseline families.

| Hugging Face             | bmojo `mixer_types`           | block                                         |
|--------------------------|-------------------------------|-----------------------------------------------|
| `LlamaForCausalLM`       | all `"full_attention"`        | x + Attn(RMSNorm(x)) -> h + SwiGLU(RMSNorm(h)) |
| `MistralForCausalLM`     | all `"sliding_attention"`     | the same, keys in (t - w, t]                  |
| `Mamba2ForCausalLM`      | all `"mamba2"`, intermediate_size=0 | x + Mamba2(RMSNorm(x)), no MLP          |

Both directions compute the same function as the source, weight for weight: the mixers were checked
against transformers' code term by term (RoPE in the rotate-half layout with inv_freq = theta^(-2i/D),
RMSNorm in float32 with the weight multiplied after the cast back, GQA by repeat-interleave, the sliding
window `kv > q - w`, Mamba-2's in_proj split [z, xBC, dt], the causal depthwise conv + SiLU, dt =
softplus(dt + dt_bias), A = -exp(A_log), the D skip, and the gated norm RMSNorm(y * SiLU(z))). Where a
source config asks for something bmojo does not compute, the conversion raises a ValueError naming the field
instead of producing a model that only looks converted. tests/test_convert.py measures the logits.

What is not one to one, and why that is still exact:
- `max_position_embeddings` has no role in bmojo (RoPE is computed for any position); it is carried along
  as a config attribute so that converting back restores it.
- A Mamba2 source without a conv bias (`use_conv_bias=False`) gets a zero bias.
- HF Mamba2's `residual_in_fp32` keeps the residual stream in float32 under bf16; bmojo keeps it in the
  model's dtype. In float32 the two are identical; in bf16 they differ by rounding only.
- bmojo bounds the step size at dt <= 100 and A <= 1e4 (`modeling_bmojo/mamba2.py`); HF Mamba2 does not
  (its default `time_step_limit` is (0, inf)). A source with A_log beyond the bound is refused; dt > 100
  needs a softplus input above 100, which no trained model produces.
"""

import math

import torch

from ..configuration import BMojoConfig
from ..modeling_bmojo import BMojoForCausalLM
from ..modeling_bmojo.mamba2 import A_LOG_MAX

SOURCE_TYPES = ("llama", "mistral", "mamba2")


def _refuse(source, field, value, why):
    raise ValueError(f"cannot convert {source}: {field}={value!r} {why}")


def _rope_theta(hf_config, source):
    """theta of a plain RoPE; any scaling (rope_scaling / rope_parameters other than theta) is refused."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        _refuse(source, "rope_parameters['rope_type'] (rope_scaling)", rope_type,
                "is not computed by bmojo, which has plain RoPE only (rope_type 'default')")
    for key, value in params.items():
        if key not in ("rope_type", "rope_theta") and not (key == "partial_rotary_factor" and value == 1.0):
            _refuse(source, f"rope_parameters[{key!r}]", value, "is not computed by bmojo (plain RoPE only)")
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


def _require(hf_config, source, field, allowed, why):
    value = getattr(hf_config, field, allowed)
    if value != allowed:
        _refuse(source, field, value, f"{why} (only {allowed!r} converts exactly)")


def _common_kwargs(hf_config):
    return dict(vocab_size=hf_config.vocab_size, hidden_size=hf_config.hidden_size,
                num_hidden_layers=hf_config.num_hidden_layers, initializer_range=hf_config.initializer_range,
                tie_word_embeddings=bool(hf_config.tie_word_embeddings), pad_token_id=hf_config.pad_token_id,
                bos_token_id=hf_config.bos_token_id, eos_token_id=hf_config.eos_token_id,
                use_cache=bool(getattr(hf_config, "use_cache", True)))


def _unused_ssm_kwargs(hidden_size):
    """SSM fields of an attention-only model: never used, only chosen to pass validation at any width."""
    return dict(ssm_expand=2, ssm_head_dim=math.gcd(64, 2 * hidden_size), ssm_n_groups=1)


def _attention_kwargs(hf_config):
    """BMojoConfig keyword arguments for a Llama or Mistral config (mixer_types not included)."""
    source = type(hf_config).__name__
    _require(hf_config, source, "hidden_act", "silu", "is not bmojo's MLP activation (SwiGLU with SiLU)")
    _require(hf_config, source, "attention_bias", False, "needs biases bmojo's attention projections lack")
    _require(hf_config, source, "mlp_bias", False, "needs biases bmojo's MLP projections lack")
    _require(hf_config, source, "attention_dropout", 0.0, "is not implemented by bmojo (no dropout)")
    _require(hf_config, source, "pretraining_tp", 1, "splits the projections in a way bmojo does not")
    if hf_config.intermediate_size < 1:
        _refuse(source, "intermediate_size", hf_config.intermediate_size, "must be >= 1")
    kwargs = _common_kwargs(hf_config)
    kwargs.update(intermediate_size=hf_config.intermediate_size,
                  num_attention_heads=hf_config.num_attention_heads,
                  num_key_value_heads=hf_config.num_key_value_heads, head_dim=hf_config.head_dim,
                  qk_norm=False, rope_theta=_rope_theta(hf_config, source),
                  rms_norm_eps=hf_config.rms_norm_eps,
                  max_position_embeddings=hf_config.max_position_embeddings,
                  **_unused_ssm_kwargs(hf_config.hidden_size))
    return kwargs


def _mamba2_kwargs(hf_config):
    source = type(hf_config).__name__
    _require(hf_config, source, "hidden_act", "silu", "is not bmojo's Mamba-2 activation (SiLU)")
    _require(hf_config, source, "use_bias", False, "needs in_proj/out_proj biases bmojo's Mamba-2 lacks")
    _require(hf_config, source, "n_groups", 1,
             "normalises the gated output per group of heads; bmojo's gated RMSNorm spans the whole "
             "inner width")
    limit = tuple(float(x) for x in hf_config.time_step_limit)
    if limit != (0.0, math.inf):
        _refuse(source, "time_step_limit", hf_config.time_step_limit,
                "clamps dt where bmojo does not (bmojo: dt in [0, 100]; only (0.0, inf) converts exactly)")
    if not isinstance(hf_config.expand, int) or hf_config.expand * hf_config.hidden_size != \
            hf_config.num_heads * hf_config.head_dim:
        _refuse(source, "expand", hf_config.expand,
                "must be an integer with expand * hidden_size = num_heads * head_dim")
    kwargs = _common_kwargs(hf_config)
    hidden = hf_config.hidden_size
    kwargs.update(intermediate_size=0, rms_norm_eps=hf_config.layer_norm_epsilon,
                  ssm_state_size=hf_config.state_size, ssm_head_dim=hf_config.head_dim,
                  ssm_expand=hf_config.expand,
                  ssm_n_groups=1, conv_kernel=hf_config.conv_kernel, ssm_chunk_size=hf_config.chunk_size,
                  dt_min=hf_config.time_step_min, dt_max=hf_config.time_step_max,
                  dt_init_floor=hf_config.time_step_floor,
                  # Attention fields of a Mamba-only model: never used, chosen to pass validation.
                  num_attention_heads=1, num_key_value_heads=1, head_dim=2 * max(1, hidden // 2))
    return kwargs


def config_from_hf(hf_config):
    """The `BMojoConfig` of the bmojo family that computes what `hf_config`'s model computes."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type == "llama":
        kwargs = _attention_kwargs(hf_config)
        kwargs["mixer_types"] = ["full_attention"] * hf_config.num_hidden_layers
    elif model_type == "mistral":
        kwargs = _attention_kwargs(hf_config)
        window = hf_config.sliding_window
        kind = "full_attention" if window is None else "sliding_attention"  # no window: causal attention
        kwargs.update(mixer_types=[kind] * hf_config.num_hidden_layers)
        if window is not None:
            kwargs.update(window_size=window, eidetic_tokens_per_chunk=min(32, window))
    elif model_type == "mamba2":
        kwargs = _mamba2_kwargs(hf_config)
        kwargs["mixer_types"] = ["mamba2"] * hf_config.num_hidden_layers
    else:
        raise ValueError(f"cannot convert a model of model_type {model_type!r}: bmojo converts "
                         f"{SOURCE_TYPES}")
    return BMojoConfig(**kwargs)


def config_to_hf(config):
    """The transformers config (Llama, Mistral or Mamba2) of the HF model that computes what a bmojo
    model of `config` computes; a ValueError naming the field when there is none."""
    from transformers import LlamaConfig, Mamba2Config, MistralConfig

    kinds = set(config.mixer_types)
    common = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                  num_hidden_layers=config.num_hidden_layers, initializer_range=config.initializer_range,
                  tie_word_embeddings=config.tie_word_embeddings, pad_token_id=config.pad_token_id,
                  bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                  use_cache=config.use_cache)
    if kinds in ({"full_attention"}, {"sliding_attention"}):
        if config.qk_norm:
            raise ValueError("cannot convert to Llama/Mistral: BMojoConfig.qk_norm=True (they have no QK "
                             "norm)")
        if config.intermediate_size < 1:
            raise ValueError("cannot convert to Llama/Mistral: BMojoConfig.intermediate_size=0 (their blocks "
                             "always have an MLP)")
        attention = dict(common, intermediate_size=config.intermediate_size,
                         num_attention_heads=config.num_attention_heads,
                         num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
                         hidden_act="silu", rms_norm_eps=config.rms_norm_eps,
                         rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)})
        max_positions = getattr(config, "max_position_embeddings", None)
        if max_positions is not None:
            attention["max_position_embeddings"] = max_positions
        if kinds == {"full_attention"}:
            return LlamaConfig(attention_bias=False, mlp_bias=False, **attention)
        return MistralConfig(sliding_window=config.window_size, **attention)
    if kinds == {"mamba2"}:
        if config.intermediate_size != 0:
            raise ValueError(f"cannot convert to Mamba2: BMojoConfig.intermediate_size="
                             f"{config.intermediate_size} (HF Mamba2 blocks have no MLP; only 0 converts)")
        if config.ssm_n_groups != 1:
            raise ValueError(f"cannot convert to Mamba2: BMojoConfig.ssm_n_groups={config.ssm_n_groups} (HF "
                             f"Mamba2 normalises the gated output per group; only 1 converts exactly)")
        return Mamba2Config(num_heads=config.ssm_num_heads, head_dim=config.ssm_head_dim,
                            state_size=config.ssm_state_size, expand=config.ssm_expand, n_groups=1,
                            conv_kernel=config.conv_kernel, chunk_size=config.ssm_chunk_size,
                            layer_norm_epsilon=config.rms_norm_eps, use_bias=False, use_conv_bias=True,
                            hidden_act="silu", residual_in_fp32=False, time_step_min=config.dt_min,
                            time_step_max=config.dt_max, time_step_floor=config.dt_init_floor, **common)
    raise ValueError(f"cannot convert BMojoConfig.mixer_types={config.mixer_types!r} to a Hugging Face "
                     f"model: all layers must be 'full_attention' (Llama), 'sliding_attention' (Mistral) "
                     f"or 'mamba2'")


# Parameter names: bmojo's name -> the HF name, per family. Layer-level names get the layer prefixes.
_ATTENTION_LAYER = {
    "input_norm.weight": "input_layernorm.weight",
    "post_mixer_norm.weight": "post_attention_layernorm.weight",
    **{f"mixer.{p}_proj.weight": f"self_attn.{p}_proj.weight" for p in "qkvo"},
    **{f"mlp.{p}_proj.weight": f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")},
}
_MAMBA2_LAYER = {
    "input_norm.weight": "norm.weight",
    **{f"mixer.{p}": f"mixer.{p}" for p in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias",
                                            "A_log", "D", "norm.weight", "out_proj.weight")},
}


def parameter_names(config):
    """{bmojo parameter name: HF parameter name} for a bmojo config of a convertible family."""
    attention = config.mixer_types[0] != "mamba2"
    base, layer = ("model", _ATTENTION_LAYER) if attention else ("backbone", _MAMBA2_LAYER)
    names = {"model.embed_tokens.weight": f"{base}.{'embed_tokens' if attention else 'embeddings'}.weight",
             "model.norm.weight": f"{base}.{'norm' if attention else 'norm_f'}.weight",
             "lm_head.weight": "lm_head.weight"}
    for i in range(config.num_hidden_layers):
        names.update({f"model.layers.{i}.{ours}": f"{base}.layers.{i}.{theirs}"
                      for ours, theirs in layer.items()})
    return names


def _copy_weights(source, target, names):
    """Loads `target` from `source` through the name map {target name: source name}; every target
    parameter must be named and every shape must match (load_state_dict strict)."""
    weights = source.state_dict()
    tied = "lm_head.weight" not in weights or target.config.tie_word_embeddings
    out = {}
    for mine, theirs in names.items():
        if mine == "lm_head.weight" and tied:
            continue  # the tied head is the embedding, loaded under its own name
        value = weights.get(theirs)
        if value is None and theirs.endswith("conv1d.bias"):  # use_conv_bias=False: a zero bias
            value = torch.zeros(target.state_dict()[mine].shape, dtype=weights[theirs[:-4] + "weight"].dtype)
        out[mine] = value
    if tied:
        out["lm_head.weight"] = out[next(k for k in names if k.endswith("embed_tokens.weight")
                                         or k.endswith("embeddings.weight"))]
    target.load_state_dict(out, strict=True)


def _dtype(model):
    return next(model.parameters()).dtype


def from_hf(model):
    """A bmojo model computing what the HF `LlamaForCausalLM`, `MistralForCausalLM` or `Mamba2ForCausalLM`
    `model` computes, with its weights (copies) and its dtype. ValueError naming the field it cannot map."""
    config = config_from_hf(model.config)
    if config.mixer_types[0] == "mamba2":
        a_log = max(float(layer.mixer.A_log.detach().max()) for layer in model.backbone.layers)
        if a_log > A_LOG_MAX:
            raise ValueError(f"cannot convert {type(model).__name__}: mixer.A_log reaches {a_log:.3g}, "
                             f"beyond bmojo's bound log(1e4) = {A_LOG_MAX:.3g} on the decay rate")
    target = BMojoForCausalLM(config).to(_dtype(model))
    _copy_weights(model, target, parameter_names(config))
    _copy_generation_config(model, target)
    return target.train(model.training)


def to_hf(model):
    """The HF model (Llama, Mistral or Mamba2) computing what the bmojo `model` computes, with its weights."""
    from transformers import AutoModelForCausalLM

    hf_config = config_to_hf(model.config)
    target = AutoModelForCausalLM.from_config(hf_config).to(_dtype(model))
    names = parameter_names(model.config)
    _copy_weights(model, target, {theirs: mine for mine, theirs in names.items()})
    _copy_generation_config(model, target)
    return target.train(model.training)


def _copy_generation_config(source, target):
    generation = getattr(source, "generation_config", None)
    if generation is not None:
        target.generation_config = type(generation).from_dict(generation.to_dict())
