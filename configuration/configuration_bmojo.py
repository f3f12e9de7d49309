"""Configuration of B'MOJO models (Zancato et al., "B'MOJO: Hybrid State Space Realizations of
Foundation Models with Eidetic and Fading Memory", NeurIPS 2024, arXiv 2407.06324).

One config describes B'MOJO and every baseline of the paper: `mixer_types` picks, per layer, a
B'MOJO mixer, a Mamba-2 mixer, sliding-window attention or full causal attention.
"""

import math

from transformers import PretrainedConfig

MIXER_TYPES = ("bmojo", "mamba2", "sliding_attention", "full_attention")
SSM_A_INITS = ("uniform", "arange")  # Mamba-2 decay initialisation, see the docstring's `ssm_a_init`
SSM_PROJ_INITS = ("normal", "fan_in", "out_fan_in")  # Mamba-2 projections' init, see `ssm_proj_init`
# transformers validates `layer_types` against its own names; these are the nearest ones.
_HF_LAYER_TYPE = {
    "bmojo": "hybrid_sliding",
    "mamba2": "linear_attention",
    "sliding_attention": "sliding_attention",
    "full_attention": "full_attention",
}


def _check_int(name, value, low, high=None, allow_none=False):
    if value is None and allow_none:
        return
    bad = isinstance(value, bool) or not isinstance(value, int) or value < low
    if not bad and high is not None and value > high:
        bad = True
    if bad:
        upper = "" if high is None else f" and <= {high}"
        none = " (or None)" if allow_none else ""
        raise ValueError(f"BMojoConfig.{name} must be an integer >= {low}{upper}{none}, got {value!r}")


def _check_float(name, value, low, high=None, low_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        upper = "" if high is None else f" and <= {high}"
        raise ValueError(f"BMojoConfig.{name} must be a finite number {bound}{upper}, got {value!r}")


def _finite(value):
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"BMojoConfig.{name} must be True or False, got {value!r}")


def _check_token_id(name, value, vocab_size, allow_list=False):
    """None or a token id in [0, vocab_size - 1]; `eos_token_id` may also be a non-empty list of ids."""
    ids = value if allow_list and isinstance(value, (list, tuple)) else [value]
    if value is None or (ids and all(_is_token_id(i, vocab_size) for i in ids)):
        return
    listed = ", a non-empty list of such integers" if allow_list else ""
    raise ValueError(f"BMojoConfig.{name} must be None{listed} or an integer in [0, {vocab_size - 1}] "
                     f"(vocab_size={vocab_size}), got {value!r}")


def _is_token_id(value, vocab_size):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size


