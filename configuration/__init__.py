from .configuration_bmojo import MIXER_TYPES, BMojoConfig
from .presets import (FAMILIES, SIZES, preset_config, preset_kwargs, preset_names, preset_tokenizer,
                      preset_tokenizer_name)

__all__ = ["BMojoConfig", "MIXER_TYPES", "FAMILIES", "SIZES", "preset_config", "preset_kwargs",
           "preset_names", "preset_tokenizer", "preset_tokenizer_name"]
