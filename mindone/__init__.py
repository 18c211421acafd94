"""mindone: Hugging Face style causal language models on MindSpore."""

__version__ = "0.1.0"
