"""bmojo: B'MOJO (Zancato et al., NeurIPS 2024) for Hugging Face Transformers.

Importing it registers `BMojoConfig` and `BMojoForCausalLM` with the Auto classes (model_type "bmojo").
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import BMojoConfig, preset_config, preset_names, preset_tokenizer
from .modeling_bmojo import BMojoCache, BMojoForCausalLM, BMojoModel

__version__ = "0.1.0"

AutoConfig.register("bmojo", BMojoConfig, exist_ok=True)
AutoModel.register(BMojoConfig, BMojoModel, exist_ok=True)
AutoModelForCausalLM.register(BMojoConfig, BMojoForCausalLM, exist_ok=True)

__all__ = ["BMojoCache", "BMojoConfig", "BMojoForCausalLM", "BMojoModel", "preset_config", "preset_names",
           "preset_tokenizer"]
