"""Hugging Face transformers' causal LM and generation API on MindSpore.

Names are resolved on first use, so importing the package (or its torch-free GGUF tools) stays cheap."""

import importlib

_EXPORTS = {
    "AutoConfig": "models.auto",
    "AutoModel": "models.auto",
    "AutoModelForCausalLM": "models.auto",
    "AutoTokenizer": "models.auto",
    "LlamaForCausalLM": "models.llama",
    "LlamaModel": "models.llama",
    "LlamaPreTrainedModel": "models.llama",
    "MistralForCausalLM": "models.mistral",
    "MistralModel": "models.mistral",
    "MistralPreTrainedModel": "models.mistral",
    "Qwen2ForCausalLM": "models.qwen2",
    "Qwen2Model": "models.qwen2",
    "Qwen2PreTrainedModel": "models.qwen2",
    "Phi3ForCausalLM": "models.phi3",
    "Phi3Model": "models.phi3",
    "Phi3PreTrainedModel": "models.phi3",
    "Qwen3ForCausalLM": "models.qwen3",
    "Qwen3Model": "models.qwen3",
    "Qwen3PreTrainedModel": "models.qwen3",
    "GemmaForCausalLM": "models.gemma",
    "GemmaModel": "models.gemma",
    "GemmaPreTrainedModel": "models.gemma",
    "Gemma2ForCausalLM": "models.gemma2",
    "Gemma2Model": "models.gemma2",
    "Gemma2PreTrainedModel": "models.gemma2",
    "Gemma3ForCausalLM": "models.gemma3",
    "Gemma3TextModel": "models.gemma3",
    "Gemma3PreTrainedModel": "models.gemma3",
    "GPT2LMHeadModel": "models.gpt2",
    "GPT2Model": "models.gpt2",
    "GPT2PreTrainedModel": "models.gpt2",
    "PreTrainedModel": "modeling_utils",
    "Cache": "cache_utils",
    "DynamicCache": "cache_utils",
    "StaticCache": "cache_utils",
    "GenerationConfig": "generation",
    "GenerationMixin": "generation",
    "LogitsProcessor": "generation",
    "LogitsProcessorList": "generation",
    "TemperatureLogitsWarper": "generation",
    "TopKLogitsWarper": "generation",
    "TopPLogitsWarper": "generation",
    "StoppingCriteria": "generation",
    "StoppingCriteriaList": "generation",
    "MaxLengthCriteria": "generation",
    "EosTokenCriteria": "generation",
    "EpsilonLogitsWarper": "generation",
    "EtaLogitsWarper": "generation",
    "ExponentialDecayLengthPenalty": "generation",
    "ForcedBOSTokenLogitsProcessor": "generation",
    "ForcedEOSTokenLogitsProcessor": "generation",
    "InfNanRemoveLogitsProcessor": "generation",
    "LogitNormalization": "generation",
    "MinLengthLogitsProcessor": "generation",
    "MinNewTokensLengthLogitsProcessor": "generation",
    "MinPLogitsWarper": "generation",
    "NoBadWordsLogitsProcessor": "generation",
    "NoRepeatNGramLogitsProcessor": "generation",
    "PrefixConstrainedLogitsProcessor": "generation",
    "RepetitionPenaltyLogitsProcessor": "generation",
    "SequenceBiasLogitsProcessor": "generation",
    "SuppressTokensAtBeginLogitsProcessor": "generation",
    "SuppressTokensLogitsProcessor": "generation",
    "TypicalLogitsWarper": "generation",
    "MaxTimeCriteria": "generation",
    "StopStringCriteria": "generation",
    "TextStreamer": "generation",
    "TextIteratorStreamer": "generation",
    "AsyncTextIteratorStreamer": "generation",
    "BaseStreamer": "generation",
    "GenerateDecoderOnlyOutput": "generation",
    "GenerateBeamDecoderOnlyOutput": "generation",
    "set_seed": "utils",
    "set_compile_cache": "generation.compile_cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
