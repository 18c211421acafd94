"""Key/value caches with Hugging Face's Cache API: tensors are [batch, kv_heads, seq, head_dim] per layer."""

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, mint, nn, ops

from .backend import arange
from .masking_utils import dtype_min


class Cache:
    """Interface shared by the caches: `update` stores new states for a layer and returns everything cached."""

    is_static = False

    def update(self, key_states, value_states, layer_idx: int, cache_kwargs: Optional[dict] = None):
        raise NotImplementedError(f"{type(self).__name__} must implement update()")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement get_seq_length()")

    def get_max_cache_shape(self) -> Optional[int]:
        return None


class DynamicCache(Cache):
    """Grows along the sequence axis by concatenation; the default for `generate(use_cache=True)`."""

    def __init__(self):
        self.key_cache: list[ms.Tensor] = []
        self.value_cache: list[ms.Tensor] = []

    def __len__(self) -> int:
        return len(self.key_cache)

    def __getitem__(self, layer_idx: int):
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def __iter__(self):
        return iter(zip(self.key_cache, self.value_cache))

    def update(self, key_states, value_states, layer_idx: int, cache_kwargs: Optional[dict] = None):
        if layer_idx == len(self.key_cache):
            self.key_cache.append(key_states)
            self.value_cache.append(value_states)
        else:
            self.key_cache[layer_idx] = mint.cat([self.key_cache[layer_idx], key_states], dim=-2)
            self.value_cache[layer_idx] = mint.cat([self.value_cache[layer_idx], value_states], dim=-2)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.key_cache[layer_idx].shape[-2] if layer_idx < len(self.key_cache) else 0

    def reset(self) -> None:
        self.key_cache, self.value_cache = [], []

    def crop(self, max_length: int) -> None:
        """Keep the first `max_length` positions (negative: drop that many from the end)."""
        if max_length < 0:
            max_length = self.get_seq_length() - abs(max_length)
        self.key_cache = [k[..., :max_length, :] for k in self.key_cache]
        self.value_cache = [v[..., :max_length, :] for v in self.value_cache]

    def reorder_cache(self, beam_idx: ms.Tensor) -> None:
        """Select batch rows (beam search): row i becomes old row beam_idx[i]."""
        self.key_cache = [ops.gather(k, beam_idx, 0) for k in self.key_cache]
        self.value_cache = [ops.gather(v, beam_idx, 0) for v in self.value_cache]

    def to_legacy_cache(self) -> tuple:
        return tuple(zip(self.key_cache, self.value_cache))

    @classmethod
    def from_legacy_cache(cls, past_key_values) -> "DynamicCache":
        cache = cls()
        for layer_idx, (key, value) in enumerate(past_key_values or ()):
            cache.update(key, value, layer_idx)
        return cache


class StaticCache(Cache, nn.Cell):
    """Preallocated keys/values, written in place at `cache_position`, so one compiled graph serves every decode step.

    Each layer's buffer is a Parameter shaped [batch, kv_heads, max_cache_len, head_dim] (Hugging Face's layout).
    The fused attention kernel writes its new keys and values into `layer_buffers` itself; `update` writes them
    with an in-place scatter and returns the whole buffers. Slots not written yet are masked out by
    `attention_mask`."""

    is_static = True

    def __init__(self, config, max_cache_len: int, max_batch_size: int = 1, dtype=ms.float32, **kwargs):
        nn.Cell.__init__(self)
        text = config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        self.max_cache_len, self.max_batch_size, self.dtype = max_cache_len, max_batch_size, dtype
        shape = (max_batch_size, kv_heads, max_cache_len, head_dim)
        self.keys = ms.ParameterTuple(
            Parameter(ms.Tensor(np.zeros(shape), dtype), name=f"static_cache.key.{i}", requires_grad=False)
            for i in range(text.num_hidden_layers)
        )
        self.values = ms.ParameterTuple(
            Parameter(ms.Tensor(np.zeros(shape), dtype), name=f"static_cache.value.{i}", requires_grad=False)
            for i in range(text.num_hidden_layers)
        )
        # [batch, kv_heads, 1, 2] (row, head) pairs: with the slot appended, the scatter index of each written vector
        self.row_head = ms.Tensor(np.stack(np.meshgrid(np.arange(max_batch_size), np.arange(kv_heads), indexing="ij"), -1)
                                  .reshape(max_batch_size, kv_heads, 1, 2).astype(np.int32))  # fmt: skip
        self.seen_tokens = 0  # host-side count, kept by the generation loop

    def layer_buffers(self, layer_idx: int):
        return self.keys[layer_idx], self.values[layer_idx]

    def update(self, key_states, value_states, layer_idx: int, cache_kwargs: Optional[dict] = None):
        """key/value_states [batch, kv_heads, seq, head_dim] go to slots cache_position[0..seq), or with a
        [batch, seq] cache_position each row to its own slots."""
        positions = cache_kwargs["cache_position"]
        batch, heads, seq, _ = key_states.shape
        slots = positions.reshape(-1, 1, seq, 1).broadcast_to((batch, heads, seq, 1))
        index = mint.cat([self.row_head.broadcast_to((batch, heads, seq, 2)), slots], dim=-1)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        ops.scatter_nd_update(keys, index, key_states)
        ops.scatter_nd_update(values, index, value_states)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_cache_shape(self) -> int:
        return self.max_cache_len

    def reset(self) -> None:
        """Forget every token: the next generate() prefills its whole input (the slots are overwritten then)."""
        self.seen_tokens = 0

    def crop(self, max_length: int) -> None:
        """Keep the first `max_length` tokens (negative: drop that many from the end); generate() continues after them."""
        if max_length < 0:
            max_length = self.seen_tokens - abs(max_length)
        self.seen_tokens = max(0, min(self.seen_tokens, max_length))

    def attention_mask(self, padding_mask, cache_position, dtype, sliding_window):
        """[batch, 1, queries, max_cache_len]: slot j is visible to the query in slot i when j <= i (and
        j > i - sliding_window for windowed layers) and the token in slot j is not padding (`padding_mask` covers
        all max_cache_len slots). A [batch, seq] cache_position gives each row its own query slots."""
        slots = arange(self.max_cache_len).reshape(1, 1, 1, -1)
        queries = cache_position.reshape(cache_position.shape[0] if cache_position.ndim == 2 else 1, 1, -1, 1)
        visible = slots <= queries
        if sliding_window is not None:
            visible = mint.logical_and(visible, slots > queries - sliding_window)
        visible = mint.logical_and(visible, padding_mask.astype(ms.bool_).reshape(padding_mask.shape[0], 1, 1, -1))
        return mint.where(visible, ms.Tensor(0.0, dtype), ms.Tensor(dtype_min(dtype), dtype))

    def reorder_cache(self, beam_idx: ms.Tensor) -> None:
        """Select batch rows (beam search), in place."""
        for buffer in tuple(self.keys) + tuple(self.values):
            ops.assign(buffer, ops.gather(buffer, beam_idx, 0))
