"""Offline batch generation: JSONL prompts in, JSONL completions out (see docs/batch.md)."""

from .cli import main

__all__ = ["main"]
