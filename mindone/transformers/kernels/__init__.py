"""Fused CPU kernels as MindSpore custom ops (`ops.Custom(func_type="aot")`).

The C++ sources in csrc/ ship with the package and are compiled on first use (see builder.py). Each kernel replaces
a chain of small MindSpore ops (a norm, a rotary embedding, attention over the cache, an MLP's activation) with
one launch; they run in PyNative and inside compiled graphs. Without a compiler, or when the build or the library
fails, one warning line names the compiler log and the model keeps the composed ops; MINDONE_FUSED_KERNELS=0
forces the composed ops. `backend.py` is the only caller: models never ask whether the kernels exist."""

import ctypes
import functools
import logging
import os
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import ops

from .builder import BuildError, build

logger = logging.getLogger(__name__)

DISABLE_VARIABLE = "MINDONE_FUSED_KERNELS"


@functools.lru_cache(maxsize=None)
def library() -> Optional[str]:
    """Absolute path of the compiled library, or None when the kernels are disabled or unavailable (warned once)."""
    if os.environ.get(DISABLE_VARIABLE, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    try:
        return str(build())
    except BuildError as err:
        where = f"; compiler output: {err.log}" if err.log else ""
        logger.warning(f"mindone: fused CPU kernels unavailable ({err}), using composed MindSpore ops (slower){where}")
        return None


# The custom-op primitives, created once the library is built: compiled graphs must find them as plain globals.
RMS_NORM = ADD_RMS_NORM = LAYER_NORM = ADD_LAYER_NORM = None
LINEAR = LINEAR_BIAS = QKV = QKV_BIAS = MLP = MLP_PACKED = MLP_BLOCK = MLP_BLOCK_PACKED = None
CACHED_ATTENTION = CACHED_ATTENTION_PACKED = ATTENTION_BLOCK = ROPE_QK = ATTENTION = None
DECODER_LAYER = DECODER_LAYER_PACKED = WEIGHTS_LAYER = QUANT_WEIGHTS_LAYER = DECODER_STACK = QLINEAR8 = QLINEAR4 = None
COPY_CACHE_ROW = None


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Builds (or finds) the library and creates the primitives; False when the kernels cannot be used."""
    if library() is None:
        return False
    _create_primitives()
    return True


_DTYPES = {ms.float32: (np.float32, b"float32"), ms.float16: (np.float16, b"float16"), ms.int32: (np.int32, b"int32"),
           ms.int64: (np.int64, b"int64"), ms.bool_: (np.bool_, b"bool"), ms.int8: (np.int8, b"int8"),
           ms.uint8: (np.uint8, b"uint8")}  # fmt: skip
_STATUS = {1: "wrong number of inputs", 2: "unsupported dtype", 3: "inconsistent shapes"}


class Kernel(ops.Custom):
    """One kernel: a MindSpore custom op, and in PyNative a direct call.

    Inside compiled graphs it is an ordinary AOT custom op whose output shapes and dtypes come from the library's
    C++ infer functions (csrc/infer.cc), which every graph compiler path can call. Called eagerly (PyNative), it
    runs the same C++ function directly on the tensors' memory: MindSpore's eager dispatch of a custom op costs
    ~100 us (path resolution, infer, kernel set-up) where most of these kernels take 5-50 us. On the CPU backend
    `data_ptr()` is the tensor's own buffer, so in-place writes reach it; eager ops have finished when they
    return because the CPU runtime launches them blocking (backend.prepare_runtime)."""

    def __init__(self, function: str, out_shapes, outputs: int = 1, writes_inputs: bool = False):
        """`out_shapes(*input_shapes)` gives the output shapes (as csrc/infer.cc does, for eager calls)."""
        super().__init__(f"{library()}:{function}", func_type="aot")
        self.add_prim_attr("reg_op_name", function)  # what MindSpore's C++ infer names in its messages
        self.function, self.out_shapes, self.outputs, self.writes_inputs = function, out_shapes, outputs, writes_inputs
        if outputs > 1:
            self.multi_output = True
            self.add_prim_attr("multi_output", True)
        if writes_inputs:  # keeps the op in a graph and orders it against later reads of the buffers it writes
            self.add_prim_attr("side_effect_mem", True)
        self.entry = getattr(ctypes.CDLL(library()), function)

    def __call__(self, *inputs):
        inputs = [x if x.is_contiguous() else self._contiguous(x) for x in inputs]
        dtype, dtype_name = _DTYPES[inputs[0].dtype]
        results = [np.empty(shape, dtype) for shape in self.out_shapes(*(x.shape for x in inputs))]
        count = len(inputs) + len(results)
        shapes = [x.shape for x in inputs] + [r.shape for r in results]
        status = self.entry(
            count,
            (ctypes.c_void_p * count)(*(x.data_ptr() for x in inputs), *(r.ctypes.data for r in results)),
            (ctypes.c_int * count)(*(len(shape) for shape in shapes)),
            (ctypes.POINTER(ctypes.c_int64) * count)(*((ctypes.c_int64 * max(1, len(s)))(*s) for s in shapes)),
            (ctypes.c_char_p * count)(*(_DTYPES[x.dtype][1] for x in inputs), *([dtype_name] * len(results))),
            None,
            None,
        )
        if status != 0:
            shapes_text = ", ".join(str(tuple(x.shape)) for x in inputs)
            raise RuntimeError(f"fused kernel {self.function} refused its inputs ({_STATUS.get(status, status)}): {shapes_text}")
        tensors = tuple(ms.from_numpy(r) for r in results)
        return tensors if self.outputs > 1 else tensors[0]


    def _contiguous(self, x: ms.Tensor) -> ms.Tensor:
        """A PyNative view (a slice, a transpose) as a tensor of its own: the kernels read dense buffers."""
        if self.writes_inputs:  # a copy would take the in-place write
            raise RuntimeError(f"fused kernel {self.function} writes its inputs in place; pass dense tensors, not views")
        return x.contiguous()


def _same(x, *rest):
    return (x,)


def _pair(x, *rest):
    return x, x


def _linear(x, weight, *rest):
    return (x[:-1] + weight[:1],)


def _qkv(x, wq, wk, wv, *rest):
    return x[:-1] + wq[:1], x[:-1] + wk[:1], x[:-1] + wv[:1]


def _mlp(x, gate, up, down, *rest):
    return (x[:-1] + down[:1],)


def _mlp_packed(x, gate_up, down, *rest):
    return (x[:-1] + down[:1],)


def _attention_block(hidden, residual, norm_w, norm_cfg, wq, wk, wv, wo, *rest):
    return hidden, hidden[:-1] + wo[:1]


def _mlp_block(x, residual, norm_w, norm_cfg, gate, up, down, *rest):
    return x, x[:-1] + down[:1]


def _mlp_block_packed(x, residual, norm_w, norm_cfg, gate_up, down, *rest):
    return x, x[:-1] + down[:1]


def _decoder_layer(hidden, *rest):
    return hidden, hidden


def _packed_attention(qkv, k, v, cos, sin, q_norm, k_norm, k_cache, *rest):
    """[B, S, (H + 2 KV) * D] with the cache's [B, KV, L, D] -> [B, S, H * D]"""
    return (qkv[:-1] + (qkv[-1] - 2 * k_cache[1] * k_cache[3],),)


def _one_slot(*shapes):
    return ((1,),)


def _rope(q, k, *rest):
    return q, k


def _create_primitives() -> None:
    """Inputs and outputs of each kernel (the C++ entry points in csrc/ say the same):
    RMS_NORM (x, weight, cfg[eps, unit_offset]) -> y; ADD_RMS_NORM (x, residual, weight, cfg) -> (x + residual, y);
    LAYER_NORM (x, weight, bias, eps[1]) -> y; ADD_LAYER_NORM (x, residual, weight, bias, eps[1]) -> (sum, y);
    LINEAR (x, w) / LINEAR_BIAS (x, w, b) -> x @ w^T (+ b);
    QKV (x, wq, wk, wv) / QKV_BIAS (x, wq, wk, wv, bq, bk, bv) -> (q, k, v): three projections in one pass;
    MLP (x, gate, up, down, act[1]) / MLP_PACKED (x, gate_up, down, act[1]) -> down(act(x @ gate^T) * (x @ up^T));
    MLP_BLOCK (x, residual, norm_w, norm_cfg, gate, up, down, act[1]) / MLP_BLOCK_PACKED (x, residual, norm_w,
        norm_cfg, gate_up, down, act[1]) -> (x + residual, the MLP of rms_norm(x + residual));
    CACHED_ATTENTION(_PACKED) (q, k, v, cos, sin, q_norm_w, k_norm_w, k_cache, v_cache, cache_position, mask, cfg)
        -> [B, S, H * D], writing the new keys and values into the caches in place;
    ATTENTION_BLOCK (hidden, residual or [1], norm_w, norm_cfg, wq, wk, wv, wo, bq, bk, bv, bo, cos, sin, q_norm_w,
        k_norm_w, k_cache, v_cache, cache_position, mask, cfg) -> (residual stream, o_proj(attention(norm(stream))));
    DECODER_LAYER (the ATTENTION_BLOCK inputs, post_norm_w, post_norm_cfg, gate, up, down, act) / DECODER_LAYER_PACKED
        (..., gate_up, down, act) -> (residual stream after the attention, the MLP's output): both blocks, one launch;
    WEIGHTS_LAYER (hidden, residual or [1], weights, layout int64 [15 * 3], input_norm_cfg, post_norm_cfg, act,
        attention_cfg, cos, sin, k_cache, v_cache, cache_position, mask) -> DECODER_LAYER's outputs, every weight a
        slice of `weights` at layout's (offset, rows, cols), in the order of layers.PackedWeights.ORDER;
    QUANT_WEIGHTS_LAYER: WEIGHTS_LAYER over a uint8 buffer of quantized projections and float norms and biases,
        layout int64 [15 * 7] of (kind -1/0/8/4, data, scales, offsets in bytes, rows, cols, group_shift);
    DECODER_STACK (hidden, residual or [1], input_norm_cfg, post_norm_cfg, act, attention_cfg, cos, sin,
        cache_position, mask, then per layer weights, layout, k_cache, v_cache) -> the last layer's outputs: every
        layer as (QUANT_)WEIGHTS_LAYER in one launch;
    QLINEAR8 (x, values int8 [N, K], scales [N, K / group]) / QLINEAR4 (x, packed uint8 [N, K / 2], scales, offsets
        [N, K / 32]) -> x @ dequantized^T, bit for bit LINEAR on the dequantized weight (quantization/formats.py);
    ROPE_QK (q, k, cos, sin, q_norm_w, k_norm_w, cfg) -> (q, k) normed and rotated, same shapes;
    ATTENTION (q [B, S, H * D], k [B, KV, L, D], v [B, KV, L, D], mask [1 or B, 1, S, L], cfg) -> [B, S, H * D];
    COPY_CACHE_ROW (where int32 [row, length], then destination [B, KV, L, D], source [1, KV, L', D] per buffer)
        -> int32 [1]: slots [0, length) of each source row 0 copied into the destination row in place (eager)."""
    global RMS_NORM, ADD_RMS_NORM, LAYER_NORM, ADD_LAYER_NORM, LINEAR, LINEAR_BIAS, QKV, QKV_BIAS, MLP, MLP_PACKED
    global MLP_BLOCK, MLP_BLOCK_PACKED, CACHED_ATTENTION, CACHED_ATTENTION_PACKED, ATTENTION_BLOCK, ROPE_QK, ATTENTION
    global DECODER_LAYER, DECODER_LAYER_PACKED, WEIGHTS_LAYER, QUANT_WEIGHTS_LAYER, DECODER_STACK, QLINEAR8, QLINEAR4
    RMS_NORM, ADD_RMS_NORM = Kernel("RmsNorm", _same), Kernel("AddRmsNorm", _pair, outputs=2)
    LAYER_NORM, ADD_LAYER_NORM = Kernel("LayerNorm", _same), Kernel("AddLayerNorm", _pair, outputs=2)
    LINEAR, LINEAR_BIAS = Kernel("Linear", _linear), Kernel("LinearBias", _linear)
    QKV, QKV_BIAS = Kernel("Qkv", _qkv, outputs=3), Kernel("QkvBias", _qkv, outputs=3)
    MLP, MLP_PACKED = Kernel("Mlp", _mlp), Kernel("MlpPacked", _mlp_packed)
    MLP_BLOCK = Kernel("MlpBlock", _mlp_block, outputs=2)
    MLP_BLOCK_PACKED = Kernel("MlpBlockPacked", _mlp_block_packed, outputs=2)
    CACHED_ATTENTION = Kernel("CachedAttention", _same, writes_inputs=True)
    CACHED_ATTENTION_PACKED = Kernel("CachedAttentionPacked", _packed_attention, writes_inputs=True)
    ATTENTION_BLOCK = Kernel("AttentionBlock", _attention_block, outputs=2, writes_inputs=True)
    DECODER_LAYER = Kernel("DecoderLayer", _decoder_layer, outputs=2, writes_inputs=True)
    DECODER_LAYER_PACKED = Kernel("DecoderLayerPacked", _decoder_layer, outputs=2, writes_inputs=True)
    WEIGHTS_LAYER = Kernel("WeightsLayer", _decoder_layer, outputs=2, writes_inputs=True)
    QUANT_WEIGHTS_LAYER = Kernel("QuantWeightsLayer", _decoder_layer, outputs=2, writes_inputs=True)
    DECODER_STACK = Kernel("DecoderStack", _decoder_layer, outputs=2, writes_inputs=True)
    QLINEAR8, QLINEAR4 = Kernel("QLinear8", _linear), Kernel("QLinear4", _linear)
    global COPY_CACHE_ROW
    COPY_CACHE_ROW = Kernel("CopyCacheRow", _one_slot, writes_inputs=True)
    ROPE_QK = Kernel("RopeQk", _rope, outputs=2)
    ATTENTION = Kernel("Attention", _same)


def config(*values) -> ms.Tensor:
    """A kernel's scalar settings, passed as a small float32 tensor input."""
    return ms.Tensor([float(v) for v in values], ms.float32)
