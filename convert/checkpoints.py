"""Converting saved checkpoints (folders or Hub ids), for `bmojo convert`."""

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..modeling_bmojo import BMojoForCausalLM
from .hf import SOURCE_TYPES, from_hf, to_hf
from .priming import prime


def convert_checkpoint(source, out, primed=False, mixer_types=None, fading_init="attention", dtype="auto",
                       **overrides):
    """Converts the checkpoint `source` and saves the result (and the source's tokenizer, if it has one)
    to `out`. A bmojo checkpoint becomes the HF model of its family; a Llama, Mistral or Mamba2 checkpoint
    becomes its bmojo family, or with `primed=True` (Llama / Mistral) a primed B'MOJO (`prime`; `overrides`
    are BMojoConfig fields). Returns the converted model."""
    import bmojo  # noqa: F401  registers the bmojo Auto classes

    if (mixer_types is not None or overrides) and not primed:
        raise ValueError("mixer_types and config overrides apply to priming only (primed=True, --prime)")
    model_type = AutoConfig.from_pretrained(source).model_type
    if model_type == "bmojo":
        if primed:
            raise ValueError("--prime needs a Llama or Mistral checkpoint, got a bmojo one")
        converted = to_hf(BMojoForCausalLM.from_pretrained(source, dtype=dtype))
    elif model_type in SOURCE_TYPES:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        if primed:
            converted = prime(model, mixer_types, fading_init, **overrides)
        else:
            converted = from_hf(model)
    else:
        raise ValueError(f"cannot convert {source}: model_type {model_type!r} is none of "
                         f"{('bmojo',) + SOURCE_TYPES}")
    converted.save_pretrained(out)
    try:
        AutoTokenizer.from_pretrained(source).save_pretrained(out)
    except (OSError, ValueError, TypeError):  # a checkpoint without a tokenizer: nothing to carry
        pass
    return converted
