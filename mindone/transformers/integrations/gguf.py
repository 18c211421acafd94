"""GGUF checkpoints (llama.cpp's format) read with the `gguf` package: config, dequantized weights, tokenizer.

This module does not import MindSpore or torch, so the PyTorch parity script can use its tokenizer too."""

import collections
import functools
import os

import gguf
import numpy as np
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import AutoConfig, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import generate_merges
from transformers.integrations.ggml import GGUF_CONFIG_MAPPING, GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

from ..quantization import SUPPORTED_GGUF_TYPES, from_gguf

_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # llama.cpp token types
_ARCH_BY_NAME = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
# GGUF architecture -> model_type. Mistral checkpoints are written by llama.cpp as `llama` (it ignores their sliding
# window too), so they load as Llama, which is what llama.cpp runs.
_MODEL_TYPES = {
    "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"
}
# metadata keys (after "<arch>.") -> config fields, over transformers' GGUF_CONFIG_MAPPING (Gemma 1 uses Gemma 2's)
_CONFIG_KEYS_OF = {"gemma": "gemma2"}
_EXTRA_CONFIG_KEYS = {
    "qwen3": {"attention.key_length": "head_dim"},
    "gemma2": {key: key for key in ("attn_logit_softcapping", "final_logit_softcapping")},
    "gemma3": {"final_logit_softcapping": "final_logit_softcapping"},
}
# GGUF stores no query_pre_attn_scalar; llama.cpp scales by 1/sqrt(head_dim), except for the 27B models (known by
# their layer count) where it uses hidden_size / num_attention_heads
_QUERY_SCALE_ARCHS = {"gemma2": 46, "gemma3": 62}
_ROPE_SCALING_TYPES = {"linear", "yarn"}


def _unpermute_qk(name: str, weights: np.ndarray, config) -> np.ndarray:
    """llama.cpp interleaves the rotary halves of each head's q/k rows for Llama; undo it."""
    heads = {"q_proj.weight": config.num_attention_heads, "k_proj.weight": config.num_key_value_heads}
    suffix = name.rpartition("self_attn.")[2]
    return _reverse_permute(weights, heads[suffix]) if suffix in heads else weights


def _unshift_norm(name: str, weights: np.ndarray, config) -> np.ndarray:
    """Gemma's RMSNorm multiplies by (1 + w); llama.cpp stores 1 + w, the model holds w."""
    return weights - 1 if name.endswith("norm.weight") else weights


_FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)

