"""Qwen2: biases on the q/k/v projections (none on o_proj); sliding windows on the layers `config.layer_types`
marks as "sliding_attention"."""

from transformers import Qwen2Config

from ...modeling_decoder import decoder_architecture

Qwen2DecoderLayer, Qwen2PreTrainedModel, Qwen2Model, Qwen2ForCausalLM = decoder_architecture(
    "Qwen2", Qwen2Config, __name__, attention_options={"qkv_bias": True, "o_bias": False}
)
