"""Publishing B'MOJO checkpoints: a self-contained remote-code folder (`export`) and `push`."""

from .export import export, remote_code_sources
from .upload import push

__all__ = ["export", "push", "remote_code_sources"]
