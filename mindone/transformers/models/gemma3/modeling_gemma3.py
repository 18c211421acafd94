"""Gemma 3 (text): the Gemma 2 block plus per-head RMSNorm on queries and keys; sliding layers use their own rope
base (config.rope_local_base_freq), which the shared decoder reads from the config."""

from transformers import Gemma3TextConfig

from ...modeling_decoder import decoder_architecture
from ..gemma2.modeling_gemma2 import SandwichNormDecoderLayer

Gemma3DecoderLayer, Gemma3PreTrainedModel, Gemma3TextModel, Gemma3ForCausalLM = decoder_architecture(
    "Gemma3", Gemma3TextConfig, __name__, layer_base=SandwichNormDecoderLayer, model_name="Gemma3TextModel",
    unit_offset_norm=True, activation_key="hidden_activation", scale_embeddings=True,
    attention_options={"qk_norm": True},
)  # fmt: skip
