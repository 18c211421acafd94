from .modeling_gemma import GemmaForCausalLM, GemmaPreTrainedModel, GemmaModel

__all__ = ["GemmaForCausalLM", "GemmaModel", "GemmaPreTrainedModel"]
