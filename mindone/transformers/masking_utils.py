"""Additive attention masks: 0 where a query may attend a key, the dtype's minimum where it may not."""

from typing import Optional

import mindspore as ms
from mindspore import mint

from .backend import arange

def dtype_min(dtype) -> float:
    """The most negative finite value of a float dtype (written as branches: graph mode cannot index a dict by dtype)."""
    if dtype == ms.float16:
        return -65504.0
    if dtype == ms.bfloat16:
        return -3.3895313892515355e38
    return -3.4028234663852886e38


def causal_mask(
    attention_mask: Optional[ms.Tensor], query_length: int, past_length: int, dtype, sliding_window: Optional[int]
) -> ms.Tensor:
    """[batch or 1, 1, query_length, past_length + query_length] mask combining causality, padding and, with a
    `sliding_window`, the window: query i sees keys j with i - window < j <= i (HF's sliding-window overlay).

    `attention_mask` is the usual [batch, keys] 0/1 padding mask covering past and current tokens."""
    key_length = past_length + query_length
    query_positions = (arange(query_length) + past_length).reshape(query_length, 1)
    keys = arange(key_length).reshape(1, key_length)
    allowed = keys <= query_positions
    if sliding_window is not None:
        allowed = mint.logical_and(allowed, keys > query_positions - sliding_window)
    allowed = allowed.reshape(1, 1, query_length, key_length)
    if attention_mask is not None:
        padding = attention_mask[:, -key_length:].astype(ms.bool_).reshape(-1, 1, 1, key_length)
        allowed = mint.logical_and(allowed, padding)
    zero = ms.Tensor(0.0, dtype)
    return mint.where(allowed, zero, ms.Tensor(dtype_min(dtype), dtype))
