"""Logits processors and warpers over [batch, vocab] float32 MindSpore tensors, with Hugging Face's names,
arguments and semantics. Each is a callable `(input_ids, scores) -> scores`."""

import mindspore as ms
from mindspore import mint, ops

from .. import backend

NEG_INF = float("-inf")


class LogitsProcessor:
    def __call__(self, input_ids: ms.Tensor, scores: ms.Tensor) -> ms.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


class LogitsProcessorList(list):
    def __call__(self, input_ids: ms.Tensor, scores: ms.Tensor, **kwargs) -> ms.Tensor:
        for processor in self:
            scores = processor(input_ids, scores, **kwargs) if kwargs else processor(input_ids, scores)
        return scores


def _mask_fill(scores, remove, value: float = NEG_INF):
    return mint.where(remove, ms.Tensor(value, scores.dtype), scores)


class TemperatureLogitsWarper(LogitsProcessor):
    def __init__(self, temperature: float):
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"`temperature` (={temperature}) has to be a strictly positive float.")
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores):
        return scores / self.temperature


class TopKLogitsWarper(LogitsProcessor):
    """Keeps the `top_k` highest scores (ties with the k-th kept too)."""

    def __init__(self, top_k: int, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"`top_k` has to be a strictly positive integer, but is {top_k}")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids, scores):
        k = min(self.top_k, scores.shape[-1])
        kth_best = ops.top_k(scores, k)[0][..., -1:]
        return _mask_fill(scores, scores < kth_best, self.filter_value)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus filtering: keeps the smallest set of most likely tokens whose probability reaches `top_p`."""

    def __init__(self, top_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        top_p = float(top_p)
        if top_p < 0 or top_p > 1.0:
            raise ValueError(f"`top_p` has to be a float > 0 and < 1, but is {top_p}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep}")
        self.top_p, self.filter_value, self.min_tokens_to_keep = top_p, filter_value, min_tokens_to_keep

    def __call__(self, input_ids, scores):
        sorted_logits, sorted_indices = ops.sort(scores, axis=-1, descending=False)
        cumulative = backend.cumsum(mint.softmax(sorted_logits, dim=-1), -1)
        remove_sorted = cumulative <= (1 - self.top_p)
        keep_tail = backend.arange(scores.shape[-1]) >= scores.shape[-1] - self.min_tokens_to_keep
        remove_sorted = mint.logical_and(remove_sorted, mint.logical_not(keep_tail))
        remove_sorted = remove_sorted.astype(ms.int32)
        remove = ops.tensor_scatter_elements(ops.zeros_like(remove_sorted), sorted_indices, remove_sorted, axis=-1)
        remove = remove.astype(ms.bool_)
        return _mask_fill(scores, remove, self.filter_value)
