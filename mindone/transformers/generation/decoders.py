"""How generate() runs the model: op by op in PyNative, or a compiled step over a StaticCache.

`StaticDecoder` is the gpt-fast design on MindSpore: the cache is preallocated and written in place at a position
tensor, the prompt runs eagerly into it, and one decode graph per (batch, cache length, dtype, head) is compiled
with `ms.jit` and reused across positions and generate() calls. With a `DeviceHead` the graph also chooses the
next tokens, so a decode step is one launch and one copy of the tokens back to the host.

Both decoders keep the loop's bookkeeping (ids, masks, positions) in numpy: `logits(input_ids, attention_mask)`
serves the loops that process scores on the host, `select(ids, mask, head)` the ones with a device head."""

import time
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn

from ..cache_utils import Cache, DynamicCache, StaticCache
from ..modeling_rope_utils import HOST_UPDATED_ROPE, rope_switch_length, rope_type_of
from . import compile_cache
from .logits_process import host_array

PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
MIN_CACHE_LENGTH = 256


def positions(mask: np.ndarray) -> np.ndarray:
    """transformers' position ids: cumsum of the mask minus one, 1 on padding."""
    cumulative = np.cumsum(mask, -1) - 1
    return np.where(mask == 0, 1, cumulative).astype(np.int32)


