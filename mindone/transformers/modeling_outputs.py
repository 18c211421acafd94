"""Model outputs: transformers' ModelOutput (dict + attribute + tuple access) holding MindSpore tensors."""

from dataclasses import dataclass
from typing import Any, Optional

from transformers.utils import ModelOutput


@dataclass
class BaseModelOutputWithPast(ModelOutput):
    last_hidden_state: Any = None
    past_key_values: Optional[Any] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


@dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: Optional[Any] = None
    logits: Any = None
    past_key_values: Optional[Any] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
