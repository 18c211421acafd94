"""Fused CPU kernels as MindSpore custom ops (`ops.Custom(func_type="aot")`).

The C++ sources in csrc/ ship with the package and are compiled on first use (see builder.py). Each kernel replaces
a chain of small MindSpore ops (a norm, a rotary embedding, attention over the cache, an MLP's activation) with
one launch; they run in PyNative and inside compiled graphs. Without a compiler, or when the build or the library
fails, one warning line names the compiler log and the model keeps the composed ops; MINDONE_FUSED_KERNELS=0
forces the composed ops. `backend.py` is the only caller: models never ask whether the kernels exist."""

import functools
import logging
import os
from typing import Optional

import mindspore as ms
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
LINEAR = LINEAR_BIAS = GATED_LINEAR = GATED_LINEAR_PACKED = None
CACHED_ATTENTION = CACHED_ATTENTION_PACKED = ROPE_QK = ATTENTION = None


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Builds (or finds) the library and creates the primitives; False when the kernels cannot be used."""
    if library() is None:
        return False
    _create_primitives()
    return True


def _custom(function: str, outputs: int = 1, writes_inputs: bool = False):
    """The primitive of one kernel. Output shapes and dtypes come from the library's C++ infer functions
    (csrc/infer.cc), which every graph compiler path can call."""
    primitive = ops.Custom(f"{library()}:{function}", func_type="aot")
    primitive.add_prim_attr("reg_op_name", function)  # what MindSpore's C++ infer names in its messages
    if outputs > 1:
        primitive.multi_output = True
        primitive.add_prim_attr("multi_output", True)
    if writes_inputs:  # keeps the op in a graph and orders it against later reads of the buffers it writes
        primitive.add_prim_attr("side_effect_mem", True)
    return primitive


def _create_primitives() -> None:
    """Inputs and outputs of each kernel (the C++ entry points in csrc/ say the same):
    RMS_NORM (x, weight, cfg[eps, unit_offset]) -> y; ADD_RMS_NORM (x, residual, weight, cfg) -> (x + residual, y);
    LAYER_NORM (x, weight, bias, eps[1]) -> y; ADD_LAYER_NORM (x, residual, weight, bias, eps[1]) -> (sum, y);
    LINEAR (x, w) / LINEAR_BIAS (x, w, b) -> x @ w^T (+ b);
    GATED_LINEAR (x, gate, up, act[1]) / GATED_LINEAR_PACKED (x, gate_up, act[1]) -> act(x @ gate^T) * (x @ up^T);
    CACHED_ATTENTION(_PACKED) (q, k, v, cos, sin, q_norm_w, k_norm_w, k_cache, v_cache, cache_position, mask, cfg)
        -> [B, S, H * D], writing the new keys and values into the caches in place;
    ROPE_QK (q, k, cos, sin, q_norm_w, k_norm_w, cfg) -> (q, k) normed and rotated, same shapes;
    ATTENTION (q [B, S, H * D], k [B, KV, L, D], v [B, KV, L, D], mask [1 or B, 1, S, L], cfg) -> [B, S, H * D]."""
    global RMS_NORM, ADD_RMS_NORM, LAYER_NORM, ADD_LAYER_NORM, LINEAR, LINEAR_BIAS, GATED_LINEAR
    global GATED_LINEAR_PACKED, CACHED_ATTENTION, CACHED_ATTENTION_PACKED, ROPE_QK, ATTENTION
    RMS_NORM, ADD_RMS_NORM = _custom("RmsNorm"), _custom("AddRmsNorm", outputs=2)
    LAYER_NORM, ADD_LAYER_NORM = _custom("LayerNorm"), _custom("AddLayerNorm", outputs=2)
    LINEAR, LINEAR_BIAS = _custom("Linear"), _custom("LinearBias")
    GATED_LINEAR, GATED_LINEAR_PACKED = _custom("GatedLinear"), _custom("GatedLinearPacked")
    CACHED_ATTENTION = _custom("CachedAttention", writes_inputs=True)
    CACHED_ATTENTION_PACKED = _custom("CachedAttentionPacked", writes_inputs=True)
    ROPE_QK = _custom("RopeQk", outputs=2)
    ATTENTION = _custom("Attention")


def config(*values) -> ms.Tensor:
    """A kernel's scalar settings, passed as a small float32 tensor input."""
    return ms.Tensor([float(v) for v in values], ms.float32)
