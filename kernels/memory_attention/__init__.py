from .naive import attend_segments, memory_attention_chunked, memory_attention_naive

__all__ = ["attend_segments", "memory_attention_chunked", "memory_attention_naive"]
