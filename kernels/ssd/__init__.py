from .naive import ssd_chunked, ssd_recurrent, ssd_step

__all__ = ["ssd_chunked", "ssd_recurrent", "ssd_step"]
