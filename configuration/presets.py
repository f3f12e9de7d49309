"""Named presets: the paper's model sizes and, at each size, the baselines it compares against.

`"<size>"` is B'MOJO; `"<family>-<size>"` picks a family. Every family is the same code with a
different `mixer_types` list (the paper's point: Transformers, Mamba and hybrids are special cases).

Tokenizers: the sizes from 130m up keep the config's default vocabulary of 50,280 ids, the GPT-NeoX
tokenizer's (`EleutherAI/gpt-neox-20b`, 50,277 tokens) padded to a multiple of 8, as Mamba and Mamba-2
use it, with its special ids (`<|endoftext|>` = 0 begins and ends text, `<|padding|>` = 1). The tiny
size has 128 ids and the character tokenizer `bmojo.eval.lm_eval.ascii_char_tokenizer` (pad 0, bos 1,
eos 2), which needs no download. `preset_tokenizer(name)` returns the right one.
"""

from .configuration_bmojo import BMojoConfig

NEOX_TOKENIZER = "EleutherAI/gpt-neox-20b"
# The GPT-NeoX tokenizer's special ids: <|endoftext|> = 0 begins and ends text, <|padding|> = 1.
NEOX_SPECIAL_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=1)

SIZES = {
    # tiny: for tests; w = n_f = 8 and M_e = 16 so that short inputs cross chunks and fill the store.
    "tiny": dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, window_size=8, fading_tokens=8, eidetic_tokens_per_chunk=4,
        eidetic_capacity=16, ssm_state_size=8, ssm_head_dim=16, ssm_chunk_size=8,
    ),
    "130m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 **NEOX_SPECIAL_IDS),
    "370m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                 **NEOX_SPECIAL_IDS),
    "790m": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 **NEOX_SPECIAL_IDS),
    "1.4b": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                 **NEOX_SPECIAL_IDS),
}
ASCII_TOKENIZER = "ascii-chars"  # the tiny size's tokenizer (also `bmojo-lm-eval --tokenizer ascii-chars`)
TOKENIZERS = {"tiny": ASCII_TOKENIZER, "130m": NEOX_TOKENIZER, "370m": NEOX_TOKENIZER,
              "790m": NEOX_TOKENIZER, "1.4b": NEOX_TOKENIZER}
FAMILIES = ("bmojo", "bmojo-f", "transformer", "swa-transformer", "mamba2", "hybrid")


def hybrid_mixer_types(num_layers):
    """Jamba-style interleaving: one full-attention layer in four, the rest Mamba-2 (at least one attention)."""
    kinds = ["full_attention" if (i + 1) % 4 == 0 else "mamba2" for i in range(num_layers)]
    if "full_attention" not in kinds:
        kinds[-1] = "full_attention"
    return kinds


def family_kwargs(family, num_layers):
    if family == "bmojo":
        return dict(mixer_types=["bmojo"] * num_layers)
    if family == "bmojo-f":
        return dict(mixer_types=["bmojo"] * num_layers, eidetic_capacity=0)
    # The attention families untie the output head from the input embedding, as HF Llama and Mistral do:
    # on issue 12's recall task in Zoology's layout (H200, 3 seeds, eval/results/parity_zoology/RESULTS.md)
    # the full-attention family learned it in every seed untied (1.000, as HF Llama) and in none tied (0.225
    # mean of 2); the SWA family equalled HF Mistral untied (0.727, 3 seeds, CPU) and lost 0.06 tied (0.663).
    if family == "transformer":
        return dict(mixer_types=["full_attention"] * num_layers, tie_word_embeddings=False)
    if family == "swa-transformer":
        return dict(mixer_types=["sliding_attention"] * num_layers, tie_word_embeddings=False)
    # Mamba-2 layers start from HF Mamba2's decay rates A_h = h + 1 (`ssm_a_init`): on issue 12's recall task
    # (3 seeds, H200, eval/results/parity_gpu2/RESULTS.md) the mamba2 family's final loss fell from 2.76 to
    # 2.03 with that one change, where mamba_ssm's U(1, 16) left a seed at 0.16 accuracy.
    if family == "mamba2":
        return dict(mixer_types=["mamba2"] * num_layers, ssm_a_init="arange")
    if family == "hybrid":
        return dict(mixer_types=hybrid_mixer_types(num_layers), ssm_a_init="arange")
    raise ValueError(f"preset family must be one of {FAMILIES}, got {family!r}")


def _parse(name):
    for fam in sorted(FAMILIES, key=len, reverse=True):
        if name.startswith(fam + "-") and name[len(fam) + 1:] in SIZES:
            return fam, name[len(fam) + 1:]
    if name in SIZES:
        return "bmojo", name
    raise ValueError(f"preset name must be one of {preset_names()}, got {name!r}")


def preset_kwargs(name, num_hidden_layers=None):
    """Keyword arguments of `BMojoConfig` for a preset name such as `"tiny"`, `"130m"` or `"mamba2-370m"`.

    `num_hidden_layers` resizes the preset; the family's layer pattern follows the new depth."""
    family, size = _parse(name)
    kwargs = dict(SIZES[size])
    if num_hidden_layers is not None:
        kwargs["num_hidden_layers"] = num_hidden_layers
    layers = kwargs["num_hidden_layers"]
    kwargs.update(family_kwargs(family, layers if isinstance(layers, int) and layers > 0 else 1))
    return kwargs


def preset_config(name, **overrides):
    """A `BMojoConfig` from a preset name, with any field overridden."""
    return BMojoConfig(**{**preset_kwargs(name, overrides.get("num_hidden_layers")), **overrides})


def preset_names():
    return sorted(SIZES) + [f"{f}-{s}" for f in FAMILIES for s in SIZES]


def preset_tokenizer_name(name):
    """The tokenizer a preset's vocabulary and special ids are laid out for: `"ascii-chars"` (tiny) or a
    Hub id (`"EleutherAI/gpt-neox-20b"` for 130m and up)."""
    return TOKENIZERS[_parse(name)[1]]


def preset_tokenizer(name, **from_pretrained_kwargs):
    """The tokenizer that fits a preset: built offline for tiny; for 130m and up, GPT-NeoX's loaded with
    `AutoTokenizer.from_pretrained` (the Hub, or its cache when offline), with `<|padding|>` as pad token."""
    tokenizer_name = preset_tokenizer_name(name)
    if tokenizer_name == ASCII_TOKENIZER:
        from ..eval.lm_eval import ascii_char_tokenizer

        return ascii_char_tokenizer()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, **from_pretrained_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|padding|>"
    return tokenizer
