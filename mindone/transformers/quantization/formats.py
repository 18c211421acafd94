"""The two weight formats of quantized layers, and GGUF's block types mapped into them without loss.

Int8Groups: int8 values [N, K] and one float32 scale per group of `group` values along K: w = scale * q.
Int4Groups: 4-bit values, two per byte [N, K / 2], with a float32 scale and offset per group of 32: w = scale * q
+ offset. Within a group's 16 bytes the low nibbles hold values 0-15 and the high nibbles values 16-31 (GGUF's
Q4_0 layout), so that one 16-byte load unpacks into two 16-lane vectors.

GGUF types map exactly: Q8_0 and Q5_0 are int8 with groups of 32, Q6_K int8 with groups of 16 (scale = d * the
sub-block's scale), Q4_0 (offset -8 d), Q4_1 (offset m) and Q4_K (scale d * sc, offset -dmin * m) are 4-bit with
groups of 32. `dequantize` computes each weight with the same float32 operations as gguf's own dequantizer
(scale * q, then + offset), so the float32 weights are bit for bit the ones a dequantized load gives."""

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType
from gguf.quants import Q4_K

GROUP4 = 32


@dataclass
class Int8Groups:
    values: np.ndarray  # int8 [N, K]
    scales: np.ndarray  # float32 [N, K / group]
    group: int

    @property
    def shape(self) -> tuple:
        return self.values.shape

    def dequantize(self) -> np.ndarray:
        return np.repeat(self.scales, self.group, axis=-1) * self.values.astype(np.float32)

    def map_rows(self, fn) -> "Int8Groups":
        """The same weight with `fn` (a reordering of rows) applied to every row-indexed array."""
        return Int8Groups(fn(self.values), fn(self.scales), self.group)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.scales.nbytes


@dataclass
class Int4Groups:
    packed: np.ndarray  # uint8 [N, K / 2]
    scales: np.ndarray  # float32 [N, K / 32]
    offsets: np.ndarray  # float32 [N, K / 32]

    @property
    def shape(self) -> tuple:
        return self.packed.shape[0], self.packed.shape[1] * 2

    def map_rows(self, fn) -> "Int4Groups":
        return Int4Groups(fn(self.packed), fn(self.scales), fn(self.offsets))

    def dequantize(self) -> np.ndarray:
        q = unpack4(self.packed).astype(np.float32)
        scaled = np.repeat(self.scales, GROUP4, axis=-1) * q
        return scaled + np.repeat(self.offsets, GROUP4, axis=-1)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + self.offsets.nbytes


QuantizedWeight = Union[Int8Groups, Int4Groups]


def pack4(q: np.ndarray) -> np.ndarray:
    """4-bit values [N, K] (0-15) -> [N, K / 2] bytes in the Int4Groups layout."""
    rows, cols = q.shape
    halves = q.astype(np.uint8).reshape(rows, cols // GROUP4, 2, GROUP4 // 2)
    return (halves[:, :, 0] | (halves[:, :, 1] << np.uint8(4))).reshape(rows, cols // 2)


def unpack4(packed: np.ndarray) -> np.ndarray:
    """The inverse of pack4: [N, K / 2] bytes -> uint8 values [N, K]."""
    rows, half = packed.shape
    groups = packed.reshape(rows, half * 2 // GROUP4, 1, GROUP4 // 2)
    nibbles = (groups >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & np.uint8(0x0F)
    return nibbles.reshape(rows, half * 2)


# ---------------------------------------------------------------- GGUF block types
def _f16(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column).view(np.float16).astype(np.float32)


def _blocks(raw: np.ndarray, qtype) -> np.ndarray:
    """[all blocks, bytes per block] uint8."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    return np.ascontiguousarray(raw, np.uint8).reshape(-1, type_size)


def _low_high(qs: np.ndarray, width: int) -> np.ndarray:
    """Bytes [..., width / 2] -> their low nibbles then their high nibbles [..., width]."""
    nibbles = qs[..., None, :] >> np.array([0, 4], np.uint8).reshape(2, 1)
    return (nibbles & np.uint8(0x0F)).reshape(*qs.shape[:-1], width)


def _q8_0(blocks):
    return blocks[:, 2:].view(np.int8), _f16(blocks[:, :2])


def _q5_0(blocks):
    qh = np.ascontiguousarray(blocks[:, 2:6]).view(np.uint32).reshape(-1, 1) >> np.arange(32, dtype=np.uint32)
    q = _low_high(blocks[:, 6:], 32) | ((qh & np.uint32(1)).astype(np.uint8) << np.uint8(4))
    return q.astype(np.int8) - np.int8(16), _f16(blocks[:, :2])


def _q6_k(blocks):
    n = blocks.shape[0]
    ql, qh = blocks[:, : QK_K // 2], blocks[:, QK_K // 2 : QK_K // 2 + QK_K // 4]
    sub_scales = blocks[:, QK_K // 2 + QK_K // 4 : QK_K // 2 + QK_K // 4 + QK_K // 16].view(np.int8).astype(np.float32)
    d = _f16(blocks[:, -2:])
    low = (ql.reshape(n, -1, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & np.uint8(0x0F)
    high = (qh.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & np.uint8(0x03)
    q = (low.reshape(n, -1, 32) | (high.reshape(n, -1, 32) << np.uint8(4))).astype(np.int8) - np.int8(32)
    return q.reshape(n, QK_K), (d * sub_scales).reshape(n, QK_K // 16)


def _q4_0(blocks):
    d = _f16(blocks[:, :2])
    return _low_high(blocks[:, 2:], 32), d, d * np.float32(-8)


def _q4_1(blocks):
    return _low_high(blocks[:, 4:], 32), _f16(blocks[:, :2]), _f16(blocks[:, 2:4])


def _q4_k(blocks):
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, m = Q4_K.get_scale_min(blocks[:, 4 : 4 + Q4_K.K_SCALE_SIZE])
    q = _low_high(blocks[:, 4 + Q4_K.K_SCALE_SIZE :].reshape(n, 4, 32), 64).reshape(n, QK_K)
    return q, d * sc.astype(np.float32), -(dmin * m.astype(np.float32))


_INT8 = {GGMLQuantizationType.Q8_0: (_q8_0, 32), GGMLQuantizationType.Q5_0: (_q5_0, 32),
         GGMLQuantizationType.Q6_K: (_q6_k, 16)}  # fmt: skip
_INT4 = {GGMLQuantizationType.Q4_0: _q4_0, GGMLQuantizationType.Q4_1: _q4_1, GGMLQuantizationType.Q4_K: _q4_k}
SUPPORTED_GGUF_TYPES = tuple(_INT8) + tuple(_INT4)


def from_gguf(raw: np.ndarray, qtype, shape: tuple) -> Optional[QuantizedWeight]:
    """The quantized weight [N, K] (`shape`, rows first) held by a GGUF tensor's raw blocks, or None for a type
    the formats do not cover."""
    rows, cols = shape
    blocks = _blocks(raw, qtype)
    if qtype in _INT8:
        parse, group = _INT8[qtype]
        values, scales = parse(blocks)
        return Int8Groups(values.reshape(rows, cols).copy(), scales.reshape(rows, cols // group).copy(), group)
    if qtype in _INT4:
        q, scales, offsets = _INT4[qtype](blocks)
        groups = cols // GROUP4
        return Int4Groups(pack4(q.reshape(rows, cols)), scales.reshape(rows, groups).copy(), offsets.reshape(rows, groups).copy())
    return None
