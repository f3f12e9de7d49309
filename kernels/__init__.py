"""Kernels of bmojo: each op is a folder with its plain-PyTorch definition (`naive.py`) and, where
measured worthwhile, a Triton implementation; `dispatch` picks one per call."""

from .dispatch import memory_attention, ssd_scan, ssd_step, triton_available, use_triton

__all__ = ["memory_attention", "ssd_scan", "ssd_step", "triton_available", "use_triton"]
