"""Gemma: embeddings scaled by sqrt(hidden_size), RMSNorm scaling by (1 + weight), tied embeddings and the
gelu-tanh MLP (named by config.hidden_act)."""

from transformers import GemmaConfig

from ...modeling_decoder import decoder_architecture

GemmaDecoderLayer, GemmaPreTrainedModel, GemmaModel, GemmaForCausalLM = decoder_architecture(
    "Gemma", GemmaConfig, __name__, unit_offset_norm=True, scale_embeddings=True
)
