"""Phi-3: the Llama block with fused projections (`qkv_proj`, `gate_up_proj`), rotary on a `partial_rotary_factor`
of each head, and LongRoPE ("su"/"longrope" scaling), whose switch to the long factors makes generate() recompute
the cache as transformers' Phi-3 does; a config-wide sliding window when one is set."""

from transformers import Phi3Config

from ...modeling_decoder import decoder_architecture

Phi3DecoderLayer, Phi3PreTrainedModel, Phi3Model, Phi3ForCausalLM = decoder_architecture(
    "Phi3", Phi3Config, __name__, attention_options={"fused_qkv": True}, mlp_options={"fused_gate_up": True},
    recompute_cache_at_rope_switch=True,
)