class DynamicDecoder:
    """PyNative forward over the tokens the cache has not seen yet (or the whole sequence without a cache).

    Without a cache of the caller's, generate() preallocates a StaticCache for its max_length (for models that
    support one, `_supports_static_cache` as in transformers) and runs it op by op:
    the attention kernels write each step's keys and values in place instead of concatenating the whole cache
    every step. A DynamicCache (passed in, or for assisted decoding, which crops it) grows by concatenation."""

    def __init__(self, model, generation_config, cache: Optional[Cache] = None, batch: int = 1):
        self.model = model
        if cache is None and generation_config.use_cache:
            if getattr(model, "_supports_static_cache", False):
                cache = StaticCache(model.layers_config, generation_config.max_length, batch, model.dtype)
            else:
                cache = DynamicCache()
        self.cache = cache if generation_config.use_cache else None
        recompute = getattr(model, "recompute_cache_at_rope_switch", False)
        self.rope_switch = rope_switch_length(model.config) if recompute else None
        self.width = generation_config.max_length
        self.prefill_chunk = generation_config.prefill_chunk_size
        if self.prefill_chunk and self.cache is None:  # transformers' error
            raise ValueError("Cannot use prefill chunking without a cache")

    def logits(self, input_ids, attention_mask, logits_to_keep: int = 1) -> ms.Tensor:
        return self._forward(host_array(input_ids), host_array(attention_mask), logits_to_keep)

    def select(self, ids: np.ndarray, mask: np.ndarray, head) -> tuple:
        """The head's outputs (next tokens first) for the sequences `ids` [batch, length] so far."""
        logits = self._forward(ids, mask)[:, -1, :]
        return _as_tuple(head(logits, *(ms.Tensor(x) for x in head.inputs(ids, self.width))))

    def _forward(self, ids: np.ndarray, mask: np.ndarray, logits_to_keep: int = 1) -> ms.Tensor:
        seen = self.cache.get_seq_length() if self.cache is not None else 0
        length = ids.shape[1]
        mask = mask.astype(np.int32)
        if self.rope_switch is not None and 0 < seen <= self.rope_switch < length:
            self._restart()  # cached keys were rotated for the short context: recompute them, in one forward
            return self._run(ids, mask, 0, length, logits_to_keep)
        if self.prefill_chunk and self.cache is not None:  # transformers' chunked prefill: all but the scored tokens
            self._check_chunkable(seen, length - logits_to_keep)
            for start in range(seen, length - logits_to_keep, self.prefill_chunk):
                self._run(ids, mask, start, min(start + self.prefill_chunk, length - logits_to_keep), 1)
            seen = max(seen, length - logits_to_keep)
        return self._run(ids, mask, seen, length, logits_to_keep)

    def _check_chunkable(self, start: int, end: int) -> None:
        if self.rope_switch is not None and end - start > self.prefill_chunk and end > self.rope_switch:
            raise ValueError(f"prefill_chunk_size cannot split a prompt that passes the model's LongRoPE switch at "
                             f"{self.rope_switch} positions: its first chunks would be rotated for the short context; "
                             "generate without prefill_chunk_size")  # fmt: skip

    def _run(self, ids: np.ndarray, mask: np.ndarray, start: int, end: int, logits_to_keep: int) -> ms.Tensor:
        """The model over tokens [start, end) of `ids` (the cache holds those before `start`)."""
        kwargs = {}
        attention_mask = mask[:, :end]
        if isinstance(self.cache, StaticCache):  # the mask covers every slot; causality hides the unwritten ones
            free = self.cache.max_cache_len - mask.shape[1]
            attention_mask = np.concatenate([mask, np.ones((mask.shape[0], free), np.int32)], -1)
            kwargs["cache_position"] = ms.Tensor(np.arange(start, end, dtype=np.int32))
        outputs = self.model(
            input_ids=ms.Tensor(ids[:, start:end]),
            attention_mask=ms.Tensor(attention_mask),
            position_ids=ms.Tensor(positions(mask)[:, start:end]),
            past_key_values=self.cache,
            use_cache=self.cache is not None,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if isinstance(self.cache, StaticCache):
            self.cache.seen_tokens = end
        return outputs.logits.astype(ms.float32)

    def _restart(self) -> None:
        if isinstance(self.cache, StaticCache):
            self.cache.seen_tokens = 0
        else:
            self.cache = DynamicCache()

    def reorder(self, beam_idx: ms.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder_cache(beam_idx)

    def returned_cache(self):
        """What generate() hands back as past_key_values: a DynamicCache, as transformers does, also when the
        steps ran over a preallocated StaticCache (its filled slots)."""
        if not isinstance(self.cache, StaticCache):
            return self.cache
        seen = self.cache.seen_tokens
        return DynamicCache.from_legacy_cache(
            (keys[:, :, :seen], values[:, :, :seen]) for keys, values in zip(self.cache.keys, self.cache.values)
        )


def _as_tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)


class _CompiledStep(nn.Cell):
    """One jit-compiled forward that writes its keys/values into `cache` and returns the last position's logits,
    or, with a `head`, the head's outputs for them."""

    def __init__(self, model, cache: StaticCache, head=None):
        super().__init__(auto_prefix=False)
        self.model, self.cache, self.head = model, cache, head
        self.signatures = set()
        self.loaded = set()  # the signatures whose graph came from the disk cache (compile_cache.py)
        self.compile_seconds = 0.0
        compile_cache.own_parameters(self)  # packed layer weights too: a graph loaded from disk binds them by name
        self.graph = ms.jit(self.construct)

    def construct(self, input_ids, position_ids, cache_position, attention_mask, *head_inputs):
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
        if self.head is None:
            return outputs[0]
        logits = outputs[0]  # [batch, 1, vocab]: a reshape, where a [:, -1] slice would cost a slow kernel
        return self.head(logits.reshape(logits.shape[0], logits.shape[2]).astype(ms.float32), *head_inputs)

    def run(self, *arrays) -> tuple:
        inputs = [x if isinstance(x, ms.Tensor) else ms.Tensor(x) for x in arrays]
        signature = tuple((tuple(x.shape), x.dtype) for x in inputs)
        if signature in self.signatures:
            return _as_tuple(self.graph(*inputs))

        def first_call():
            outputs = _as_tuple(self.graph(*inputs))
            outputs[0].asnumpy()
            return outputs

        start = time.perf_counter()  # a new signature compiles (or loads): its first call is (almost all) that
        outputs, loaded = compile_cache.first_call(self, signature, first_call)
        self.compile_seconds += time.perf_counter() - start
        self.signatures.add(signature)
        if loaded:
            self.loaded.add(signature)
        return outputs


def prefill_bucket(length: int) -> int:
    return next((b for b in PREFILL_BUCKETS if b >= length), length)


def cache_length_for(needed: int) -> int:
    return max(MIN_CACHE_LENGTH, 1 << (needed - 1).bit_length())


def _steps_of(owner) -> dict:
    return owner.__dict__.setdefault("_compiled_steps", {})


def compiled_step(model, batch: int, cache_length: int, head=None) -> _CompiledStep:
    """The model's compiled step for this batch, cache length and head, built once and kept on the model; steps
    that differ only in their head share one StaticCache."""
    caches = model.__dict__.setdefault("_static_caches", {})
    cache_key = (batch, cache_length, model.dtype)
    if cache_key not in caches:
        caches[cache_key] = StaticCache(model.layers_config, cache_length, batch, model.dtype)
    key = cache_key + (head.key if head is not None else None, model.__dict__.get("weights_version", 0))
    if key not in _steps_of(model):
        _steps_of(model)[key] = _CompiledStep(model, caches[cache_key], head)
    return _steps_of(model)[key]


def _cached_step_for(model, cache: StaticCache, head=None) -> _CompiledStep:
    """A user's StaticCache keeps its own compiled steps (per model and head), so they live and die with it."""
    key = (id(model), head.key if head is not None else None, model.__dict__.get("weights_version", 0))
    if key not in _steps_of(cache):
        _steps_of(cache)[key] = _CompiledStep(model, cache, head)
    return _steps_of(cache)[key]


def compiled_graph_count(model) -> int:
    """How many graphs the static path has compiled for this model (one per distinct input signature)."""
    return sum(len(step.signatures) for step in _steps_of(model).values())


def compile_seconds(model) -> float:
    """Time spent in the first call of each of the model's compiled graphs (compile plus one run)."""
    return sum(step.compile_seconds for step in _steps_of(model).values())


class StaticDecoder:
    """Prefill, then compiled one-token decode steps over a StaticCache.

    In PyNative mode the prompt runs op by op into the cache (the fused kernels make that nearly as fast as a
    compiled prefill), so only the decode step is compiled, as in gpt-fast: no graph per prompt-length bucket,
    which cost a few seconds and ~200 MB of compiled graph each. Under a global GRAPH_MODE every forward is a
    graph, so the prompt is left-padded to a bucket and the prefill compiled once per bucket."""

    def __init__(self, model, generation_config, batch: int, input_length: int, cache: Optional[StaticCache] = None):
        if rope_type_of(model.config) in HOST_UPDATED_ROPE:
            raise ValueError(
                f"{rope_type_of(model.config)} rope scaling recomputes frequencies from the sequence length on the "
                "host, which a compiled static-cache step cannot do; generate without cache_implementation='static'"
            )
        self.model = model
        new_tokens = generation_config.max_length - input_length
        eager_prefill = ms.get_context("mode") == ms.PYNATIVE_MODE
        self.bucket = input_length if eager_prefill else prefill_bucket(input_length)
        if cache is not None:
            if cache.seen_tokens >= input_length or (cache.seen_tokens and not eager_prefill):
                raise ValueError(
                    f"the StaticCache holds {cache.seen_tokens} tokens, which generate() continues from (as transformers "
                    f"does), but the input has {input_length}" + ("" if eager_prefill else " and GRAPH_MODE prefills "
                    "whole prompts") + "; call cache.reset() or cache.crop(n) to keep fewer")  # fmt: skip
            if input_length + new_tokens > cache.max_cache_len:
                raise ValueError(
                    f"prompt length {input_length} + {new_tokens} new tokens = {input_length + new_tokens} exceeds the "
                    f"StaticCache's max_cache_len {cache.max_cache_len}; create the cache with a larger max_cache_len"
                )
            if cache.max_batch_size != batch:
                raise ValueError(f"the StaticCache was made for batch {cache.max_batch_size}, but the input has batch {batch}")
            self.bucket = self.bucket if self.bucket + new_tokens <= cache.max_cache_len else input_length
            self.user_cache = cache
        else:
            self.user_cache = None
            self.cache_length = cache_length_for(self.bucket + new_tokens)
        self.batch = batch
        self.cache = self._step(None).cache
        if self.user_cache is None:  # the model's own cache, left filled by an earlier call
            self.cache.seen_tokens = 0
        self.prefilled = False
        self.padding = self.bucket - input_length
        self.slot_mask = None
        self.eager = DynamicDecoder(model, generation_config, self.cache, batch) if eager_prefill else None

    def _step(self, head) -> _CompiledStep:
        if self.user_cache is not None:
            return _cached_step_for(self.model, self.user_cache, head)
        return compiled_step(self.model, self.batch, self.cache_length, head)

    def logits(self, input_ids, attention_mask, logits_to_keep: int = 1) -> ms.Tensor:
        return self._run(host_array(input_ids), host_array(attention_mask), None)[0].astype(ms.float32)

    def select(self, ids: np.ndarray, mask: np.ndarray, head) -> tuple:
        return self._run(ids, mask, head, *head.inputs(ids, self.cache.max_cache_len))

    def _run(self, ids: np.ndarray, mask: np.ndarray, head, *head_inputs) -> tuple:
        step = self._step(head)
        mask = mask.astype(np.int32)
        seen, prefill = self.cache.seen_tokens, not self.prefilled
        self.prefilled = True
        if prefill and self.eager is not None:  # the tokens the cache does not hold yet, op by op
            free = self.cache.max_cache_len - ids.shape[1]
            self.slot_mask = ms.Tensor(np.concatenate([mask, np.ones((ids.shape[0], free), np.int32)], -1))
            logits = self.eager.logits(ids, mask)
            return (logits,) if head is None else _as_tuple(head(logits[:, -1, :], *(ms.Tensor(x) for x in head_inputs)))
        if prefill:  # compiled prefill, left-padded to the bucket
            batch, pad = ids.shape[0], self.padding
            ids = np.concatenate([np.zeros((batch, pad), ids.dtype), ids], -1)
            mask = np.concatenate([np.zeros((batch, pad), np.int32), mask], -1)
            free = self.cache.max_cache_len - self.bucket
            self.slot_mask = ms.Tensor(np.concatenate([mask, np.ones((batch, free), np.int32)], -1))
            cache_position = np.arange(self.bucket, dtype=np.int32)
            position_ids, self.cache.seen_tokens = positions(mask), self.bucket
        else:
            ids, cache_position = ids[:, -1:], np.array([seen], np.int32)
            position_ids, self.cache.seen_tokens = mask.sum(-1, keepdims=True).astype(np.int32) - 1, seen + 1
        return step.run(ids, position_ids, cache_position, self.slot_mask, *head_inputs)

    def reorder(self, beam_idx: ms.Tensor) -> None:
        self.cache.reorder_cache(beam_idx)

    def returned_cache(self) -> StaticCache:
        return self.cache


def make_decoder(model, generation_config, batch: int, input_length: int, cache: Optional[Cache] = None):
    """Static (compiled) when asked for with cache_implementation="static", given a StaticCache, or when the
    global context is GRAPH_MODE; PyNative otherwise, also over a static cache when `disable_compile` is set."""
    graph_mode = ms.get_context("mode") == ms.GRAPH_MODE
    wants_static = generation_config.cache_implementation == "static" or isinstance(cache, StaticCache) or graph_mode
    if graph_mode and (generation_config.disable_compile or generation_config.prefill_chunk_size):
        option = "disable_compile=True" if generation_config.disable_compile else "prefill_chunk_size"
        raise ValueError(f"{option} needs the model run op by op, but the global context is GRAPH_MODE, where every "
                         "forward is compiled; set ms.set_context(mode=ms.PYNATIVE_MODE)")  # fmt: skip
    if wants_static and generation_config.use_cache and not generation_config.disable_compile:
        return StaticDecoder(model, generation_config, batch, input_length, cache if isinstance(cache, StaticCache) else None)
    return DynamicDecoder(model, generation_config, cache, batch)
