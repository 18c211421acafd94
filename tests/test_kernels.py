"""The fused CPU kernels against the composed MindSpore ops they replace (float32 within 1e-5), in PyNative and
inside compiled graphs, and the build: one warning and the composed ops without a compiler or after a compile
error, MINDONE_FUSED_KERNELS=0, a corrupt cached library rebuilt, two processes building at once."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import ops

from mindone.transformers import composed, kernels
from mindone.transformers.kernels import builder

RNG = np.random.default_rng(0)
F32_MIN = float(np.finfo(np.float32).min)



@pytest.fixture(autouse=True, scope="module")
def built():
    assert kernels.available(), "the kernels must build here: g++ is on every machine of this project"


def tensor(array, dtype=ms.float32):
    return ms.Tensor(np.asarray(array, np.float32), dtype)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def max_error(a, b) -> float:
    return float(np.abs(a.astype(ms.float32).asnumpy() - b.astype(ms.float32).asnumpy()).max())


# ---------------------------------------------------------------- norms
@pytest.mark.parametrize("unit_offset", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 576), (3, 5, 37), (2, 64)])
def test_rms_norm_and_add_rms_norm(shape, unit_offset):
    x, residual, weight = tensor(randn(*shape)), tensor(randn(*shape)), tensor(randn(shape[-1]))
    config = kernels.config(1e-5, unit_offset)
    assert max_error(kernels.RMS_NORM(x, weight, config), composed.rms_norm(x, weight, 1e-5, unit_offset)) <= 1e-5
    total, normed = kernels.ADD_RMS_NORM(x, residual, weight, config)
    assert max_error(total, x + residual) == 0.0
    assert max_error(normed, composed.rms_norm(x + residual, weight, 1e-5, unit_offset)) <= 1e-5


def test_rms_norm_float16():
    x, weight = tensor(randn(4, 96), ms.float16), tensor(randn(96), ms.float16)
    fused = kernels.RMS_NORM(x, weight, kernels.config(1e-6, 0))
    assert fused.dtype == ms.float16
    assert max_error(fused, composed.rms_norm(x, weight, 1e-6, False)) <= 4e-3  # one fp16 rounding apart


@pytest.mark.parametrize("shape", [(1, 1, 768), (2, 7, 33)])
def test_layer_norm_and_add_layer_norm(shape):
    x, residual = tensor(randn(*shape)), tensor(randn(*shape))
    weight, bias = tensor(randn(shape[-1])), tensor(randn(shape[-1]))
    reference = ops.LayerNorm(-1, -1, 1e-5)
    eps = kernels.config(1e-5)
    assert max_error(kernels.LAYER_NORM(x, weight, bias, eps), reference(x, weight, bias)[0]) <= 1e-5
    total, normed = kernels.ADD_LAYER_NORM(x, residual, weight, bias, eps)
    assert max_error(total, x + residual) == 0.0 and max_error(normed, reference(x + residual, weight, bias)[0]) <= 1e-5


# ---------------------------------------------------------------- matrix products
SHAPES = [(1, 37, 37), (1, 1536, 576), (2, 100, 576), (3, 9, 40), (5, 33, 17), (8, 1536, 576), (8, 576, 1536)]


def _relative(fused, reference) -> float:
    scale = max(1.0, float(np.abs(reference.asnumpy()).max()))
    return max_error(fused, reference) / scale


@pytest.mark.parametrize("rows, out_features, in_features", SHAPES)
def test_linear(rows, out_features, in_features):
    x, weight, bias = tensor(randn(rows, in_features)), tensor(randn(out_features, in_features)), tensor(randn(out_features))
    reference = ops.MatMul(transpose_b=True)(x, weight)
    assert _relative(kernels.LINEAR(x, weight), reference) <= 1e-6
    assert _relative(kernels.LINEAR_BIAS(x, weight, bias), reference + bias) <= 1e-6
    x3 = x.reshape(1, rows, in_features)
    assert kernels.LINEAR(x3, weight).shape == (1, rows, out_features)


ACTIVATIONS = {"silu": (0, ops.silu), "gelu_tanh": (1, lambda g: ops.gelu(g, "tanh")), "gelu": (2, lambda g: ops.gelu(g, "none")),
               "relu": (3, ops.relu)}  # fmt: skip


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("rows, out_features, in_features", SHAPES[:5])
def test_mlp(rows, out_features, in_features, activation):
    code, act = ACTIVATIONS[activation]
    x = tensor(randn(rows, in_features) * 0.3)
    gate, up = tensor(randn(out_features, in_features) * 0.3), tensor(randn(out_features, in_features) * 0.3)
    down = tensor(randn(in_features + 3, out_features) * 0.3)
    matmul = ops.MatMul(transpose_b=True)
    reference = matmul(act(matmul(x, gate)) * matmul(x, up), down)
    config = kernels.config(code)
    assert _relative(kernels.MLP(x, gate, up, down, config), reference) <= 1e-5
    packed = ms.Tensor(np.concatenate([gate.asnumpy(), up.asnumpy()]))
    assert _relative(kernels.MLP_PACKED(x, packed, down, config), reference) <= 1e-5


@pytest.mark.parametrize("bias", [False, True])
def test_qkv(bias):
    x = tensor(randn(3, 40))
    weights, biases = [tensor(randn(n, 40)) for n in (48, 16, 16)], [tensor(randn(n)) for n in (48, 16, 16)]
    outputs = kernels.QKV_BIAS(x, *weights, *biases) if bias else kernels.QKV(x, *weights)
    for out, weight, b in zip(outputs, weights, biases):
        reference = ops.MatMul(transpose_b=True)(x, weight) + (b if bias else 0)
        assert out.shape == reference.shape and _relative(out, reference) <= 1e-6


# More than 8 rows: the blocked GEMM (csrc/gemm.h), odd sizes (edges of its 14-row tiles and 32-output panels).
MANY_ROWS = [(9, 23, 37), (17, 50, 100), (333, 1000, 577), (29, 16, 64), (64, 33, 200)]


@pytest.mark.parametrize("rows, out_features, in_features", MANY_ROWS)
def test_many_rows_linear_qkv_mlp(rows, out_features, in_features):
    x, weight, bias = tensor(randn(rows, in_features)), tensor(randn(out_features, in_features)), tensor(randn(out_features))
    matmul = ops.MatMul(transpose_b=True)
    reference = matmul(x, weight)
    assert _relative(kernels.LINEAR(x, weight), reference) <= 1e-6
    assert _relative(kernels.LINEAR_BIAS(x.reshape(1, rows, -1), weight, bias).reshape(rows, -1), reference + bias) <= 1e-6
    weights = [weight, tensor(randn(out_features // 2 + 1, in_features)), tensor(randn(7, in_features))]
    for out, w in zip(kernels.QKV(x, *weights), weights):
        assert _relative(out, matmul(x, w)) <= 1e-6
    gate, up = tensor(randn(out_features, in_features) * 0.3), tensor(randn(out_features, in_features) * 0.3)
    down = tensor(randn(in_features + 3, out_features) * 0.3)
    for activation, (code, act) in ACTIVATIONS.items():
        expected = matmul(act(matmul(x * 0.3, gate)) * matmul(x * 0.3, up), down)
        assert _relative(kernels.MLP(x * 0.3, gate, up, down, kernels.config(code)), expected) <= 1e-5, activation


def test_many_rows_float16():
    x, weight, bias = tensor(randn(21, 70), ms.float16), tensor(randn(45, 70), ms.float16), tensor(randn(45), ms.float16)
    fused = kernels.LINEAR_BIAS(x, weight, bias)
    assert fused.dtype == ms.float16
    reference = ops.MatMul(transpose_b=True)(x.astype(ms.float32), weight.astype(ms.float32)) + bias.astype(ms.float32)
    assert _relative(fused, reference) <= 1e-3


def test_many_rows_products_do_not_depend_on_the_rows_around_them():
    """Each output is one accumulation over k in order: a row gives the same bits alone in a block of 9 rows as in
    a prompt of 300 (the packed and unpacked layers of a model must agree exactly)."""
    x, weight = tensor(randn(300, 96)), tensor(randn(40, 96))
    whole = kernels.LINEAR(x, weight).asnumpy()
    assert np.array_equal(kernels.LINEAR(x[150:159].contiguous(), weight).asnumpy(), whole[150:159])


def test_linear_float16():
    x, weight = tensor(randn(2, 64), ms.float16), tensor(randn(48, 64), ms.float16)
    fused = kernels.LINEAR(x, weight)
    assert fused.dtype == ms.float16
    assert _relative(fused, ops.MatMul(transpose_b=True)(x.astype(ms.float32), weight.astype(ms.float32))) <= 1e-3


def test_eager_calls_read_views_as_their_values():
    """In PyNative a slice or a transpose is a view of another tensor's buffer; the kernels see its values."""
    hidden, weight = tensor(randn(2, 9, 32)), tensor(randn(7, 32))
    last = hidden[:, -1:]  # a strided view
    reference = ops.MatMul(transpose_b=True)(last.reshape(2, 32).contiguous(), weight).reshape(2, 1, 7)
    assert max_error(kernels.LINEAR(last, weight), reference) <= 1e-6
    transposed = tensor(randn(4, 6)).swapaxes(0, 1)
    assert max_error(kernels.RMS_NORM(transposed, tensor(np.ones(4)), kernels.config(1e-6, 0)),
                     composed.rms_norm(transposed.contiguous(), tensor(np.ones(4)), 1e-6, False)) <= 1e-6  # fmt: skip


