"""The quantized weight formats and their kernels: every GGUF block type maps into them bit for bit (gguf's own
numpy dequantizer is the reference), and the quantized linear kernels give exactly the float kernel's outputs on
the dequantized weights."""

import mindspore as ms
import numpy as np
import pytest
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

from mindone.transformers import kernels
from mindone.transformers.quantization import Int4Groups, Int8Groups, from_gguf, pack4, unpack4

RNG = np.random.default_rng(11)
QUANTIZABLE = [GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q4_0,
               GGMLQuantizationType.Q4_1]  # fmt: skip
K_QUANTS = [GGMLQuantizationType.Q6_K, GGMLQuantizationType.Q4_K]
FORMAT = {GGMLQuantizationType.Q8_0: Int8Groups, GGMLQuantizationType.Q5_0: Int8Groups,
          GGMLQuantizationType.Q6_K: Int8Groups, GGMLQuantizationType.Q4_0: Int4Groups,
          GGMLQuantizationType.Q4_1: Int4Groups, GGMLQuantizationType.Q4_K: Int4Groups}  # fmt: skip


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(-1, 2)


def k_quant_blocks(qtype, rows: int, cols: int) -> np.ndarray:
    """Random blocks of a k-quant type (gguf cannot quantize to them) with finite, model-like scales."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = RNG.integers(0, 256, size=(rows, cols // block_size * type_size), dtype=np.uint8)
    blocks = raw.reshape(-1, type_size)
    if qtype == GGMLQuantizationType.Q6_K:
        blocks[:, -2:] = _f16_bytes(RNG.standard_normal(len(blocks)) * 0.01)
    else:
        blocks[:, :2] = _f16_bytes(RNG.standard_normal(len(blocks)) * 0.01)
        blocks[:, 2:4] = _f16_bytes(np.abs(RNG.standard_normal(len(blocks))) * 0.01)
    return raw


def gguf_raw(qtype, rows: int, cols: int) -> np.ndarray:
    """A [rows, cols] weight as GGUF blocks of `qtype`."""
    if qtype in K_QUANTS:
        return k_quant_blocks(qtype, rows, cols)
    return quantize(RNG.standard_normal((rows, cols)).astype(np.float32), qtype)


@pytest.mark.parametrize("qtype", QUANTIZABLE + K_QUANTS, ids=lambda t: t.name)
def test_every_gguf_block_type_maps_bit_for_bit(qtype):
    rows, cols = 7, 512
    raw = gguf_raw(qtype, rows, cols)
    weight = from_gguf(raw, qtype, (rows, cols))
    assert isinstance(weight, FORMAT[qtype]) and weight.shape == (rows, cols)
    expected = dequantize(raw, qtype)
    assert weight.dequantize().dtype == np.float32 and np.array_equal(weight.dequantize(), expected)
    assert weight.nbytes <= expected.nbytes * (0.32 if isinstance(weight, Int8Groups) else 0.19)  # scales included


def test_types_the_formats_do_not_cover_are_left_to_dequantization():
    raw = RNG.integers(0, 256, size=(2, 256 // 256 * 176), dtype=np.uint8)
    assert from_gguf(raw, GGMLQuantizationType.Q5_K, (2, 256)) is None


def test_pack4_and_unpack4_are_inverse():
    q = RNG.integers(0, 16, size=(3, 96)).astype(np.uint8)
    packed = pack4(q)
    assert packed.shape == (3, 48) and np.array_equal(unpack4(packed), q)
    assert np.array_equal(packed[0, :16] & 15, q[0, :16]) and np.array_equal(packed[0, :16] >> 4, q[0, 16:32])


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_real_gguf_tensors_map_bit_for_bit(which, request):
    """One tensor of each covered type in the real checkpoints (SmolLM2: Q4_1 and Q8_0; Gemma 3 270M Q4_K_M: Q4_K,
    Q5_0, Q6_K, Q8_0)."""
    reader = GGUFReader(request.getfixturevalue(f"{which}_gguf"))
    seen = {}
    for tensor in reader.tensors:
        if tensor.tensor_type in FORMAT and tensor.tensor_type not in seen and len(tensor.shape) == 2:
            seen[tensor.tensor_type] = tensor
    assert set(seen) >= ({GGMLQuantizationType.Q4_1} if which == "smollm2" else set(K_QUANTS) | {GGMLQuantizationType.Q5_0})
    for qtype, tensor in seen.items():
        cols, rows = (int(n) for n in tensor.shape)
        weight = from_gguf(np.asarray(tensor.data), qtype, (rows, cols))
        expected = dequantize(np.asarray(tensor.data), qtype).reshape(rows, cols)
        assert np.array_equal(weight.dequantize(), expected), qtype.name


def _quantized_linear(x, weight):
    if isinstance(weight, Int8Groups):
        return kernels.QLINEAR8(x, ms.Tensor(weight.values), ms.Tensor(weight.scales))
    return kernels.QLINEAR4(x, ms.Tensor(weight.packed), ms.Tensor(weight.scales), ms.Tensor(weight.offsets))


@pytest.mark.parametrize("rows", [1, 3, 8, 11])
@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q6_K, GGMLQuantizationType.Q4_1,
                                   GGMLQuantizationType.Q4_K], ids=lambda t: t.name)  # fmt: skip
def test_quantized_linear_is_the_float_kernel_on_the_dequantized_weight(qtype, rows):
    assert kernels.available()
    out_features, in_features = 37, 512
    weight = from_gguf(gguf_raw(qtype, out_features, in_features), qtype, (out_features, in_features))
    x = ms.Tensor(RNG.standard_normal((2, rows, in_features)).astype(np.float32))
    got = _quantized_linear(x, weight)
    expected = kernels.LINEAR(x, ms.Tensor(weight.dequantize()))
    assert got.shape == (2, rows, out_features) and np.array_equal(got.asnumpy(), expected.asnumpy())
    reference = x.asnumpy() @ weight.dequantize().T  # and both are the product, to float32 rounding
    assert np.abs(got.asnumpy() - reference).max() <= 1e-4 * np.abs(reference).max()


def _qlinear4(x, packed, scales, offsets):
    return kernels.QLINEAR4(x, packed, scales, offsets)


def test_quantized_linear_inside_a_compiled_graph():
    weight = from_gguf(quantize(RNG.standard_normal((24, 64)).astype(np.float32), GGMLQuantizationType.Q4_1),
                       GGMLQuantizationType.Q4_1, (24, 64))  # fmt: skip
    x = ms.Tensor(RNG.standard_normal((1, 1, 64)).astype(np.float32))
    tensors = ms.Tensor(weight.packed), ms.Tensor(weight.scales), ms.Tensor(weight.offsets)
    compiled = ms.jit(_qlinear4)(x, *tensors)
    assert np.array_equal(compiled.asnumpy(), kernels.QLINEAR4(x, *tensors).asnumpy())


def test_quantized_linear_refuses_groups_that_do_not_divide_the_input():
    values = ms.Tensor(np.zeros((4, 96), np.int8))
    x = ms.Tensor(np.ones((1, 96), np.float32))
    with pytest.raises(RuntimeError, match="inconsistent shapes"):
        kernels.QLINEAR8(x, values, ms.Tensor(np.ones((4, 5), np.float32)))
    with pytest.raises(RuntimeError, match="inconsistent shapes"):
        kernels.QLINEAR4(x, ms.Tensor(np.zeros((4, 40), np.uint8)), ms.Tensor(np.ones((4, 3), np.float32)),
                         ms.Tensor(np.ones((4, 3), np.float32)))  # fmt: skip


@pytest.mark.parametrize("bits", [8, 4])
def test_ascend_operands_dequantize_to_the_same_weight(bits):
    """backend.weight_quant_operands lays a weight out for Ascend's WeightQuantBatchMatmul (not runnable here):
    applying that kernel's documented formula, (q + offset) * scale with q [K, N], in numpy gives our weight
    transposed, including constant groups (scale 0)."""
    from mindone.transformers import backend
    from mindone.transformers.quantization import rtn

    weight = np.random.default_rng(bits).normal(size=(6, 64)).astype(np.float32)
    weight[2, 32:] = 0.25  # a constant group
    quantized = rtn.quantize(weight, bits)
    q, scale, offset = backend.weight_quant_operands(quantized, ms.float32)
    if bits == 4:
        assert q.shape == (64, 3) and q.dtype == np.uint8
        nibbles = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(64, 6).astype(np.int8)
        q = np.where(nibbles > 7, nibbles - 16, nibbles)  # two's complement 4-bit, low nibble first
    group = 64 // scale.shape[0]
    scale, offset = np.repeat(scale, group, axis=0), 0 if offset is None else np.repeat(offset, group, axis=0)
    assert np.allclose((q.astype(np.float32) + offset) * scale, quantized.dequantize().T, rtol=1e-6, atol=1e-6)


def test_on_ascend_a_quantized_linear_holds_the_kernel_operands_instead_of_ours(monkeypatch):
    """Built as on Ascend (the kernel call itself needs the device): the operands replace our arrays, except in a
    tied head, whose embedding still gathers rows from ours."""
    from mindone.transformers import backend
    from mindone.transformers.quantization import rtn
    from mindone.transformers.quantization.linear import QuantizedEmbedding, QuantizedLinear

    monkeypatch.setattr(backend, "quantized_kernel", lambda dtype: "ascend")
    weight = rtn.quantize(np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32), 4)
    linear = QuantizedLinear(weight, dtype=ms.float16)
    names = {name.rpartition(".")[2] for name, _ in linear.parameters_and_names()}
    assert names == {"device_weight", "device_scale", "device_offset"} and linear.device_weight.dtype == ms.qint4x2
    assert linear.device_weight.shape == (64, 4) and linear.device_scale.dtype == ms.float16
    head = QuantizedLinear(None, None, ms.float16, tied_to=QuantizedEmbedding(weight))
    assert {"weight_packed", "device_weight"} <= {name.rpartition(".")[2] for name, _ in head.parameters_and_names()}