class BMojoConfig(PretrainedConfig):
    r"""
    Configuration of a [`BMojoForCausalLM`].

    Args:
        vocab_size (`int`, *optional*, defaults to 50280): number of token ids.
        hidden_size (`int`, *optional*, defaults to 768): width of the residual stream.
        intermediate_size (`int`, *optional*, defaults to 2048): width of the SwiGLU MLP; 0 gives blocks
            without an MLP (mixer only, as in Mamba's own models).
        num_hidden_layers (`int`, *optional*, defaults to 12): number of blocks.
        mixer_types (`list[str]`, *optional*): one of `"bmojo"`, `"mamba2"`, `"sliding_attention"`,
            `"full_attention"` per layer. Defaults to all `"bmojo"`.
        num_attention_heads (`int`, *optional*, defaults to 12): query heads.
        num_key_value_heads (`int`, *optional*): key/value heads (GQA); defaults to `num_attention_heads`.
        head_dim (`int`, *optional*): defaults to `hidden_size // num_attention_heads`.
        qk_norm (`bool`, *optional*, defaults to `False`): RMSNorm on queries and keys per head.
        window_size (`int`, *optional*, defaults to 512): w, the sliding window and the eidetic chunk length.
        fading_tokens (`int`, *optional*): n_f, length of the fading band ("hollow window"); defaults to w.
        tie_fading_projections (`bool`, *optional*, defaults to `True`): fading keys/values use the K/V projections.
        eidetic_tokens_per_chunk (`int`, *optional*, defaults to 32): n_e candidates each chunk proposes.
        eidetic_capacity (`int` or `None`, *optional*, defaults to 512): M_e, size of the eidetic store;
            0 gives B'MOJO-F, `None` an unbounded store.
        innovation_loss_weight (`float`, *optional*, defaults to 0.01): weight of the innovation predictor loss.
        rope_theta (`float`, *optional*, defaults to 10000.0): RoPE base.
        ssm_state_size (`int`, *optional*, defaults to 128): N, the SSM state per head.
        ssm_head_dim (`int`, *optional*, defaults to 64): P, the SSM head width.
        ssm_expand (`int`, *optional*, defaults to 2): SSM inner width = ssm_expand * hidden_size.
        ssm_n_groups (`int`, *optional*, defaults to 1): groups sharing B and C.
        conv_kernel (`int`, *optional*, defaults to 4): causal depthwise convolution length.
        ssm_chunk_size (`int`, *optional*, defaults to 128): chunk length of the SSD scan.
        dt_min, dt_max, dt_init_floor (`float`): Mamba-2 initialisation range of the step size
            (0 < dt_min <= dt_max; the floor clamps it from below, 0 < dt_init_floor <= dt_max).
        ssm_a_init (`str`, *optional*, defaults to `"uniform"`): Mamba-2 initialisation of the decay rates
            A_h (A = -exp(A_log)): `"uniform"` draws each head's A from U(1, 16) (mamba_ssm's
            `A_init_range`); `"arange"` sets A_h = h + 1 for heads h = 0..H-1, as HF `Mamba2` does.
        ssm_proj_init (`str`, *optional*, defaults to `"normal"`): initialisation of the Mamba-2 mixer's
            `in_proj` and `out_proj`: `"normal"` draws them from N(0, initializer_range) like every other
            linear layer; `"fan_in"` follows mamba_ssm (Gu & Dao): U(+-1/sqrt(fan_in)) for both, `out_proj`
            then divided by sqrt(num_hidden_layers) (GPT-2's residual scaling). The two agree near width 768;
            at small widths `"fan_in"` is larger (0.072 std at width 64, 3.6x), and x, B and C, multiplied
            together in the scan, each start that much smaller under `"normal"`. `"out_fan_in"` is HF
            `Mamba2`'s result: `in_proj` from N(0, initializer_range), `out_proj` from U(+-1/sqrt(fan_in))
            (PyTorch's default Linear bound) without depth scaling.
        rms_norm_eps (`float`, *optional*, defaults to 1e-5), initializer_range (`float`, defaults to 0.02).
        use_kernels (`"auto"`, `True` or `False`): Triton kernels on CUDA (`"auto"`), always, or never.
        fused_linear_cross_entropy (`bool`, *optional*, defaults to `True`): in training mode with labels,
            compute the LM loss with `lm_head` in chunks of tokens (`modeling_bmojo/loss.py`), so the
            [B, T, vocab] logits are never materialised; such forwards then return `logits=None`. Eval mode,
            forwards without labels and `logits_to_keep != 0` are unchanged.
    """

    model_type = "bmojo"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=50280,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        mixer_types=None,
        num_attention_heads=12,
        num_key_value_heads=None,
        head_dim=None,
        qk_norm=False,
        window_size=512,
        fading_tokens=None,
        tie_fading_projections=True,
        eidetic_tokens_per_chunk=32,
        eidetic_capacity=512,
        innovation_loss_weight=0.01,
        rope_theta=10000.0,
        ssm_state_size=128,
        ssm_head_dim=64,
        ssm_expand=2,
        ssm_n_groups=1,
        conv_kernel=4,
        ssm_chunk_size=128,
        dt_min=0.001,
        dt_max=0.1,
        dt_init_floor=1e-4,
        ssm_a_init="uniform",
        ssm_proj_init="normal",
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        use_kernels="auto",
        use_cache=True,
        fused_linear_cross_entropy=True,
        **kwargs,
    ):
        kwargs.pop("layer_types", None)  # derived from mixer_types, never stored twice
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        if mixer_types is None and isinstance(num_hidden_layers, int) and num_hidden_layers > 0:
            mixer_types = ["bmojo"] * num_hidden_layers
        # Anything but a list or tuple is kept as given, for _validate to name it.
        self.mixer_types = list(mixer_types) if isinstance(mixer_types, (list, tuple)) else mixer_types
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        if head_dim is None and isinstance(hidden_size, int) and isinstance(num_attention_heads, int):
            self.head_dim = hidden_size // max(num_attention_heads, 1)
        self.qk_norm = qk_norm
        self.window_size = window_size
        self.fading_tokens = window_size if fading_tokens is None else fading_tokens
        self.tie_fading_projections = tie_fading_projections
        self.eidetic_tokens_per_chunk = eidetic_tokens_per_chunk
        self.eidetic_capacity = eidetic_capacity
        self.innovation_loss_weight = innovation_loss_weight
        self.rope_theta = rope_theta
        self.ssm_state_size = ssm_state_size
        self.ssm_head_dim = ssm_head_dim
        self.ssm_expand = ssm_expand
        self.ssm_n_groups = ssm_n_groups
        self.conv_kernel = conv_kernel
        self.ssm_chunk_size = ssm_chunk_size
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init_floor = dt_init_floor
        self.ssm_a_init = ssm_a_init
        self.ssm_proj_init = ssm_proj_init
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.use_kernels = use_kernels
        self.use_cache = use_cache
        self.fused_linear_cross_entropy = fused_linear_cross_entropy
        # Also set by PretrainedConfig.__init__ below; set first so that _validate sees them.
        self.tie_word_embeddings = tie_word_embeddings
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self._validate()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # `from_pretrained(path, window_size=...)` sets such overrides with setattr after __init__:
        # validate again so that they get the same checks as the constructor's arguments.
        out = super().from_dict(config_dict, **kwargs)
        (out[0] if isinstance(out, tuple) else out)._validate()
        return out

    def _validate(self):
        """Raises a ValueError naming the first field outside its allowed range. Called by __init__,
        from_dict (after overrides) and by the model's constructor (after any attribute assignment)."""
        _check_int("vocab_size", self.vocab_size, 1)
        _check_int("hidden_size", self.hidden_size, 1)
        _check_int("intermediate_size", self.intermediate_size, 0)
        _check_int("num_hidden_layers", self.num_hidden_layers, 1)
        if not isinstance(self.mixer_types, (list, tuple)):
            raise ValueError(f"BMojoConfig.mixer_types must be a list with one of {MIXER_TYPES} per layer "
                             f"(or None for all \"bmojo\"), got {self.mixer_types!r}")
        if len(self.mixer_types) != self.num_hidden_layers:
            raise ValueError(
                f"BMojoConfig.mixer_types must have one entry per layer (num_hidden_layers="
                f"{self.num_hidden_layers}), got {len(self.mixer_types)} entries; when changing "
                f"num_hidden_layers, pass a mixer_types list of the new length too"
            )
        for i, kind in enumerate(self.mixer_types):
            if kind not in MIXER_TYPES:
                raise ValueError(f"BMojoConfig.mixer_types[{i}] must be one of {MIXER_TYPES}, got {kind!r}")
        _check_int("num_attention_heads", self.num_attention_heads, 1)
        _check_int("num_key_value_heads", self.num_key_value_heads, 1, self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"BMojoConfig.num_key_value_heads must divide num_attention_heads={self.num_attention_heads}, "
                f"got {self.num_key_value_heads}"
            )
        _check_int("head_dim", self.head_dim, 2)
        if self.head_dim % 2:
            raise ValueError(f"BMojoConfig.head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        _check_bool("qk_norm", self.qk_norm)
        _check_bool("tie_fading_projections", self.tie_fading_projections)
        _check_int("window_size", self.window_size, 1)
        _check_int("fading_tokens", self.fading_tokens, 0)
        _check_int("eidetic_tokens_per_chunk", self.eidetic_tokens_per_chunk, 0, self.window_size)
        _check_int("eidetic_capacity", self.eidetic_capacity, 0, allow_none=True)
        _check_float("innovation_loss_weight", self.innovation_loss_weight, 0.0)
        _check_float("rope_theta", self.rope_theta, 1.0, low_open=True)
        _check_int("ssm_state_size", self.ssm_state_size, 1)
        _check_int("ssm_head_dim", self.ssm_head_dim, 1)
        _check_int("ssm_expand", self.ssm_expand, 1)
        _check_int("ssm_n_groups", self.ssm_n_groups, 1)
        if (self.ssm_expand * self.hidden_size) % self.ssm_head_dim:
            raise ValueError(
                f"BMojoConfig.ssm_head_dim must divide ssm_expand * hidden_size = "
                f"{self.ssm_expand * self.hidden_size}, got {self.ssm_head_dim}"
            )
        if self.ssm_num_heads % self.ssm_n_groups:
            raise ValueError(
                f"BMojoConfig.ssm_n_groups must divide the number of SSM heads ({self.ssm_num_heads}), "
                f"got {self.ssm_n_groups}"
            )
        _check_int("conv_kernel", self.conv_kernel, 1)
        _check_int("ssm_chunk_size", self.ssm_chunk_size, 1)
        _check_float("dt_min", self.dt_min, 0.0, low_open=True)
        _check_float("dt_max", self.dt_max, 0.0, low_open=True)
        if self.dt_min > self.dt_max:
            raise ValueError(
                f"BMojoConfig.dt_min and dt_max must satisfy dt_min <= dt_max (initial step sizes are drawn "
                f"from [dt_min, dt_max]), got dt_min={self.dt_min!r} > dt_max={self.dt_max!r}"
            )
        _check_float("dt_init_floor", self.dt_init_floor, 0.0, low_open=True)
        if self.dt_init_floor > self.dt_max:
            # Mamba-2 clamps the initial step sizes at dt_init_floor: above dt_max it would replace them all.
            raise ValueError(
                f"BMojoConfig.dt_init_floor must be <= dt_max={self.dt_max!r} (initial step sizes are "
                f"clamped at dt_init_floor), got {self.dt_init_floor!r}"
            )
        if getattr(self, "ssm_a_init", "uniform") not in SSM_A_INITS:
            raise ValueError(f"BMojoConfig.ssm_a_init must be one of {SSM_A_INITS}, got {self.ssm_a_init!r}")
        if getattr(self, "ssm_proj_init", "normal") not in SSM_PROJ_INITS:
            raise ValueError(f"BMojoConfig.ssm_proj_init must be one of {SSM_PROJ_INITS}, "
                             f"got {self.ssm_proj_init!r}")
        _check_float("rms_norm_eps", self.rms_norm_eps, 0.0, low_open=True)
        _check_float("initializer_range", self.initializer_range, 0.0, low_open=True)
        _check_bool("tie_word_embeddings", getattr(self, "tie_word_embeddings", True))
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            allow_list = name == "eos_token_id"  # HF configs may list several end tokens
            _check_token_id(name, getattr(self, name, None), self.vocab_size, allow_list=allow_list)
        if not (self.use_kernels == "auto" or isinstance(self.use_kernels, bool)):
            raise ValueError(f'BMojoConfig.use_kernels must be "auto", True or False, '
                             f'got {self.use_kernels!r}')
        _check_bool("use_cache", self.use_cache)
        _check_bool("fused_linear_cross_entropy", getattr(self, "fused_linear_cross_entropy", True))

    @property
    def ssm_inner_size(self):
        return self.ssm_expand * self.hidden_size

    @property
    def ssm_num_heads(self):
        return self.ssm_inner_size // self.ssm_head_dim

    @property
    def layer_types(self):
        """Per-layer types under transformers' own names (for HF tooling that reads `layer_types`)."""
        return [_HF_LAYER_TYPE[kind] for kind in self.mixer_types]