# llama.cpp's changes to the tensors of an architecture, undone per tensor (transformers' TensorProcessor classes)
_TENSOR_FIXES = {"llama": _unpermute_qk, "gemma": _unshift_norm, "gemma2": _unshift_norm, "gemma3": _unshift_norm}


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
            reader = gguf.GGUFReader(path)
        except (ValueError, OSError, IndexError) as err:
            raise OSError(f"'{path}' is not a readable GGUF file ({err}); re-download it") from None
        self.path = path
        self.metadata = {key: field.contents() for key, field in reader.fields.items()}
        # Only the tensor table is kept, not the reader: its fields hold a numpy view per vocabulary entry and merge
        # (~150 MB for a 49k vocabulary), and open_gguf caches this object for as long as the process runs.
        self.tensor_infos = reader.tensors
        self.architecture = self.metadata["general.architecture"]
        if self.architecture not in _MODEL_TYPES or self.architecture not in _ARCH_BY_NAME:
            supported = ", ".join(sorted(_MODEL_TYPES))
            raise ValueError(f"GGUF architecture '{self.architecture}' is not supported; supported: {supported}")

    @functools.cached_property
    def config(self):
        arch, meta = self.architecture, self.metadata
        keys = {**GGUF_CONFIG_MAPPING[_CONFIG_KEYS_OF.get(arch, arch)], **_EXTRA_CONFIG_KEYS.get(arch, {})}
        params = {
            hf_key: _shortest(meta[f"{arch}.{gguf_key}"])
            for gguf_key, hf_key in keys.items()
            if hf_key is not None and f"{arch}.{gguf_key}" in meta
        }
        params.setdefault("vocab_size", len(meta["tokenizer.ggml.tokens"]))
        params["tie_word_embeddings"] = all(t.name != "output.weight" for t in self.tensor_infos)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            gguf_key = "tokenizer.ggml." + key.replace("pad", "padding")
            if gguf_key in meta:
                params[key] = int(meta[gguf_key])
        scaling = f"{arch}.rope.scaling."
        if meta.get(scaling + "type") in _ROPE_SCALING_TYPES:
            rope = params["rope_scaling"] = {"rope_type": meta[scaling + "type"]}
            rope["factor"] = _shortest(meta[scaling + "factor"])
            if scaling + "original_context_length" in meta:
                rope["original_max_position_embeddings"] = int(meta[scaling + "original_context_length"])
        if arch in _QUERY_SCALE_ARCHS:
            per_head = params["hidden_size"] // params["num_attention_heads"]
            is_27b = params["num_hidden_layers"] == _QUERY_SCALE_ARCHS[arch]
            params["query_pre_attn_scalar"] = per_head if is_27b else params.get("head_dim", per_head)
        return AutoConfig.for_model(_MODEL_TYPES[arch], **params)

    generation_config = None  # GenerationConfig.from_model_config(config) already carries bos/eos/pad

    def tensors(self, names, quantized=frozenset()):
        """Yields (Hugging Face name, float32 array) for each of `names` the file holds; the names in `quantized`
        come as quantization.QuantizedWeight where their block type has a quantized format (the others are
        dequantized and listed in `dequantized_types`)."""
        name_map = gguf.get_tensor_name_map(_ARCH_BY_NAME[self.architecture], self.config.num_hidden_layers)
        by_gguf_name = {t.name: t for t in self.tensor_infos}
        fix = _TENSOR_FIXES.get(self.architecture) or (lambda name, weights, config: weights)
        self.dequantized_types = collections.Counter()
        for name in names:
            stem, _, suffix = name.rpartition(".")
            gguf_stem = name_map.get_name(stem)
            tensor = by_gguf_name.get(f"{gguf_stem}.{suffix}") if gguf_stem else None
            if tensor is None:
                continue
            raw = self._read(tensor)
            if name in quantized and tensor.tensor_type in SUPPORTED_GGUF_TYPES:
                weight = from_gguf(raw, tensor.tensor_type, (raw.shape[0], int(tensor.shape[0])))
                yield name, weight.map_rows(lambda rows: fix(name, rows, self.config))
                continue
            if name in quantized and tensor.tensor_type not in _FLOAT_TYPES:
                self.dequantized_types[tensor.tensor_type.name] += 1
            try:
                weights = dequantize(raw, tensor.tensor_type)
            except NotImplementedError:
                raise OSError(
                    f"GGUF tensor '{tensor.name}' in '{self.path}' has type {tensor.tensor_type.name}, which cannot be "
                    "read (gguf has no dequantizer for it); re-quantize the model with llama.cpp to another type"
                ) from None
            yield name, fix(name, weights, self.config)
            del weights  # not kept alive while the next tensor is dequantized

    def _read(self, tensor) -> np.ndarray:
        """The tensor's stored bytes, read from the file rather than through the reader's memory map: pages of a
        mapping that were read stay resident for as long as it is mapped (the whole file, once every tensor is read)."""
        raw = np.fromfile(self.path, dtype=tensor.data.dtype, count=tensor.data.size, offset=tensor.data_offset)
        return raw.reshape(tensor.data.shape)

    def tokenizer(self) -> PreTrainedTokenizerFast:
        meta = self.metadata
        tokens = meta["tokenizer.ggml.tokens"]
        model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
        build = _TOKENIZER_BUILDERS.get((model, pre)) or _TOKENIZER_BUILDERS.get((model, None))
        if build is None:
            raise ValueError(f"GGUF tokenizer model '{model}' is not supported; supported: gpt2, llama")
        backend_tokenizer = build(meta)
        _add_bos_eos(backend_tokenizer, meta)
        special = {}
        for role in ("bos", "eos", "unk", "pad"):
            key = f"tokenizer.ggml.{'padding' if role == 'pad' else 'unknown' if role == 'unk' else role}_token_id"
            if key in meta:
                special[f"{role}_token"] = tokens[int(meta[key])]
        control = [t for t, kind in zip(tokens, meta.get("tokenizer.ggml.token_type", [])) if kind == _CONTROL]
        return PreTrainedTokenizerFast(
            tokenizer_object=backend_tokenizer,
            chat_template=meta.get("tokenizer.chat_template"),
            additional_special_tokens=[t for t in control if t not in special.values()],
            **special,
        )


