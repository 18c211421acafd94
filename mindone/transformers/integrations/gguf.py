"""GGUF checkpoints (llama.cpp's format) read with the `gguf` package: config, dequantized weights, tokenizer.

This module does not import MindSpore or torch, so the PyTorch parity script can use its tokenizer too."""

import functools
import os

import gguf
import numpy as np
from gguf.quants import dequantize
from transformers import AutoConfig, PreTrainedTokenizerFast
from transformers.integrations.ggml import GGUF_CONFIG_MAPPING, GGUF_TOKENIZER_MAPPING, GGUF_TO_FAST_CONVERTERS
from transformers.integrations.ggml import convert_gguf_tokenizer

_TOKEN_TYPE_CONTROL = 3
_ARCH_BY_NAME = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
# llama.cpp stores q/k rows permuted for its rotary layout in these architectures
_PERMUTED_QK = {"llama", "mistral"}
# the tokenizer model written by llama.cpp -> transformers' converter for it
_TOKENIZER_CONVERTERS = {"gpt2": "gpt2", "llama": "llama"}


@functools.lru_cache(maxsize=4)
def _open(path: str) -> "GGUFCheckpoint":
    return GGUFCheckpoint(path)


def open_gguf(model_dir: str, gguf_file: str) -> "GGUFCheckpoint":
    """`gguf_file` as a path, or a file name inside `model_dir` (as transformers' `gguf_file=` argument)."""
    candidates = [gguf_file, os.path.join(model_dir or "", gguf_file)]
    path = next((c for c in candidates if os.path.isfile(c)), None)
    if path is None:
        raise OSError(f"GGUF file '{gguf_file}' not found (looked for it directly and inside '{model_dir}')")
    return _open(os.path.abspath(path))


class GGUFCheckpoint:
    def __init__(self, path: str):
        try:
            self.reader = gguf.GGUFReader(path)
        except (ValueError, OSError, IndexError) as err:
            raise OSError(f"'{path}' is not a readable GGUF file ({err}); re-download it") from None
        self.path = path
        self.metadata = {key: field.contents() for key, field in self.reader.fields.items()}
        self.architecture = self.metadata["general.architecture"]
        if self.architecture not in GGUF_CONFIG_MAPPING or self.architecture not in _ARCH_BY_NAME:
            raise ValueError(f"GGUF architecture '{self.architecture}' is not supported; supported: llama")

    @functools.cached_property
    def config(self):
        prefix = self.architecture + "."
        params = {
            hf_key: _shortest(self.metadata[prefix + gguf_key])
            for gguf_key, hf_key in GGUF_CONFIG_MAPPING[self.architecture].items()
            if hf_key is not None and prefix + gguf_key in self.metadata
        }
        params.setdefault("vocab_size", len(self.metadata["tokenizer.ggml.tokens"]))
        params["tie_word_embeddings"] = all(t.name != "output.weight" for t in self.reader.tensors)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            gguf_key = "tokenizer.ggml." + key.replace("pad", "padding")
            if gguf_key in self.metadata:
                params[key] = int(self.metadata[gguf_key])
        return AutoConfig.for_model(self.architecture, **params)

    generation_config = None  # GenerationConfig.from_model_config(config) already carries bos/eos/pad

    def tensors(self, names):
        """Yields (Hugging Face name, float32 array) for each of `names` the file holds."""
        name_map = gguf.get_tensor_name_map(_ARCH_BY_NAME[self.architecture], self.config.num_hidden_layers)
        by_gguf_name = {t.name: t for t in self.reader.tensors}
        for name in names:
            stem, _, suffix = name.rpartition(".")
            gguf_stem = name_map.get_name(stem)
            tensor = by_gguf_name.get(f"{gguf_stem}.{suffix}") if gguf_stem else None
            if tensor is not None:
                yield name, self._unpermute(name, dequantize(tensor.data, tensor.tensor_type))

    def _unpermute(self, name: str, weights: np.ndarray) -> np.ndarray:
        if self.architecture not in _PERMUTED_QK:
            return weights
        if name.endswith("q_proj.weight"):
            return _reverse_permute(weights, self.config.num_attention_heads)
        if name.endswith("k_proj.weight"):
            return _reverse_permute(weights, self.config.num_key_value_heads)
        return weights

    def tokenizer(self) -> PreTrainedTokenizerFast:
        meta = self.metadata
        tokens = meta["tokenizer.ggml.tokens"]
        tokenizer_dict = {
            hf_key: meta["tokenizer." + gguf_key]
            for gguf_key, hf_key in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
            if "tokenizer." + gguf_key in meta
        }
        kind = _TOKENIZER_CONVERTERS.get(meta.get("tokenizer.ggml.model"))
        if kind is None or kind not in GGUF_TO_FAST_CONVERTERS:
            raise ValueError(f"GGUF tokenizer model '{meta.get('tokenizer.ggml.model')}' is not supported")
        backend_tokenizer, extra_kwargs = convert_gguf_tokenizer(kind, tokenizer_dict)
        special = {}
        for role in ("bos", "eos", "unk", "pad"):
            key = f"tokenizer.ggml.{'padding' if role == 'pad' else 'unknown' if role == 'unk' else role}_token_id"
            if key in meta:
                special[f"{role}_token"] = tokens[int(meta[key])]
        control = [t for t, kind in zip(tokens, meta.get("tokenizer.ggml.token_type", [])) if kind == _TOKEN_TYPE_CONTROL]
        return PreTrainedTokenizerFast(
            tokenizer_object=backend_tokenizer,
            chat_template=meta.get("tokenizer.chat_template"),
            additional_special_tokens=[t for t in control if t not in special.values()],
            **special,
            **extra_kwargs,
        )


def _shortest(value):
    """GGUF stores floats as float32: 1e-5 arrives as 9.99999974e-06; keep the value float32 meant."""
    return float(str(np.float32(value))) if isinstance(value, float) else value


def _reverse_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of the rotary halves in q/k projection rows."""
    half = weights.shape[0] // num_heads // 2
    return weights.reshape(num_heads, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)
