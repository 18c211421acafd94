"""transformers' own streamers: they only call `.shape` and `.tolist()` on what generate() puts, which
MindSpore tensors provide, so the classes are re-exported unchanged (same threading and iterator behaviour)."""

from transformers.generation.streamers import AsyncTextIteratorStreamer, BaseStreamer, TextIteratorStreamer, TextStreamer

__all__ = ["AsyncTextIteratorStreamer", "BaseStreamer", "TextIteratorStreamer", "TextStreamer"]
