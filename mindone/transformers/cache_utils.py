"""Key/value caches with Hugging Face's Cache API: tensors are [batch, kv_heads, seq, head_dim] per layer."""

from typing import Optional

import mindspore as ms
from mindspore import mint, ops


class Cache:
    """Interface shared by the caches: `update` stores new states for a layer and returns everything cached."""

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
