"""Llama: the reference decoder-only architecture (pre-norm blocks, rotary attention, gated MLP). It is exactly
the shared decoder, bound to LlamaConfig under Hugging Face's class names."""

from transformers import LlamaConfig

from ...modeling_decoder import decoder_architecture

LlamaDecoderLayer, LlamaPreTrainedModel, LlamaModel, LlamaForCausalLM = decoder_architecture("Llama", LlamaConfig, __name__)
