"""How generate() runs the model: PyNative with a growing DynamicCache, or a compiled step over a StaticCache.

`StaticDecoder` is the gpt-fast design on MindSpore: the cache is preallocated and written in place at a position
tensor, prompts are left-padded to a few length buckets, and one graph per (batch, bucket or 1, cache length,
dtype) is compiled with `ms.jit` and reused across positions and generate() calls."""

import time
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import mint, nn

from .. import backend
from ..cache_utils import Cache, DynamicCache, StaticCache
from ..modeling_rope_utils import HOST_UPDATED_ROPE, rope_type_of, rope_switch_length

PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
MIN_CACHE_LENGTH = 256


def _positions(attention_mask: ms.Tensor) -> ms.Tensor:
    """transformers' position ids: cumsum of the mask minus one, 1 on padding."""
    positions = backend.cumsum(attention_mask, -1) - 1
    return mint.where(attention_mask == 0, ms.Tensor(1, positions.dtype), positions)


class DynamicDecoder:
    """PyNative forward over the tokens the cache has not seen yet (or the whole sequence without a cache)."""

    def __init__(self, model, generation_config, cache: Optional[Cache] = None):
        self.model = model
        self.cache = (cache if cache is not None else DynamicCache()) if generation_config.use_cache else None
        recompute = getattr(model, "recompute_cache_at_rope_switch", False)
        self.rope_switch = rope_switch_length(model.config) if recompute else None

    def logits(self, input_ids, attention_mask, logits_to_keep: int = 1) -> ms.Tensor:
        seen = self.cache.get_seq_length() if self.cache is not None else 0
        if self.rope_switch is not None and 0 < seen <= self.rope_switch < input_ids.shape[1]:
            self.cache, seen = DynamicCache(), 0  # cached keys were rotated for the short context: recompute them
        outputs = self.model(
            input_ids=input_ids[:, seen:],
            attention_mask=attention_mask,
            position_ids=_positions(attention_mask)[:, seen:],
            past_key_values=self.cache,
            use_cache=self.cache is not None,
            logits_to_keep=logits_to_keep,
        )
        return outputs.logits.astype(ms.float32)

    def reorder(self, beam_idx: ms.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder_cache(beam_idx)


class _CompiledStep(nn.Cell):
    """One jit-compiled forward that writes its keys/values into `cache` and returns the last position's logits."""

    def __init__(self, model, cache: StaticCache):
        super().__init__(auto_prefix=False)
        self.model, self.cache = model, cache
        self.signatures = set()
        self.compile_seconds = 0.0
        self.graph = ms.jit(self.construct)

    def construct(self, input_ids, position_ids, cache_position, attention_mask):
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            cache_position=cache_position,
            use_cache=True,
            logits_to_keep=1,
            return_dict=False,
        )
        return outputs[0]

    def run(self, input_ids, position_ids, cache_position, attention_mask) -> ms.Tensor:
        signature = (tuple(input_ids.shape), input_ids.dtype)
        if signature in self.signatures:
            return self.graph(input_ids, position_ids, cache_position, attention_mask)
        start = time.perf_counter()  # a new signature compiles: its first call is (almost all) compile time
        logits = self.graph(input_ids, position_ids, cache_position, attention_mask)
        logits.asnumpy()
        self.compile_seconds += time.perf_counter() - start
        self.signatures.add(signature)
        return logits


def prefill_bucket(length: int) -> int:
    return next((b for b in PREFILL_BUCKETS if b >= length), length)


def cache_length_for(needed: int) -> int:
    return max(MIN_CACHE_LENGTH, 1 << (needed - 1).bit_length())


def compiled_step(model, batch: int, cache_length: int) -> _CompiledStep:
    """The model's compiled step for this batch and cache length, built once and kept on the model."""
    steps = model.__dict__.setdefault("_compiled_steps", {})
    key = (batch, cache_length, model.dtype)
    if key not in steps:
        steps[key] = _CompiledStep(model, StaticCache(model.config, cache_length, batch, model.dtype))
    return steps[key]


def compiled_graph_count(model) -> int:
    """How many graphs the static path has compiled for this model (one per distinct input signature)."""
    return sum(len(step.signatures) for step in model.__dict__.get("_compiled_steps", {}).values())


