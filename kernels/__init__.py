"""Kernels of bmojo: each op is a folder with its plain-PyTorch definition (`naive.py`) and, where
measured worthwhile, a Triton implementation; `dispatch` picks one per call.

(The dispatcher's `memory_attention` is not re-exported here: it would shadow the `memory_attention`
sub-package for `import bmojo.kernels.memory_attention...`.)

Imported under the top-level name `kernels`, this folder stands aside for Hugging Face's `kernels`
distribution. That happens when Python runs in bmojo's repository root (`python -m ...`, `python -c`,
where the root is on sys.path) and something imports `kernels`, as `import transformers` does from
transformers 5.25 on: the root's `kernels/` would shadow the installed package. bmojo's own modules always
import these as `bmojo.kernels`.
"""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys
    import types

    _root = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _elsewhere = [p for p in sys.path if os.path.realpath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is None:
        # Nothing to hand over to: an empty module without __file__, which transformers' availability
        # check reads as "not installed" (`from kernels import X` then fails as for a missing package)
        sys.modules["kernels"] = types.ModuleType("kernels", "no `kernels` package is installed")
    else:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module  # `import kernels` returns what sys.modules holds after this file
        _spec.loader.exec_module(_module)
else:
    from .dispatch import ssd_scan, ssd_step, triton_available, use_triton

    __all__ = ["ssd_scan", "ssd_step", "triton_available", "use_triton"]
