"""Weight-only round-to-nearest quantization of float weights into the internal formats, in groups of 32 values
along the input dimension (llama.cpp's Q8_0 and Q4_1 block size):

- int8: symmetric, scale = max |w| / 127 per group, q = round(w / scale) in [-127, 127];
- int4: asymmetric, w ~ scale * q + offset with q in [0, 15], q rounded to nearest; each group's scale and offset
  are the least-squares fit among a few stretches of its [min, max] range (_fit4).

Rows are quantized a block at a time so that a large table (an embedding) never needs several float32 copies of
itself in memory."""

import numpy as np

from .formats import GROUP4, Int4Groups, Int8Groups, pack4

GROUP = 32
_ROWS_PER_BLOCK = 4096


def quantize_int8(weight: np.ndarray, group: int = GROUP) -> Int8Groups:
    rows, cols = weight.shape
    values, scales = np.empty((rows, cols), np.int8), np.empty((rows, cols // group), np.float32)
    for start in range(0, rows, _ROWS_PER_BLOCK):
        block = np.asarray(weight[start : start + _ROWS_PER_BLOCK], np.float32).reshape(-1, cols // group, group)
        scale = np.abs(block).max(axis=-1) / np.float32(127)
        q = np.rint(block / np.where(scale > 0, scale, np.float32(1))[..., None])
        values[start : start + len(block)] = np.clip(q, -127, 127).reshape(len(block), cols)
        scales[start : start + len(block)] = scale
    return Int8Groups(values, scales, group)


def quantize_int4(weight: np.ndarray) -> Int4Groups:
    rows, cols = weight.shape
    groups = cols // GROUP4
    packed = np.empty((rows, cols // 2), np.uint8)
    scales, offsets = np.empty((rows, groups), np.float32), np.empty((rows, groups), np.float32)
    for start in range(0, rows, _ROWS_PER_BLOCK):
        block = np.asarray(weight[start : start + _ROWS_PER_BLOCK], np.float32).reshape(-1, GROUP4)
        q, scale, offset = _fit4(block)
        end = start + len(block) // groups
        packed[start:end] = pack4(q.reshape(end - start, cols))
        scales[start:end], offsets[start:end] = scale.reshape(end - start, groups), offset.reshape(end - start, groups)
    return Int4Groups(packed, scales, offsets)


def _fit4(groups: np.ndarray) -> tuple:
    """4-bit values, scale and offset for each row of `groups` [G, 32] with the least squared error among a few
    candidates: each stretches the group's [min, max] range onto 15 + d steps (d in -1..1), rounds every weight to
    its nearest step, then takes the scale and offset that fit those steps best (least squares). Against plain
    min/max rounding this leaves ~27% less squared error (Gemma 3 270M's layers), which is what keeps int4 usable
    on small models."""
    low, high = groups.min(-1, keepdims=True), groups.max(-1, keepdims=True)
    span = np.where(high > low, high - low, np.float32(1))
    n, total = np.float32(groups.shape[-1]), groups.sum(-1, keepdims=True)
    best = None
    for stretch in np.linspace(-1, 1, 5, dtype=np.float32):
        q = np.clip(np.rint((groups - low) * ((15 + stretch) / span)), 0, 15)
        q_sum, q_sq, q_w = q.sum(-1, keepdims=True), (q * q).sum(-1, keepdims=True), (q * groups).sum(-1, keepdims=True)
        det = n * q_sq - q_sum * q_sum
        fits = det > 0  # q not constant: a line through the points exists
        safe = np.where(fits, det, np.float32(1))
        scale = np.where(fits, (n * q_w - q_sum * total) / safe, np.float32(0))
        offset = np.where(fits, (q_sq * total - q_sum * q_w) / safe, low)
        error = np.square(scale * q + offset - groups).sum(-1, keepdims=True)
        if best is None:
            best = [q, scale, offset, error]
            continue
        better = error < best[3]
        best = [np.where(better, new, old) for new, old in zip((q, scale, offset, error), best)]
    q, scale, offset, _ = best
    return q.astype(np.uint8), scale.astype(np.float32), offset.astype(np.float32)


def quantize(weight: np.ndarray, bits: int):
    """`weight` [N, K] (K a multiple of 32) as Int8Groups (bits=8) or Int4Groups (bits=4)."""
    return quantize_int8(weight) if bits == 8 else quantize_int4(weight)
