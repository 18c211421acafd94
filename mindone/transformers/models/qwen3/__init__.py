from .modeling_qwen3 import Qwen3ForCausalLM, Qwen3Model, Qwen3PreTrainedModel

__all__ = ["Qwen3ForCausalLM", "Qwen3Model", "Qwen3PreTrainedModel"]
