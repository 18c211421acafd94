"""The model math as plain MindSpore ops: what runs where no fused kernel applies, and the reference every fused
kernel is tested against."""

import mindspore as ms
import numpy as np
from mindspore import mint, ops


def cast(x, dtype):
    """astype that costs no kernel launch when the dtype already matches (most casts in fp32 runs)."""
    return x if x.dtype == dtype else x.astype(dtype)


def expand_as(x: ms.Tensor, like: ms.Tensor) -> ms.Tensor:
    """`x` broadcast to `like`'s shape, for an elementwise op with `like`. The CPU Mul/Add kernels of a compiled
    graph keep two index tables the size of their output (16 bytes per element, never freed) whenever they
    broadcast implicitly; with equal shapes they keep none. Prefill at batch 8 x 128 tokens: +4.3 GB -> +1.4 GB."""
    return x.broadcast_to(like.shape)


def rms_norm(hidden_states, weight, eps: float, unit_offset: bool):
    """Normalises in float32, then scales by `weight` in the input dtype (Llama's order of casts). With
    `unit_offset` (Gemma) the scale is (1 + weight), applied in float32 before casting back."""
    input_dtype = hidden_states.dtype
    hidden_states = cast(hidden_states, ms.float32)
    variance = mint.mean(hidden_states * hidden_states, -1, keepdim=True)
    hidden_states = hidden_states * expand_as(mint.rsqrt(variance + eps), hidden_states)
    if unit_offset:
        scale = expand_as(1.0 + cast(weight, ms.float32), hidden_states)
        return cast(hidden_states * scale, input_dtype)
    hidden_states = cast(hidden_states, input_dtype)
    return expand_as(weight, hidden_states) * hidden_states


def rotate_half_matrix(dim: int, dtype, rotary_dim=None) -> ms.Tensor:
    """R with x @ R == rotate_half(x) == cat(-x2, x1) for x = cat(x1, x2): one kernel instead of two slices, a
    negation and a concat per tensor (entries are 0 and ±1, so the product is exact). Only the first `rotary_dim`
    dimensions rotate (partial rotary); the rest map to zero, where sin is 0 anyway."""
    half = (rotary_dim or dim) // 2
    matrix = np.zeros((dim, dim), np.float32)
    matrix[np.arange(half) + half, np.arange(half)] = -1.0
    matrix[np.arange(half), np.arange(half) + half] = 1.0
    return ms.Tensor(matrix, dtype)


def rotate(x, cos, sin, rotation):
    """x * cos + rotate_half(x) * sin on [batch, heads, seq, head_dim]; cos, sin: [batch, 1, seq, head_dim]."""
    return x * expand_as(cos, x) + mint.matmul(x, rotation) * expand_as(sin, x)


def attention(query, key, value, attention_mask, scaling: float, softcap=None):
    """softmax(q k^T * scaling + mask) v with the softmax in float32; returns [batch, seq, heads, head_dim].

    Grouped-query attention folds the query heads that share a key/value head into the sequence axis instead of
    copying the cache for each of them (query head h reads key/value head h // group, as in HF's repeat_kv)."""
    batch, heads, seq, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    grouped = query.reshape(batch, kv_heads, group * seq, head_dim)
    scores = mint.matmul(grouped, key.swapaxes(2, 3)) * scaling
    if softcap is not None:
        scores = mint.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores.reshape(batch, kv_heads, group, seq, kv_len)
        scores = scores + expand_as(attention_mask.expand_dims(2), scores)
    probs = mint.softmax(cast(scores.reshape(batch, kv_heads, group * seq, kv_len), ms.float32), dim=-1)
    output = mint.matmul(cast(probs, value.dtype), value)
    return output.reshape(batch, heads, seq, head_dim).swapaxes(1, 2)


def dequantize(cell, ids=None) -> ms.Tensor:
    """The float32 weight [N, K] of a quantization.linear.QuantizedCell, or only its rows `ids` ([..., K]):
    scale * q for int8, scale * q + offset for 4-bit (a group's 16 bytes hold values 0-15 in their low nibbles,
    16-31 in their high ones), rounded as the kernels round them."""
    def rows(param):
        return param if ids is None else ops.gather(param, ids, 0)

    scales = rows(cell.weight_scales)
    lead, groups = scales.shape[:-1], scales.shape[-1]
    scales = scales.reshape(-1, groups, 1)
    if cell.bits == 8:
        values = rows(cell.weight_values).astype(ms.float32).reshape(-1, groups, cell.group)
        return (values * scales).reshape(*lead, groups * cell.group)
    halves = rows(cell.weight_packed).astype(ms.int32).reshape(-1, groups, 1, 16)
    q = ops.concat([halves % 16, halves // 16], 2).astype(ms.float32).reshape(-1, groups, 32)
    offsets = rows(cell.weight_offsets).reshape(-1, groups, 1)
    return (q * scales + offsets).reshape(*lead, groups * 32)
