from .modeling_llama import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel

__all__ = ["LlamaForCausalLM", "LlamaModel", "LlamaPreTrainedModel"]
