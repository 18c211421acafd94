"""Mistral: Llama with sliding-window attention on every layer (`config.sliding_window`), which the shared decoder
reads from the config."""

from transformers import MistralConfig

from ...modeling_decoder import decoder_architecture

MistralDecoderLayer, MistralPreTrainedModel, MistralModel, MistralForCausalLM = decoder_architecture(
    "Mistral", MistralConfig, __name__
)
