"""Kernels of bmojo: each op is a folder with its plain-PyTorch definition (`naive.py`) and, where
measured worthwhile, a Triton implementation; `dispatch` picks one per call.

(The dispatcher's `memory_attention` is not re-exported here: it would shadow the `memory_attention`
sub-package for `import bmojo.kernels.memory_attention...`.)"""

from .dispatch import ssd_scan, ssd_step, triton_available, use_triton

__all__ = ["ssd_scan", "ssd_step", "triton_available", "use_triton"]
