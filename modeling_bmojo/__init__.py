from .cache import BMojoCache
from .modeling import BMojoCausalLMOutput, BMojoForCausalLM, BMojoModel, BMojoModelOutput, BMojoPreTrainedModel

__all__ = ["BMojoCache", "BMojoCausalLMOutput", "BMojoForCausalLM", "BMojoModel", "BMojoModelOutput",
           "BMojoPreTrainedModel"]
