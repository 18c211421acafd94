from .modeling_mistral import MistralForCausalLM, MistralModel, MistralPreTrainedModel

__all__ = ["MistralForCausalLM", "MistralModel", "MistralPreTrainedModel"]
