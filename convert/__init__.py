"""Moving weights between bmojo and Hugging Face models: exact conversions (`from_hf`, `to_hf`) and
priming a B'MOJO from a pretrained Llama or Mistral (`prime`, `PrimingDistillation`)."""

from .hf import config_from_hf, config_to_hf, from_hf, to_hf
from .priming import (PrimingDistillation, freeze_teacher_weights, mamba2_from_attention, new_parameter_names,
                      prime, primed_config)

__all__ = ["PrimingDistillation", "config_from_hf", "config_to_hf", "freeze_teacher_weights", "from_hf",
           "mamba2_from_attention", "new_parameter_names", "prime", "primed_config", "to_hf"]
