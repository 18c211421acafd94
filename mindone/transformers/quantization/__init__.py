"""Weight-only quantization: the internal formats (formats.py) that quantized layers keep instead of float weights,
and QuantizedLinear (linear.py, imported from there: this package itself does not import MindSpore, so the GGUF
reader stays usable from the PyTorch side)."""

from .formats import SUPPORTED_GGUF_TYPES, Int4Groups, Int8Groups, QuantizedWeight, from_gguf, pack4, unpack4

__all__ = ["SUPPORTED_GGUF_TYPES", "Int4Groups", "Int8Groups", "QuantizedWeight", "from_gguf", "pack4", "unpack4"]
