from .naive import gated_rms_norm_reference, rms_norm_reference, rotate_reference, swiglu_reference

__all__ = ["gated_rms_norm_reference", "rms_norm_reference", "rotate_reference", "swiglu_reference"]
