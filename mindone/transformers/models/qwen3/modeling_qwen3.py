"""Qwen3: per-head RMSNorm on queries and keys before the rotary embedding (`q_norm`, `k_norm`); projection biases
follow config.attention_bias; sliding windows per `config.layer_types`."""

from transformers import Qwen3Config

from ...modeling_decoder import decoder_architecture

Qwen3DecoderLayer, Qwen3PreTrainedModel, Qwen3Model, Qwen3ForCausalLM = decoder_architecture(
    "Qwen3", Qwen3Config, __name__, attention_options={"qk_norm": True}
)
