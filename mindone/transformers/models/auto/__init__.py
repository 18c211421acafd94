"""Auto classes: pick the architecture from `config.model_type`. Model modules are imported only when used."""

import importlib
import os

from transformers import AutoConfig
from transformers import AutoTokenizer as _HFAutoTokenizer

# model_type -> (module under mindone.transformers.models, base model class, causal LM class)
MODEL_CLASSES = {
    "llama": ("llama", "LlamaModel", "LlamaForCausalLM"),
    "gemma": ("gemma", "GemmaModel", "GemmaForCausalLM"),
    "gemma2": ("gemma2", "Gemma2Model", "Gemma2ForCausalLM"),
    "gemma3_text": ("gemma3", "Gemma3TextModel", "Gemma3ForCausalLM"),
    "gpt2": ("gpt2", "GPT2Model", "GPT2LMHeadModel"),
    "mistral": ("mistral", "MistralModel", "MistralForCausalLM"),
    "phi3": ("phi3", "Phi3Model", "Phi3ForCausalLM"),
    "qwen2": ("qwen2", "Qwen2Model", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3Model", "Qwen3ForCausalLM"),
}

_HUB_KEYS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def supported_model_types() -> list:
    return sorted(MODEL_CLASSES)


def _class_for(model_type: str, index: int):
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}")
    module_name, *class_names = MODEL_CLASSES[model_type]
    module = importlib.import_module(f"mindone.transformers.models.{module_name}")
    return getattr(module, class_names[index])


class _AutoModel:
    _class_index = 0

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(f"{type(self).__name__} is built with from_pretrained() or from_config()")

    @classmethod
    def from_config(cls, config, dtype=None):
        from ...layers import parameter_defaults
        from ...modeling_utils import resolve_dtype

        with parameter_defaults(resolve_dtype(dtype, config)):
            return _class_for(config.model_type, cls._class_index)(config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        from ...modeling_utils import _check_location, check_dequantize, load_config

        path = str(pretrained_model_name_or_path)
        check_dequantize(kwargs.get("dequantize", True), kwargs.get("gguf_file"))
        config = kwargs.pop("config", None)
        if config is None and kwargs.get("gguf_file") is not None:
            from ...integrations.gguf import open_gguf

            config = open_gguf(path, kwargs["gguf_file"]).config
        elif config is None:
            hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KEYS if key in kwargs}
            _check_location(path, hub_kwargs)
            loading_kwargs = {key: kwargs.pop(key) for key in _MODEL_ARGS if key in kwargs}
            config, kwargs = load_config(path, hub_kwargs, **kwargs)
            kwargs.update(hub_kwargs, **loading_kwargs)
        model_class = _class_for(config.model_type, cls._class_index)
        return model_class.from_pretrained(path, *model_args, config=config, **kwargs)


# loading arguments of PreTrainedModel.from_pretrained; everything else goes to the config (as in transformers)
_MODEL_ARGS = ("dtype", "mindspore_dtype", "torch_dtype", "gguf_file", "dequantize", "output_loading_info",
               "quantization_config", "load_in_8bit", "load_in_4bit")  # fmt: skip


class AutoModel(_AutoModel):
    _class_index = 0


class AutoModelForCausalLM(_AutoModel):
    _class_index = 1


class AutoTokenizer(_HFAutoTokenizer):
    """transformers' AutoTokenizer; with `gguf_file=` the tokenizer is rebuilt from the GGUF without torch."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *inputs, **kwargs):
        gguf_file = kwargs.pop("gguf_file", None)
        if gguf_file is None:
            return _HFAutoTokenizer.from_pretrained(pretrained_model_name_or_path, *inputs, **kwargs)
        from ...integrations.gguf import open_gguf

        return open_gguf(str(pretrained_model_name_or_path), gguf_file).tokenizer()


__all__ = ["AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer", "supported_model_types"]
