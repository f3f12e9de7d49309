from .naive import (attend_segments, decode_attention_reference, memory_attention_chunked,
                    memory_attention_naive)

__all__ = ["attend_segments", "decode_attention_reference", "memory_attention_chunked",
           "memory_attention_naive"]
