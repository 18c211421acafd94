"""transformers' own GenerationConfig, so defaults, validation and generation_config.json are identical."""

from transformers import GenerationConfig

__all__ = ["GenerationConfig"]