def _converted(kind: str, meta: dict) -> Tokenizer:
    """transformers' converter for a GGUF tokenizer that stores its merges (BPE of the `gpt2` tokenizer model)."""
    fields = GGUF_TOKENIZER_MAPPING["tokenizer"].items()
    tokenizer_dict = {hf: meta["tokenizer." + key] for key, hf in fields if "tokenizer." + key in meta}
    return convert_gguf_tokenizer(kind, tokenizer_dict)[0]


def _sentencepiece_bpe(meta: dict) -> Tokenizer:
    """The `llama` tokenizer model is SentencePiece BPE (Llama 2, Mistral, Gemma). The GGUF keeps pieces, scores and
    types but no merges; SentencePiece joins the adjacent pair whose joined piece scores highest, so merges ranked by
    that score reproduce it. (transformers' GGUF loader builds a Unigram model for Gemma instead, which splits words
    into near-characters: transformers issue 41494.)"""
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    # llama.cpp writes the spaces of user-defined pieces as " "; SentencePiece matches them as "▁" after normalizing
    pieces = [t.replace(" ", "▁") if kind == _USER_DEFINED else t for t, kind in zip(tokens, types)]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    normal = [(p, score) for p, score, kind in zip(pieces, meta["tokenizer.ggml.scores"], types) if kind == _NORMAL]
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    unk_token = pieces[int(unk)] if unk is not None else None
    merges = generate_merges(vocab, normal)
    tokenizer = Tokenizer(BPE(vocab, merges, unk_token=unk_token, fuse_unk=True, byte_fallback=True))
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))  # llama.cpp's default for this model
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁")] * prefix + [normalizers.Replace(" ", "▁")])
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(decode + [decoders.Strip(content=" ", left=1, right=0)] * prefix)
    # user-defined pieces (Gemma's; Llama 2 / Mistral, which use the prefix, have none) are matched whole before BPE
    tokenizer.add_tokens([AddedToken(p, normalized=True) for p, kind in zip(pieces, types) if kind == _USER_DEFINED])
    return tokenizer


# (tokenizer.ggml.model, tokenizer.ggml.pre or None for any) -> builder of the backend tokenizer
_TOKENIZER_BUILDERS = {
    ("gpt2", "qwen2"): functools.partial(_converted, "qwen2"),
    ("gpt2", None): functools.partial(_converted, "gpt2"),
    ("llama", None): _sentencepiece_bpe,
}


def _add_bos_eos(tokenizer: Tokenizer, meta: dict) -> None:
    """llama.cpp's add_bos_token / add_eos_token flags become a post-processor, as in transformers' Llama tokenizers."""
    tokens, ends = meta["tokenizer.ggml.tokens"], {}
    for role in ("bos", "eos"):
        if meta.get(f"tokenizer.ggml.add_{role}_token") and f"tokenizer.ggml.{role}_token_id" in meta:
            ends[role] = int(meta[f"tokenizer.ggml.{role}_token_id"])
    if not ends:
        return
    bos, eos = ([tokens[ends[r]]] if r in ends else [] for r in ("bos", "eos"))
    template = processors.TemplateProcessing(
        single=[*bos, "$A", *eos],
        pair=[*bos, "$A", *eos, *(t + ":1" for t in bos), "$B:1", *(t + ":1" for t in eos)],
        special_tokens=[(tokens[i], i) for i in ends.values()],
    )
    previous = tokenizer.post_processor
    tokenizer.post_processor = processors.Sequence([previous, template]) if previous else template


def _shortest(value):
    """GGUF stores floats as float32: 1e-5 arrives as 9.99999974e-06; keep the value float32 meant."""
    return float(str(np.float32(value))) if isinstance(value, float) else value


def _reverse_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of the rotary halves in q/k projection rows."""
    half = weights.shape[0] // num_heads // 2
    return weights.reshape(num_heads, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)