def test_an_in_place_kernel_refuses_a_view_of_its_buffer():
    case = Case(seq=1, start=4)
    keys = ms.Parameter(case.t(np.concatenate([case.k_cache, case.k_cache], 2)), name="wide")
    view = keys[:, :, : case.slots]
    with pytest.raises(RuntimeError, match="writes its inputs in place"):
        kernels.CACHED_ATTENTION(case.t(case.q), case.t(case.k), case.t(case.v), case.t(case.cos), case.t(case.sin),
                                 case.t(case.q_norm), case.t(case.k_norm), view, view, ms.Tensor(case.positions),
                                 case.t(case.mask), case.config)  # fmt: skip


# ---------------------------------------------------------------- attention
class Case:
    """Projections, rotary tables, caches and masks for one attention call, and the composed ops' answer."""

    def __init__(self, batch=2, seq=5, heads=6, kv_heads=2, head_dim=16, slots=24, start=7, scaling=0.25, softcap=None,
                 rotary_dim=16, norm_eps=0.0, unit_offset=False, window=None, padding=(0, 3), dtype=ms.float32):  # fmt: skip
        settings = dict(locals())
        settings.pop("self")
        self.__dict__.update(settings)
        d = head_dim
        self.q, self.k, self.v = randn(batch, seq, heads * d), randn(batch, seq, kv_heads * d), randn(batch, seq, kv_heads * d)
        angles = randn(batch, 1, seq, d) * 3
        self.cos, self.sin = np.cos(angles), np.sin(angles)
        self.cos[..., rotary_dim:], self.sin[..., rotary_dim:] = 1.0, 0.0
        self.q_norm, self.k_norm = randn(d), randn(d)
        self.k_cache, self.v_cache = randn(batch, kv_heads, slots, d), randn(batch, kv_heads, slots, d)
        self.positions = np.arange(start, start + seq, dtype=np.int32)
        visible = np.arange(slots)[None, :] <= self.positions[:, None]
        if window is not None:
            visible &= np.arange(slots)[None, :] > self.positions[:, None] - window
        visible = np.broadcast_to(visible, (batch, seq, slots)).copy()
        for row, pad in enumerate(padding):
            visible[row, :, :pad] = False
        self.mask = np.where(visible, 0.0, F32_MIN).astype(np.float32)[:, None]
        self.config = kernels.config(scaling, softcap or 0.0, rotary_dim, norm_eps, unit_offset, False, heads, kv_heads)

    def t(self, array):
        return tensor(array, self.dtype)

    def _heads(self, x, n):
        return self.t(x).reshape(self.batch, self.seq, n, self.head_dim).swapaxes(1, 2)

    def rotated(self):
        q, k = self._heads(self.q, self.heads), self._heads(self.k, self.kv_heads)
        if self.norm_eps:
            q = composed.rms_norm(q, self.t(self.q_norm), self.norm_eps, self.unit_offset)
            k = composed.rms_norm(k, self.t(self.k_norm), self.norm_eps, self.unit_offset)
        if self.rotary_dim:
            rotation = composed.rotate_half_matrix(self.head_dim, self.dtype, self.rotary_dim)
            cos, sin = self.t(self.cos), self.t(self.sin)
            q, k = composed.rotate(q, cos, sin, rotation), composed.rotate(k, cos, sin, rotation)
        return q, k

    def reference(self):
        """(output [B, S, H * D], key cache, value cache) by the composed ops."""
        q, k = self.rotated()
        keys, values = self.k_cache.copy(), self.v_cache.copy()
        keys[:, :, self.positions] = k.astype(ms.float32).asnumpy()
        values[:, :, self.positions] = self._heads(self.v, self.kv_heads).astype(ms.float32).asnumpy()
        out = composed.attention(q, self.t(keys), self.t(values), self.t(self.mask), self.scaling, self.softcap)
        return out.reshape(self.batch, self.seq, -1), keys, values

    def fused(self, packed=False):
        keys = ms.Parameter(self.t(self.k_cache), name="keys")
        values = ms.Parameter(self.t(self.v_cache), name="values")
        config = self.config
        q, k, v = self.t(self.q), self.t(self.k), self.t(self.v)
        if packed:
            q = k = v = self.t(np.concatenate([self.q, self.k, self.v], -1))
            config = kernels.config(*self.config.asnumpy()[:5], 1, *self.config.asnumpy()[6:])
        attention = kernels.CACHED_ATTENTION_PACKED if packed else kernels.CACHED_ATTENTION
        out = attention(q, k, v, self.t(self.cos), self.t(self.sin), self.t(self.q_norm), self.t(self.k_norm), keys,
                        values, ms.Tensor(self.positions), self.t(self.mask), config)  # fmt: skip
        return out, keys, values


