from .modeling_phi3 import Phi3ForCausalLM, Phi3Model, Phi3PreTrainedModel

__all__ = ["Phi3ForCausalLM", "Phi3Model", "Phi3PreTrainedModel"]