def compile_seconds(model) -> float:
    """Time spent in the first call of each of the model's compiled graphs (compile plus one run)."""
    return sum(step.compile_seconds for step in model.__dict__.get("_compiled_steps", {}).values())


class StaticDecoder:
    """Compiled prefill (prompt left-padded to a bucket) then compiled one-token decode steps."""

    def __init__(self, model, generation_config, batch: int, input_length: int, cache: Optional[StaticCache] = None):
        if rope_type_of(model.config) in HOST_UPDATED_ROPE:
            raise ValueError(
                f"{rope_type_of(model.config)} rope scaling recomputes frequencies from the sequence length on the "
                "host, which a compiled static-cache step cannot do; generate without cache_implementation='static'"
            )
        new_tokens = generation_config.max_length - input_length
        self.bucket = prefill_bucket(input_length)
        if cache is not None:
            if input_length + new_tokens > cache.max_cache_len:
                raise ValueError(
                    f"prompt length {input_length} + {new_tokens} new tokens = {input_length + new_tokens} exceeds the "
                    f"StaticCache's max_cache_len {cache.max_cache_len}; create the cache with a larger max_cache_len"
                )
            if cache.max_batch_size != batch:
                raise ValueError(f"the StaticCache was made for batch {cache.max_batch_size}, but the input has batch {batch}")
            self.bucket = self.bucket if self.bucket + new_tokens <= cache.max_cache_len else input_length
            self.step = _cached_step_for(model, cache)
        else:
            self.step = compiled_step(model, batch, cache_length_for(self.bucket + new_tokens))
        self.cache = self.step.cache
        self.cache.seen_tokens = 0
        self.padding = self.bucket - input_length
        self.slot_mask = None

    def logits(self, input_ids, attention_mask, logits_to_keep: int = 1) -> ms.Tensor:
        if self.cache.seen_tokens == 0:
            return self._prefill(input_ids, attention_mask)
        seen = self.cache.seen_tokens
        position_ids = (attention_mask.sum(-1, keepdims=True) - 1).astype(ms.int32)
        cache_position = ms.Tensor(np.array([seen], np.int32))
        logits = self.step.run(input_ids[:, -1:], position_ids, cache_position, self.slot_mask)
        self.cache.seen_tokens = seen + 1
        return logits.astype(ms.float32)

    def _prefill(self, input_ids, attention_mask):
        batch, length = input_ids.shape
        pad = self.padding
        ids = mint.cat([mint.zeros((batch, pad), dtype=input_ids.dtype), input_ids], dim=-1) if pad else input_ids
        mask = mint.cat([mint.zeros((batch, pad), dtype=ms.int32), attention_mask], dim=-1) if pad else attention_mask
        free = self.cache.max_cache_len - self.bucket
        self.slot_mask = mint.cat([mask, mint.ones((batch, free), dtype=ms.int32)], dim=-1)
        cache_position = ms.Tensor(np.arange(self.bucket, dtype=np.int32))
        logits = self.step.run(ids, _positions(mask).astype(ms.int32), cache_position, self.slot_mask)
        self.cache.seen_tokens = self.bucket
        return logits.astype(ms.float32)

    def reorder(self, beam_idx: ms.Tensor) -> None:
        self.cache.reorder_cache(beam_idx)


def _cached_step_for(model, cache: StaticCache) -> _CompiledStep:
    """A user's StaticCache keeps its own compiled step (per model), so it lives and dies with the cache."""
    steps = cache.__dict__.setdefault("_compiled_steps", {})
    if id(model) not in steps:
        steps[id(model)] = _CompiledStep(model, cache)
    return steps[id(model)]


def make_decoder(model, generation_config, batch: int, input_length: int, cache: Optional[Cache] = None):
    """Static (compiled) when asked for with cache_implementation="static", given a StaticCache, or when the
    global context is GRAPH_MODE; the PyNative DynamicCache path otherwise."""
    wants_static = (
        generation_config.cache_implementation == "static"
        or isinstance(cache, StaticCache)
        or ms.get_context("mode") == ms.GRAPH_MODE
    )
    if wants_static and generation_config.use_cache:
        return StaticDecoder(model, generation_config, batch, input_length, cache if isinstance(cache, StaticCache) else None)
    return DynamicDecoder(model, generation_config, cache)
