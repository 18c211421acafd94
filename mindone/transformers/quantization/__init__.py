"""Weight-only quantization: the internal formats (formats.py) that quantized layers keep instead of float weights."""

from .formats import SUPPORTED_GGUF_TYPES, Int4Groups, Int8Groups, QuantizedWeight, from_gguf, pack4, unpack4

__all__ = ["SUPPORTED_GGUF_TYPES", "Int4Groups", "Int8Groups", "QuantizedWeight", "from_gguf", "pack4", "unpack4"]
