from .modeling_gemma2 import Gemma2ForCausalLM, Gemma2PreTrainedModel, Gemma2Model

__all__ = ["Gemma2ForCausalLM", "Gemma2Model", "Gemma2PreTrainedModel"]
