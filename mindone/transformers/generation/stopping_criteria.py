"""Stopping criteria: callables `(input_ids, scores) -> [batch] bool tensor`, True where a row is done."""

from typing import Union

import mindspore as ms
import numpy as np
from mindspore import mint


class StoppingCriteria:
    def __call__(self, input_ids: ms.Tensor, scores: ms.Tensor, **kwargs) -> ms.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


class MaxLengthCriteria(StoppingCriteria):
    def __init__(self, max_length: int, max_position_embeddings=None):
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings

    def __call__(self, input_ids, scores, **kwargs):
        done = input_ids.shape[-1] >= self.max_length
        return ms.Tensor(np.full((input_ids.shape[0],), done))


class EosTokenCriteria(StoppingCriteria):
    def __init__(self, eos_token_id: Union[int, list, ms.Tensor]):
        ids = eos_token_id.asnumpy() if isinstance(eos_token_id, ms.Tensor) else eos_token_id
        self.eos_token_id = ms.Tensor(np.atleast_1d(np.asarray(ids, dtype=np.int64)).reshape(1, -1))

    def __call__(self, input_ids, scores, **kwargs):
        last = input_ids[:, -1:].astype(ms.int64)
        return (last == self.eos_token_id).any(axis=-1)


class StoppingCriteriaList(list):
    def __call__(self, input_ids, scores, **kwargs) -> ms.Tensor:
        done = mint.zeros((input_ids.shape[0],), dtype=ms.bool_)
        for criteria in self:
            done = mint.logical_or(done, criteria(input_ids, scores, **kwargs))
        return done

    @property
    def max_length(self):
        for criteria in self:
            if isinstance(criteria, MaxLengthCriteria):
                return criteria.max_length
        return None
