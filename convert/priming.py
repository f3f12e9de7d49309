"""Priming: a B'MOJO (or B'MOJO-F, or any `mixer_types` pattern) started from a pretrained Llama or Mistral.

The authors build their B'MOJO-F models this way (awslabs/hybrid-model-factory, docs/Priming.md and
priming/hybrid_layer_init.py; read for reference, nothing copied): every weight the new model shares with
the Transformer is copied, the new state-space layers are initialised from the attention weights they
replace, and a first training stage teaches only the new weights to reproduce the Transformer's final
hidden states (mean squared error before the LM head) with everything copied frozen.

What `prime` copies from the source, per layer kind:
- all: embeddings, LM head, final norm, each block's two RMSNorms and its SwiGLU MLP;
- `bmojo`, `sliding_attention`, `full_attention`: q/k/v/o projections (and the untied fading K/V
  projections of `tie_fading_projections=False` start as copies of k/v);
- the Mamba-2 fading memory of a `bmojo` layer, and the mixer of a `mamba2` layer, with
  `fading_init="attention"` (default): value -> x, key -> B, query -> C, output -> out_proj, and the gate
  z = (W_O^T + W_V repeated) / 2 (the authors' gate initialisation). Removing the softmax from attention
  leaves the recurrence y_t = sum_s (C_t . B_s) x_s that Mamba-2 computes with a decay, so this choice
  starts the SSM as a decayed linear attention with the teacher's own projections. The shapes are made to
  fit as in "The Mamba in the Llama" (Wang et al., 2024): one SSM head per query head (ssm_head_dim =
  head_dim, inner width H * head_dim, so ssm_expand = H * head_dim / hidden_size), state size = head_dim,
  one B/C group per head (ssm_n_groups = H), and the K and V rows of a key-value head repeated for each
  query head of its GQA group, so that head h reads the same key and value head as attention's head h.
  The convolution, dt_bias, A_log, D and the gated norm keep their usual fresh initialisation (as the
  authors do). `fading_init="fresh"` initialises the SSM from scratch with the config's SSM shapes;
- the innovation predictor is always fresh.

A primed B'MOJO whose window covers the whole input, with fading_tokens = 0 and eidetic_capacity = 0,
computes exactly the source Transformer (tests/test_convert.py): the window is then causal attention.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from transformers.utils import ModelOutput

from ..configuration import BMojoConfig
from ..modeling_bmojo import BMojoForCausalLM
from .hf import _attention_kwargs

FADING_INITS = ("attention", "fresh")
_NEW_IN_BMOJO = (".mixer.fading.", ".mixer.predictor.", ".mixer.kf_proj.", ".mixer.vf_proj.")


def _ssm_shapes_from_attention(hf_config):
    """The SSM shapes that let the Mamba-2 projections be the attention's (module docstring)."""
    heads, head_dim, hidden = hf_config.num_attention_heads, hf_config.head_dim, hf_config.hidden_size
    if (heads * head_dim) % hidden:
        raise ValueError(
            f"fading_init='attention' needs num_attention_heads * head_dim ({heads} * {head_dim}) to be a "
            f"multiple of hidden_size={hidden} (the SSM's inner width is ssm_expand * hidden_size); "
            f"use fading_init='fresh'")
    return dict(ssm_head_dim=head_dim, ssm_state_size=head_dim, ssm_n_groups=heads,
                ssm_expand=heads * head_dim // hidden)


def primed_config(hf_config, mixer_types=None, fading_init="attention", **overrides):
    """The `BMojoConfig` `prime` builds: the source's shapes, `mixer_types` (default all "bmojo"), the
    Mistral source's sliding window as the window (else the BMojoConfig default or `window_size`), and
    `overrides` for any other field."""
    if getattr(hf_config, "model_type", None) not in ("llama", "mistral"):
        raise ValueError(f"priming needs a Llama or Mistral model, got model_type "
                         f"{getattr(hf_config, 'model_type', None)!r}")
    if fading_init not in FADING_INITS:
        raise ValueError(f"fading_init must be one of {FADING_INITS}, got {fading_init!r}")
    kwargs = _attention_kwargs(hf_config)
    layers = hf_config.num_hidden_layers
    kwargs["mixer_types"] = ["bmojo"] * layers if mixer_types is None else list(mixer_types)
    if getattr(hf_config, "sliding_window", None) is not None:
        kwargs["window_size"] = hf_config.sliding_window
    if fading_init == "attention" and {"bmojo", "mamba2"} & set(kwargs["mixer_types"]):
        for name, value in _ssm_shapes_from_attention(hf_config).items():
            if name in overrides and overrides[name] != value:
                raise ValueError(f"BMojoConfig.{name}={overrides[name]!r} cannot hold the attention weights "
                                 f"(fading_init='attention' needs {name}={value}); use fading_init='fresh'")
            kwargs[name] = value
    kwargs.update(overrides)
    window = kwargs.get("window_size", BMojoConfig().window_size)
    if isinstance(window, int) and window > 0:
        kwargs.setdefault("eidetic_tokens_per_chunk", min(32, window))
    return BMojoConfig(**kwargs)


@torch.no_grad()
def prime(source, mixer_types=None, fading_init="attention", **overrides):
    """A `BMojoForCausalLM` started from the HF `LlamaForCausalLM` / `MistralForCausalLM` `source`
    (module docstring: what is copied, what is initialised from attention, what is fresh), in the source's
    dtype. `overrides` are BMojoConfig fields, e.g. window_size, fading_tokens, eidetic_capacity."""
    config = primed_config(source.config, mixer_types, fading_init, **overrides)
    model = BMojoForCausalLM(config).to(next(source.parameters()).dtype)
    teacher = source.state_dict()
    own = dict(model.named_parameters(remove_duplicate=False))
    own["model.embed_tokens.weight"].copy_(teacher["model.embed_tokens.weight"])
    own["model.norm.weight"].copy_(teacher["model.norm.weight"])
    if not config.tie_word_embeddings:
        own["lm_head.weight"].copy_(teacher["lm_head.weight"])
    for i, (kind, layer) in enumerate(zip(config.mixer_types, model.model.layers)):
        src = f"model.layers.{i}."
        layer.input_norm.weight.copy_(teacher[src + "input_layernorm.weight"])
        layer.post_mixer_norm.weight.copy_(teacher[src + "post_attention_layernorm.weight"])
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(layer.mlp, name).weight.copy_(teacher[src + f"mlp.{name}.weight"])
        q, k, v, o = (teacher[src + f"self_attn.{p}_proj.weight"] for p in "qkvo")
        if kind != "mamba2":
            for name, weight in zip(("q_proj", "k_proj", "v_proj", "o_proj"), (q, k, v, o)):
                getattr(layer.mixer, name).weight.copy_(weight)
        if kind == "bmojo" and not config.tie_fading_projections:
            layer.mixer.kf_proj.weight.copy_(k)
            layer.mixer.vf_proj.weight.copy_(v)
        if fading_init == "attention" and kind in ("bmojo", "mamba2"):
            ssm = layer.mixer.fading if kind == "bmojo" else layer.mixer
            mamba2_from_attention(ssm, q, k, v, o, config.num_attention_heads, config.num_key_value_heads)
    return model.train(source.training)


@torch.no_grad()
def mamba2_from_attention(ssm, q, k, v, o, heads, kv_heads):
    """Writes attention weights q [H*D, d], k, v [Hkv*D, d], o [d, H*D] into a Mamba2Mixer whose inner
    width is H*D, with H heads of D channels, state size D and H groups.
    in_proj rows: [z | x | B | C | dt]."""
    head_dim = q.shape[0] // heads
    inner, bc = ssm.inner, ssm.groups * ssm.state_size
    if (inner, bc, ssm.heads) != (heads * head_dim, heads * head_dim, heads):
        raise ValueError(f"the Mamba-2 mixer's shapes (inner {inner}, groups*state {bc}, heads {ssm.heads}) "
                         f"cannot hold attention with {heads} heads of {head_dim}")

    def per_query_head(w):  # (Hkv*D, d) -> (H*D, d): each KV head's rows repeated for its query heads
        return w.reshape(kv_heads, head_dim, -1).repeat_interleave(heads // kv_heads, 0).reshape(inner, -1)

    v_rep = per_query_head(v)
    w = ssm.in_proj.weight
    w[:inner] = 0.5 * (o.t() + v_rep)  # z, the output gate
    w[inner:2 * inner] = v_rep  # x
    w[2 * inner:2 * inner + bc] = per_query_head(k)  # B
    w[2 * inner + bc:2 * inner + 2 * bc] = q  # C
    ssm.out_proj.weight.copy_(o)


def new_parameter_names(model):
    """Names of the parameters priming does not take from the teacher: the SSM of each `bmojo` layer, its
    innovation predictor and untied fading projections, and the whole mixer of each `mamba2` layer."""
    names = []
    for name, _ in model.named_parameters():
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        kind = model.config.mixer_types[int(layer)] if layer is not None else None
        if any(part in name for part in _NEW_IN_BMOJO) or (kind == "mamba2" and ".mixer." in name):
            names.append(name)
    return names


def freeze_teacher_weights(model):
    """Freezes every parameter of a primed model but `new_parameter_names(model)`; returns those names."""
    trainable = set(new_parameter_names(model))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return sorted(trainable)


@dataclass
class PrimingOutput(ModelOutput):
    """`loss` = `distillation_loss` + `innovation_loss`."""

    loss: torch.FloatTensor | None = None
    distillation_loss: torch.FloatTensor | None = None
    innovation_loss: torch.FloatTensor | None = None


class PrimingDistillation(nn.Module):
    """The first training stage of priming, as a module whose forward returns the loss (HF `Trainer` trains
    it as it is). loss = mean over real tokens of the squared error between the student's and the frozen
    teacher's final hidden states (after the final norm, before the LM head; mean over the hidden width),
    plus the student's innovation-predictor loss. With `freeze=True` only `new_parameter_names(student)`
    train. The teacher stays in eval mode and receives no gradient; `student` is what to save afterwards
    (`distiller.student.save_pretrained(...)`)."""

    _keys_to_ignore_on_save = None  # read by Trainer when it resumes from a checkpoint

    def __init__(self, student, teacher, freeze=True):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        if freeze:
            freeze_teacher_weights(student)

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()
        return self

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """The student's weights, each tensor once: what `Trainer` checkpoints. (safetensors refuses tensors
        shared by tied embeddings, and the teacher is frozen: it is the checkpoint it was loaded from.)
        `Trainer` resumes with `load_state_dict(..., strict=False)`, which leaves the teacher as it is."""
        weights = self.student.state_dict(prefix=prefix + "student.", keep_vars=keep_vars)
        seen, out = set(), {} if destination is None else destination
        for name, tensor in weights.items():
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                out[name] = tensor
        return out

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Loads what `state_dict` saves (the student's weights; the teacher is left as it is)."""
        prefix = "student."
        unexpected = [name for name in state_dict if not name.startswith(prefix)]
        loaded = self.student.load_state_dict({name[len(prefix):]: t for name, t in state_dict.items()
                                               if name.startswith(prefix)}, strict=False, assign=assign)
        saved = self.state_dict()  # a tied head is saved (and so loaded) as the embedding
        missing = [prefix + name for name in loaded.missing_keys if prefix + name in saved]
        unexpected += [prefix + name for name in loaded.unexpected_keys]
        if strict and (missing or unexpected):
            raise RuntimeError(f"PrimingDistillation.load_state_dict: missing {missing}, "
                               f"unexpected {unexpected}")
        return _IncompatibleKeys(missing, unexpected)

    def forward(self, input_ids, attention_mask=None, labels=None):
        """`labels` are accepted (and ignored) so that language-modelling batches can be used unchanged."""
        with torch.no_grad():
            target = self.teacher.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                             use_cache=False).last_hidden_state
        out = self.student.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        error = (out.last_hidden_state.float() - target.float()).pow(2).mean(-1)  # (B, T)
        real = torch.ones_like(error) if attention_mask is None else attention_mask.to(error.dtype)
        distillation = (error * real).sum() / real.sum().clamp(min=1)
        return PrimingOutput(loss=distillation + out.innovation_loss, distillation_loss=distillation,
                             innovation_loss=out.innovation_loss)
