from .modeling_gemma3 import Gemma3ForCausalLM, Gemma3PreTrainedModel, Gemma3TextModel

__all__ = ["Gemma3ForCausalLM", "Gemma3TextModel", "Gemma3PreTrainedModel"]