CASES = {
    "gqa_decode": dict(seq=1, start=9),
    "gqa_prefill_padding": dict(seq=12, start=0, slots=16, padding=(0, 5)),
    "mha": dict(heads=4, kv_heads=4),
    "mqa": dict(heads=4, kv_heads=1, head_dim=64, slots=40),
    "sliding_window": dict(seq=8, start=3, window=4),
    "softcap_scaling": dict(softcap=2.0, scaling=0.1),
    "partial_rotary": dict(rotary_dim=8),
    "no_rotary": dict(rotary_dim=0),
    "qk_norm": dict(norm_eps=1e-6),
    "qk_norm_unit_offset": dict(norm_eps=1e-6, unit_offset=True),
    "head_dim_96_odd_slots": dict(head_dim=96, slots=37, rotary_dim=48),
    "fully_masked_query_row": dict(seq=3, start=0, slots=8, padding=(2, 0)),
    # 8 or more query tokens: the blocked path (score blocks of 8 rows x 48 keys, values 6 rows x 64 dimensions)
    "prompt_padding": dict(seq=40, start=0, slots=48, padding=(0, 7)),
    "prompt_mha_window": dict(heads=4, kv_heads=4, seq=33, start=2, slots=40, window=9),
    "prompt_softcap": dict(seq=20, start=4, slots=30, softcap=2.0, scaling=0.1),
    "prompt_head_dim_72": dict(head_dim=72, rotary_dim=36, seq=17, start=0, slots=21),
    "prompt_head_dim_96_fully_masked_rows": dict(head_dim=96, rotary_dim=48, seq=19, start=0, slots=23, padding=(3, 0)),
    "prompt_mqa_long": dict(heads=8, kv_heads=1, head_dim=64, seq=70, start=0, slots=80),
    "prompt_after_cached_tokens": dict(seq=9, start=30, slots=100, padding=(5, 0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cached_attention(name):
    case = Case(**CASES[name])
    expected, keys, values = case.reference()
    out, key_cache, value_cache = case.fused()
    assert max_error(out, expected) <= 1e-5
    assert np.abs(key_cache.asnumpy() - keys).max() <= 1e-5 and np.abs(value_cache.asnumpy() - values).max() == 0.0


def test_cached_attention_packed_qkv():
    case = Case(rotary_dim=8)
    expected, keys, _ = case.reference()
    out, key_cache, _ = case.fused(packed=True)
    assert out.shape == expected.shape and max_error(out, expected) <= 1e-5
    assert np.abs(key_cache.asnumpy() - keys).max() <= 1e-5


@pytest.mark.parametrize("seq", [5, 24])
def test_cached_attention_float16(seq):
    case = Case(dtype=ms.float16, seq=seq, slots=seq + 9)
    expected, _, _ = case.reference()
    out, _, _ = case.fused()
    assert out.dtype == ms.float16 and max_error(out, expected) <= 1e-2


@pytest.mark.parametrize("seq", [1, 3, 12])
def test_cached_attention_with_a_position_per_row(seq):
    """cache_position with B * S entries: each row writes its keys at its own slots and attends up to them."""
    case = Case(batch=3, seq=seq, slots=40, padding=(0, 0, 2))
    starts = np.array([0, 9, 25])
    positions = (starts[:, None] + np.arange(seq)[None, :]).astype(np.int32)
    visible = np.arange(case.slots)[None, None, :] <= positions[:, :, None]
    visible[2, :, :2] = False
    mask = np.where(visible, 0.0, F32_MIN).astype(np.float32)[:, None]
    q, k = case.rotated()
    keys, values = case.k_cache.copy(), case.v_cache.copy()
    v = case._heads(case.v, case.kv_heads).asnumpy()
    for b in range(case.batch):
        keys[b][:, positions[b]], values[b][:, positions[b]] = k.asnumpy()[b], v[b]
    expected = composed.attention(q, tensor(keys), tensor(values), tensor(mask), case.scaling, None)
    key_cache, value_cache = ms.Parameter(tensor(case.k_cache), name="k"), ms.Parameter(tensor(case.v_cache), name="v")
    out = kernels.CACHED_ATTENTION(tensor(case.q), tensor(case.k), tensor(case.v), tensor(case.cos), tensor(case.sin),
                                   tensor(case.q_norm), tensor(case.k_norm), key_cache, value_cache,
                                   ms.Tensor(positions), tensor(mask), case.config)  # fmt: skip
    assert max_error(out, expected.reshape(case.batch, seq, -1)) <= 1e-5
    assert np.abs(key_cache.asnumpy() - keys).max() <= 1e-5 and np.abs(value_cache.asnumpy() - values).max() == 0.0


@pytest.mark.parametrize("first_layer", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_attention_block(bias, packed, first_layer):
    """The input norm (with the residual add), projections, cached attention and the output projection in one
    kernel, against the composed ops."""
    case = Case(seq=2, start=6, norm_eps=1e-6, rotary_dim=8)
    hidden, q_size, kv_size = 40, case.heads * case.head_dim, case.kv_heads * case.head_dim
    x, residual, norm_weight = randn(case.batch, case.seq, hidden), randn(case.batch, case.seq, hidden), randn(hidden)
    stream = x if first_layer else x + residual
    normed = composed.rms_norm(tensor(stream), tensor(norm_weight), 1e-5, False).asnumpy()
    weights = [randn(n, hidden) * 0.2 for n in (q_size, kv_size, kv_size)]
    biases = [randn(n) if bias else np.zeros(n, np.float32) for n in (q_size, kv_size, kv_size)]
    o_weight, o_bias = randn(hidden, q_size) * 0.2, randn(hidden) if bias else np.zeros(hidden, np.float32)
    case.q, case.k, case.v = (normed @ w.T + b for w, b in zip(weights, biases))
    expected, keys, values = case.reference()
    expected = ops.MatMul(transpose_b=True)(expected.reshape(-1, q_size), tensor(o_weight)).reshape(2, 2, hidden) + tensor(o_bias)
    unused = tensor([0.0])
    if packed:
        projections = (tensor(np.concatenate(weights)), unused, unused)
        projection_biases = (tensor(np.concatenate(biases)) if bias else unused, unused, unused)
        config = kernels.config(*case.config.asnumpy()[:5], 1, *case.config.asnumpy()[6:])
    else:
        projections = tuple(tensor(w) for w in weights)
        projection_biases = tuple(tensor(b) for b in biases) if bias else (unused,) * 3
        config = case.config
    key_cache, value_cache = ms.Parameter(tensor(case.k_cache), name="k"), ms.Parameter(tensor(case.v_cache), name="v")
    stream_out, out = kernels.ATTENTION_BLOCK(
        tensor(x), unused if first_layer else tensor(residual), tensor(norm_weight), kernels.config(1e-5, 0),
        *projections, tensor(o_weight), *projection_biases, tensor(o_bias) if bias else unused, tensor(case.cos),
        tensor(case.sin), tensor(case.q_norm), tensor(case.k_norm), key_cache, value_cache, ms.Tensor(case.positions),
        tensor(case.mask), config,
    )  # fmt: skip
    assert np.abs(stream_out.asnumpy() - stream).max() == 0.0
    assert out.shape == (2, 2, hidden) and _relative(out, expected) <= 1e-5
    assert np.abs(key_cache.asnumpy() - keys).max() <= 1e-5 and np.abs(value_cache.asnumpy() - values).max() <= 1e-5


@pytest.mark.parametrize("packed", [False, True])
def test_mlp_block(packed):
    x, residual, norm_weight = tensor(randn(2, 1, 40)), tensor(randn(2, 1, 40)), tensor(randn(40))
    gate, up, down = tensor(randn(56, 40) * 0.3), tensor(randn(56, 40) * 0.3), tensor(randn(40, 56) * 0.3)
    matmul = ops.MatMul(transpose_b=True)
    normed = composed.rms_norm(x + residual, norm_weight, 1e-5, True).reshape(2, 40)
    expected = matmul(ops.silu(matmul(normed, gate)) * matmul(normed, up), down).reshape(2, 1, 40)
    norm_config, act = kernels.config(1e-5, 1), kernels.config(0)
    if packed:
        gate_up = ms.Tensor(np.concatenate([gate.asnumpy(), up.asnumpy()]))
        stream, out = kernels.MLP_BLOCK_PACKED(x, residual, norm_weight, norm_config, gate_up, down, act)
    else:
        stream, out = kernels.MLP_BLOCK(x, residual, norm_weight, norm_config, gate, up, down, act)
    assert max_error(stream, x + residual) == 0.0 and _relative(out, expected) <= 1e-5


def _packed_buffer(weights: list) -> tuple:
    """(one flat tensor holding `weights` at 8-element-aligned offsets, the WEIGHTS_LAYER layout); None entries
    are absent weights."""
    chunks, layout, offset = [], [], 0
    for weight in weights:
        if weight is None:
            layout += [-1, 0, 0]
            continue
        array = weight.asnumpy()
        padding = -offset % 8
        chunks += [np.zeros(padding, np.float32), array.reshape(-1)]
        offset += padding
        layout += [offset, array.shape[0], array.shape[1] if array.ndim == 2 else 0]
        offset += array.size
    return tensor(np.concatenate(chunks)), ms.Tensor(np.array(layout, np.int64))


@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("first_layer", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_decoder_layer_is_the_attention_block_then_the_mlp_block(packed, first_layer, extras):
    """One launch for a whole layer gives exactly what the two block kernels give one after the other, also with
    its weights read from one buffer (WEIGHTS_LAYER). `extras`: projection biases and q/k norms."""
    case = Case(seq=1, start=6, rotary_dim=8, norm_eps=1e-6 if extras else 0.0)
    hidden, q_size, kv_size, inner = 40, case.heads * case.head_dim, case.kv_heads * case.head_dim, 56
    x, residual = tensor(randn(case.batch, 1, hidden)), tensor(randn(case.batch, 1, hidden))
    unused = tensor([0.0])
    if packed:
        projections = [tensor(randn(q_size + 2 * kv_size, hidden) * 0.2), None, None]
        biases = [tensor(randn(q_size + 2 * kv_size)) if extras else None, None, None]
        config = kernels.config(*case.config.asnumpy()[:5], 1, *case.config.asnumpy()[6:])
        mlp_weights = [tensor(randn(2 * inner, hidden) * 0.3), None, tensor(randn(hidden, inner) * 0.3)]
    else:
        projections = [tensor(randn(n, hidden) * 0.2) for n in (q_size, kv_size, kv_size)]
        biases = [tensor(randn(n)) if extras else None for n in (q_size, kv_size, kv_size)]
        config = case.config
        mlp_weights = [tensor(randn(inner, hidden) * 0.3), tensor(randn(inner, hidden) * 0.3), tensor(randn(hidden, inner) * 0.3)]
    o_weight, o_bias = tensor(randn(hidden, q_size) * 0.2), tensor(randn(hidden)) if extras else None
    q_norm, k_norm = (tensor(case.q_norm), tensor(case.k_norm)) if extras else (None, None)
    input_norm, post_norm = tensor(randn(hidden)), tensor(randn(hidden))
    norm_config, act = kernels.config(1e-5, 0), kernels.config(0)

    def given(*weights):
        return [unused if w is None else w for w in weights]

    def caches():
        return ms.Parameter(tensor(case.k_cache), name="k"), ms.Parameter(tensor(case.v_cache), name="v")

    def attention_inputs(cache):
        return (x, unused if first_layer else residual, input_norm, norm_config, *given(*projections, o_weight),
                *given(*biases, o_bias), tensor(case.cos), tensor(case.sin), *given(q_norm, k_norm), *cache,
                ms.Tensor(case.positions), tensor(case.mask), config)  # fmt: skip

    mlp_inputs = (post_norm, norm_config, *[w for w in mlp_weights if w is not None], act)
    two_caches = caches()
    stream, attended = kernels.ATTENTION_BLOCK(*attention_inputs(two_caches))
    mlp = kernels.MLP_BLOCK_PACKED if packed else kernels.MLP_BLOCK
    expected_stream, expected = mlp(attended, stream, *mlp_inputs)
    results = []
    one_caches = caches()
    layer = kernels.DECODER_LAYER_PACKED if packed else kernels.DECODER_LAYER
    results.append((layer(*attention_inputs(one_caches), *mlp_inputs), one_caches))
    buffer_caches = caches()
    weights, layout = _packed_buffer([input_norm, *projections, o_weight, *biases, o_bias, q_norm, k_norm, post_norm,
                                      *mlp_weights])  # fmt: skip
    results.append((kernels.WEIGHTS_LAYER(x, unused if first_layer else residual, weights, layout, norm_config,
                                          norm_config, act, config, tensor(case.cos), tensor(case.sin), *buffer_caches,
                                          ms.Tensor(case.positions), tensor(case.mask)), buffer_caches))  # fmt: skip
    for (got_stream, got), cache in results:
        assert max_error(got_stream, expected_stream) == 0.0 and max_error(got, expected) == 0.0
        for one, two in zip(cache, two_caches):
            assert np.abs(one.asnumpy() - two.asnumpy()).max() == 0.0


@pytest.mark.parametrize("name", ["gqa_prefill_padding", "qk_norm_unit_offset", "softcap_scaling"])
def test_rope_then_attention_over_given_keys(name):
    """The path for a DynamicCache: rotate (and norm) q and k, then attend over key/value tensors."""
    case = Case(**CASES[name])
    q, k = kernels.ROPE_QK(case.t(case.q), case.t(case.k), case.t(case.cos), case.t(case.sin), case.t(case.q_norm),
                           case.t(case.k_norm), case.config)  # fmt: skip
    q_ref, k_ref = case.rotated()
    assert max_error(q, q_ref.swapaxes(1, 2).reshape(q.shape)) <= 1e-5
    assert max_error(k, k_ref.swapaxes(1, 2).reshape(k.shape)) <= 1e-5
    expected, keys, values = case.reference()
    out = kernels.ATTENTION(q, case.t(keys), case.t(values), case.t(case.mask), case.config)
    assert max_error(out, expected) <= 1e-5


class _Layer(ms.nn.Cell):
    """A norm, a projection and cached attention in one cell, to compile the kernels into a graph."""

    def __init__(self, case):
        super().__init__()
        self.case = case
        self.keys = ms.Parameter(case.t(case.k_cache), name="keys")
        self.values = ms.Parameter(case.t(case.v_cache), name="values")
        self.weight = ms.Parameter(case.t(np.eye(case.heads * case.head_dim)), name="weight")
        self.norm = ms.Parameter(case.t(np.ones(case.heads * case.head_dim)), name="norm")
        self.norm_config = kernels.config(1e-6, 0)

    def construct(self, q, k, v, cos, sin, positions, mask, config, q_norm, k_norm):
        q = kernels.LINEAR(kernels.RMS_NORM(q, self.norm, self.norm_config), self.weight)
        return kernels.CACHED_ATTENTION(q, k, v, cos, sin, q_norm, k_norm, self.keys, self.values, positions, mask, config)


def test_kernels_inside_a_compiled_graph():
    case = Case(seq=1, start=4)
    layer = _Layer(case)
    inputs = (case.t(case.q), case.t(case.k), case.t(case.v), case.t(case.cos), case.t(case.sin), ms.Tensor(case.positions),
              case.t(case.mask), case.config, case.t(case.q_norm), case.t(case.k_norm))  # fmt: skip
    pynative = layer(*inputs)
    layer.keys.set_data(case.t(case.k_cache))
    compiled = ms.jit(layer.construct)(*inputs)
    assert max_error(compiled, pynative) <= 1e-6
    _, keys, _ = case.reference()
    assert np.abs(layer.keys.asnumpy() - keys).max() <= 1e-5  # the in-place cache write survived compilation


# ---------------------------------------------------------------- the build and its fallback
def _python(code: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "GLOG_v": "3", **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env,
                          timeout=timeout, check=False)  # fmt: skip


TINY_MODEL = """
    import logging, sys
    import numpy as np, mindspore as ms
    from mindone.transformers import LlamaForCausalLM, kernels
    model = LlamaForCausalLM.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else {path!r})
    ids = ms.Tensor(np.arange(3, 12).reshape(1, 9), ms.int32)
    print("AVAILABLE", kernels.available())
    print("TOKENS", model.generate(ids, max_new_tokens=8).asnumpy().tolist())
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from helpers import save_tiny_llama

    path = tmp_path_factory.mktemp("tiny")
    save_tiny_llama(path, seed=5)
    return str(path)


def _tokens(result) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return next(line for line in result.stdout.splitlines() if line.startswith("TOKENS"))


def test_without_a_compiler_one_warning_and_the_composed_ops(tiny_model, tmp_path):
    fused = _python(TINY_MODEL.format(path=tiny_model), {"MINDONE_CACHE": str(tmp_path / "fused")})
    missing = _python(TINY_MODEL.format(path=tiny_model),
                      {"MINDONE_CACHE": str(tmp_path / "none"), "CXX": "", "PATH": str(tmp_path / "empty")})  # fmt: skip
    assert "AVAILABLE True" in fused.stdout and "AVAILABLE False" in missing.stdout
    warnings = [line for line in missing.stderr.splitlines() if "fused CPU kernels unavailable" in line]
    assert len(warnings) == 1 and "no C++ compiler found" in warnings[0]
    assert _tokens(missing) == _tokens(fused)


def test_a_compile_error_names_the_log(tiny_model, tmp_path):
    broken = tmp_path / "broken-cxx"
    broken.write_text("#!/bin/sh\necho 'fatal error: simulated' >&2\nexit 1\n")
    broken.chmod(0o755)
    result = _python(TINY_MODEL.format(path=tiny_model), {"MINDONE_CACHE": str(tmp_path / "cache"), "CXX": str(broken)})
    warnings = [line for line in result.stderr.splitlines() if "fused CPU kernels unavailable" in line]
    assert len(warnings) == 1 and "AVAILABLE False" in result.stdout
    log = Path(warnings[0].split("compiler output: ")[1])
    assert log.is_file() and "fatal error: simulated" in log.read_text()
    assert not list((tmp_path / "cache" / "kernels").glob("*.so")), "no library is left behind"


def test_environment_variable_forces_the_composed_ops(tiny_model, tmp_path):
    result = _python(TINY_MODEL.format(path=tiny_model), {"MINDONE_FUSED_KERNELS": "0", "MINDONE_CACHE": str(tmp_path)})
    assert "AVAILABLE False" in result.stdout and "unavailable" not in result.stderr
    assert not (tmp_path / "kernels").exists(), "nothing is compiled when the kernels are switched off"


def test_a_corrupt_cached_library_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("MINDONE_CACHE", str(tmp_path))
    library = builder.build()
    good = library.read_bytes()
    torn = library.with_name("torn")
    torn.write_bytes(good[: len(good) // 2])  # half a library, as a crash or a full disk leaves it
    os.replace(torn, library)  # a new file: this process keeps the good one mapped
    assert not builder._valid(library, library.with_suffix(".sha256"))
    rebuilt = builder.build()
    assert rebuilt == library and len(rebuilt.read_bytes()) == len(good)
    assert builder._valid(rebuilt, rebuilt.with_suffix(".sha256")) and builder._loads(rebuilt)


def test_two_processes_building_at_once_make_one_good_library(tmp_path):
    code = "from mindone.transformers.kernels.builder import build; print('LIB', build())"
    env = {**os.environ, "MINDONE_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    paths = {line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("LIB")}
    assert len(paths) == 1
    libraries = list((tmp_path / "kernels").glob("*.so"))
    assert [str(p) for p in libraries] == list(paths) and not list((tmp_path / "kernels").glob(".*.tmp"))
    assert builder._valid(libraries[0], libraries[0].with_suffix(".sha256")) and builder._loads(libraries[0])


# ---------------------------------------------------------------- a layer's weights in one buffer
def _static_logits(model, ids) -> np.ndarray:
    out = model.generate(ms.Tensor(ids), max_new_tokens=6, do_sample=False, cache_implementation="static",
                         return_dict_in_generate=True, output_logits=True)  # fmt: skip
    return np.stack([step.asnumpy() for step in out.logits])


def test_loaded_layers_read_one_weight_buffer_and_never_a_stale_one(tmp_path, monkeypatch):
    """from_pretrained packs each layer's weights (layers.PackedWeights) without adding to the state_dict; decoding
    gives exactly the unpacked layers' logits. A weight replaced after the compiled step was built (set_data) is
    read by the next generate(), packed or not: it matches a model given that weight before its first call."""
    from helpers import random_ids, save_tiny_llama

    from mindone.transformers import LlamaForCausalLM
    from mindone.transformers.modeling_decoder import DecoderLayer

    save_tiny_llama(tmp_path, seed=2)
    packed, fresh = LlamaForCausalLM.from_pretrained(tmp_path), LlamaForCausalLM.from_pretrained(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(DecoderLayer, "pack_weights", lambda self, arena: None)
        plain = LlamaForCausalLM.from_pretrained(tmp_path)
    assert all(layer.packed is not None for layer in packed.model.layers)
    assert all(layer.packed is None for layer in plain.model.layers)
    assert list(packed.state_dict()) == list(plain.state_dict())
    ids = random_ids(2, 7)
    assert np.abs(_static_logits(packed, ids) - _static_logits(plain, ids)).max() == 0.0

    replacement = RNG.standard_normal(plain.model.layers[1].self_attn.q_proj.weight.shape).astype(np.float32)
    for model in (packed, plain, fresh):
        model.model.layers[1].self_attn.q_proj.weight.set_data(ms.Tensor(replacement))
    expected = _static_logits(fresh, ids)
    assert np.abs(_static_logits(packed, ids) - expected).max() == 0.0
    assert np.abs(_static_logits(plain, ids) - expected).max() == 0.0
    assert all(layer.packed is None for layer in packed.model.layers)


@pytest.mark.parametrize("first_layer", [False, True])
def test_decoder_stack_is_its_layers_one_after_the_other(first_layer):
    """DECODER_STACK runs every layer in one launch: exactly WEIGHTS_LAYER applied layer by layer, each layer
    writing its own caches in place."""
    case = Case(seq=1, start=6, rotary_dim=8, norm_eps=1e-6)
    hidden, q_size, kv_size, inner = 40, case.heads * case.head_dim, case.kv_heads * case.head_dim, 56
    x, residual, unused = tensor(randn(case.batch, 1, hidden)), tensor(randn(case.batch, 1, hidden)), tensor([0.0])
    norm_config, act = kernels.config(1e-5, 0), kernels.config(0)

    def layer_weights():
        projections = [tensor(randn(n, hidden) * 0.2) for n in (q_size, kv_size, kv_size, 0)]
        projections[3] = tensor(randn(hidden, q_size) * 0.2)
        mlp = [tensor(randn(inner, hidden) * 0.3), tensor(randn(inner, hidden) * 0.3), tensor(randn(hidden, inner) * 0.3)]
        return _packed_buffer([tensor(randn(hidden)), *projections, None, None, None, None, tensor(case.q_norm),
                               tensor(case.k_norm), tensor(randn(hidden)), *mlp])  # fmt: skip

    def caches():
        return [ms.Parameter(tensor(c), name=f"c{i}") for i, c in enumerate((case.k_cache, case.v_cache))]

    layers = [layer_weights() for _ in range(3)]
    shared = (norm_config, norm_config, act, case.config, tensor(case.cos), tensor(case.sin))
    position, mask = ms.Tensor(case.positions), tensor(case.mask)
    one_by_one = [caches() for _ in layers]
    out, stream = x, unused if first_layer else residual
    for (weights, layout), cache in zip(layers, one_by_one):
        stream, out = kernels.WEIGHTS_LAYER(out, stream, weights, layout, *shared, *cache, position, mask)
    stacked_caches = [caches() for _ in layers]
    per_layer = [item for (weights, layout), cache in zip(layers, stacked_caches) for item in (weights, layout, *cache)]
    got_stream, got = kernels.DECODER_STACK(x, unused if first_layer else residual, norm_config, norm_config, act,
                                            case.config, tensor(case.cos), tensor(case.sin), position, mask, *per_layer)  # fmt: skip
    assert max_error(got_stream, stream) == 0.0 and max_error(got, out) == 0.0
    for one, two in zip(one_by_one, stacked_caches):
        assert all(np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in zip(one, two))
