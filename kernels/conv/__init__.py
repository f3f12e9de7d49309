from .naive import causal_conv1d_silu_reference

__all__ = ["causal_conv1d_silu_reference"]
