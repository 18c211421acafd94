"""Every choice that depends on the MindSpore device target, or on whether the fused CPU kernels are built, lives here.

Layers ask for a kernel once, at construction (`norm_kernel`, `attention_kernel`, `mlp_kernel`), keep the
answer ("fused": the C++ custom ops of `kernels/`, "ascend": Ascend's built-in fused ops, "composed": plain
MindSpore ops from `composed.py`) and pass it back to the functions below, which dispatch on it. The answer is a
Python constant, so compiled graphs contain only the chosen branch.

The CPU backend lacks many `mint` kernels (embedding and argmax in PyNative, multinomial, bf16 matmul, fused
RMSNorm/attention); model and generation code call these helpers instead of picking ops themselves.
"""

import functools
import os

import mindspore as ms
from mindspore import mint, ops

from . import composed, kernels

_matmul_nt = ops.MatMul(transpose_b=True)
_matmul = ops.MatMul()

# Rows of activations up to which the few-row kernels (matrix-vector tiles, whole-layer and block kernels) serve a
# call; more rows (prompts) go to the blocked GEMM (kernels/csrc/gemm.h) and the per-op kernels.
FUSED_LINEAR_MAX_ROWS = 8
_KERNEL_DTYPES = (ms.float32, ms.float16)
ACTIVATIONS = {"silu": 0, "swish": 0, "gelu_pytorch_tanh": 1, "gelu_new": 1, "gelu": 2, "relu": 3}


def device_target() -> str:
    return ms.get_context("device_target")


def is_ascend() -> bool:
    return device_target() == "Ascend"


def fused_cpu_kernels() -> bool:
    """The C++ kernels are used on the CPU backend when they built (see kernels/__init__.py)."""
    return device_target() == "CPU" and kernels.available()


@functools.lru_cache(maxsize=None)
def prepare_runtime() -> None:
    """On CPU, PyNative dispatches ops asynchronously and pays ~1.4 ms per op for it on 2 cores; blocking launch
    removes that overhead (measured: a 576x1536 linear goes from 5.5 ms to 0.18 ms). Compiled graphs run on the
    calling thread (MS_DEV_HOST_BLOCKING_RUN, unless the user set it) instead of being handed to a runtime thread:
    with all decoder layers in one kernel a SmolLM2 decode step has ~20 kernels, and the hand-over cost ~1.4 ms of
    its ~22 (measured 22.6 / 21.7 vs 21.0 / 20.3 ms, alternated)."""
    if device_target() == "CPU":
        ms.runtime.launch_blocking()
        os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")


def linear_kernel(dtype) -> str:
    """"fused" where the matrix-vector kernel can serve decoding, else "matmul"."""
    return "fused" if dtype in _KERNEL_DTYPES and fused_cpu_kernels() else "matmul"


def linear(x: ms.Tensor, weight: ms.Tensor, bias=None, kernel: str = "matmul") -> ms.Tensor:
    """x @ weight.T (+ bias) with the weight kept in Hugging Face's (out, in) layout.

    With kernel "fused", the C++ kernel: for a few rows (decoding) it splits the weight rows over both cores, for
    more (prompts) it runs a blocked GEMM (kernels/csrc/gemm.h; 1.5-2x MindSpore's MatMul at 100-800 rows).
    Otherwise a 2-D MatMul with transpose_b: in PyNative 40x faster on CPU than mint.nn.functional.linear, and
    within noise of it inside a compiled graph."""
    if kernel == "fused":
        return kernels.LINEAR(x, weight) if bias is None else kernels.LINEAR_BIAS(x, weight, bias)
    if x.ndim == 2:
        out = _matmul_nt(x, weight)
    else:
        out = _matmul_nt(x.reshape(-1, x.shape[-1]), weight).reshape(x.shape[:-1] + (weight.shape[0],))
    return out if bias is None else out + bias


def linear_in_out(x: ms.Tensor, weight: ms.Tensor, bias=None) -> ms.Tensor:
    """x @ weight (+ bias) with the weight in (in, out) layout (GPT-2's Conv1D), so checkpoints load untransposed;
    the same 2-D MatMul as `linear`, without transpose_b."""
    out = _matmul(x.reshape(-1, x.shape[-1]), weight).reshape(x.shape[:-1] + (weight.shape[1],))
    return out if bias is None else out + bias


def expand_as(x: ms.Tensor, like: ms.Tensor) -> ms.Tensor:
    return composed.expand_as(x, like)


def gelu(x: ms.Tensor, approximate: str) -> ms.Tensor:
    """mint's GeluExt kernel is not registered on CPU; ops.gelu is, on every backend."""
    return ops.gelu(x, approximate=approximate)


def quantized_kernel(dtype) -> str:
    """"ascend": WeightQuantBatchMatmul (the weight in its operand layout, `weight_quant_operands`); "fused": the C++
    kernels dequantize inside the matrix product (any number of rows); "composed": the weight is dequantized with
    MindSpore ops, then multiplied (no compiler, MINDONE_FUSED_KERNELS=0)."""
    if is_ascend() and dtype in (ms.float16, ms.bfloat16):
        return "ascend"
    return "fused" if dtype in _KERNEL_DTYPES and fused_cpu_kernels() else "composed"


def quantized_linear(x: ms.Tensor, cell) -> ms.Tensor:
    """x @ dequantized(weight)^T (+ bias) for a quantization.QuantizedLinear `cell` (its `matmul`: quantized_kernel)."""
    if cell.matmul == "ascend":
        matmul = ops.auto_generate.WeightQuantBatchMatmul(antiquant_group_size=cell.group)
        rows = x.reshape(-1, x.shape[-1])
        out = matmul(rows, cell.device_weight, cell.device_scale, cell.device_offset, None, None, None)
        out = out.reshape(x.shape[:-1] + (cell.out_features,))
    elif cell.matmul == "fused":
        if cell.bits == 8:
            out = kernels.QLINEAR8(x, cell.weight_values, cell.weight_scales)
        else:
            out = kernels.QLINEAR4(x, cell.weight_packed, cell.weight_scales, cell.weight_offsets)
    else:
        out = linear(x, composed.dequantize(cell).astype(x.dtype))
    return out if cell.bias is None else out + cell.bias


def weight_quant_operands(weight, dtype) -> tuple:
    """(weight, antiquant scale, antiquant offset or None) as numpy arrays for Ascend's WeightQuantBatchMatmul, from
    a quantization.formats weight [N, K]: the kernel computes x @ ((q + offset) * scale) with q [K, N], int8 or
    signed 4-bit (-8..7, two per byte along N, low nibble first: shape [K, N / 2]) and scale / offset [K / group, N]
    in the activations' dtype. Our 4-bit w = s * u + o (u in 0..15) is s * ((u - 8) + (o / s + 8)); a group with
    s = 0 holds the constant o, written as scale o and offset 9 on q = -8."""
    import numpy as np

    from .quantization import Int8Groups, unpack4

    nptype = np.float16 if dtype == ms.float16 else np.float32  # bfloat16 operands are cast from float32 on device
    if isinstance(weight, Int8Groups):
        return np.ascontiguousarray(weight.values.T), weight.scales.T.astype(nptype), None
    signed = (unpack4(weight.packed).astype(np.int16) - 8).T
    low, high = signed[:, 0::2] & 0x0F, signed[:, 1::2] & 0x0F
    packed = (low | (high << 4)).astype(np.uint8)
    constant = weight.scales == 0
    scale = np.where(constant, weight.offsets, weight.scales)
    offset = np.where(constant, np.float32(9), weight.offsets / np.where(constant, 1, weight.scales) + 8)
    return np.ascontiguousarray(packed), scale.T.astype(nptype), offset.T.astype(nptype)


def embedding(ids: ms.Tensor, weight: ms.Tensor) -> ms.Tensor:
    return ops.gather(weight, ids, 0)


def argmax(x: ms.Tensor) -> ms.Tensor:
    return ops.argmax(x, dim=-1)


def multinomial(probs: ms.Tensor) -> ms.Tensor:
    """One draw per row; reproducible under `set_seed`."""
    if is_ascend():
        return mint.multinomial(probs, 1).squeeze(1)
    return ops.multinomial(probs, 1).squeeze(1)


def cumsum(x: ms.Tensor, axis: int) -> ms.Tensor:
    return ops.cumsum(x, axis)


def arange(n: int) -> ms.Tensor:
    """int32 0..n-1 (mint.arange has no PyNative CPU kernel)."""
    return ops.arange(0, n, dtype=ms.int32)


def check_dtype_supported(dtype) -> None:
    if dtype == ms.bfloat16 and device_target() == "CPU":
        raise ValueError(
            "bfloat16 matmul is not available on MindSpore's CPU backend: load with dtype=ms.float32 "
            "(or float16), or run on Ascend"
        )


# ---------------------------------------------------------------- norms
def norm_kernel(unit_offset: bool, dtype) -> str:
    """Ascend's rms_norm / add_rms_norm take the weight as the scale (Gemma's 1 + weight needs the composed ops);
    the fused CPU kernels handle both."""
    if is_ascend():
        return "composed" if unit_offset else "ascend"
    return "fused" if dtype in _KERNEL_DTYPES and fused_cpu_kernels() else "composed"


def norm_config(kernel: str, eps: float, unit_offset: bool = False):
    return kernels.config(eps, unit_offset) if kernel == "fused" else None


def rms_norm(kernel: str, x, weight, eps: float, unit_offset: bool, config):
    if kernel == "fused":
        return kernels.RMS_NORM(x, weight, config)
    if kernel == "ascend":
        return ops.rms_norm(x, weight, eps)[0]
    return composed.rms_norm(x, weight, eps, unit_offset)


def add_rms_norm(kernel: str, x, residual, weight, eps: float, unit_offset: bool, config):
    """(x + residual, rms_norm(x + residual)): the residual add fused into the norm that follows it."""
    if kernel == "fused":
        return kernels.ADD_RMS_NORM(x, residual, weight, config)
    if kernel == "ascend":
        normed, _, total = ops.add_rms_norm(x, residual, weight, eps)
        return total, normed
    total = x + residual
    return total, composed.rms_norm(total, weight, eps, unit_offset)


def layer_norm(kernel: str, x, weight, bias, eps: float, config):
    """mint's LayerNormExt (mint.nn.functional.layer_norm, ops.layer_norm) is not registered on CPU; the LayerNorm
    primitive is, on every backend, and is 10x faster on CPU in PyNative than the composed mean/var/rsqrt."""
    if kernel == "fused":
        return kernels.LAYER_NORM(x, weight, bias, config)
    return ops.LayerNorm(-1, -1, eps)(x, weight, bias)[0]


def add_layer_norm(kernel: str, x, residual, weight, bias, eps: float, config):
    if kernel == "fused":
        return kernels.ADD_LAYER_NORM(x, residual, weight, bias, config)
    total = x + residual
    return total, ops.LayerNorm(-1, -1, eps)(total, weight, bias)[0]


# ---------------------------------------------------------------- gated MLP
def mlp_kernel(activation: str, bias: bool, dtype) -> str:
    """"fused": one kernel computes down(act(x @ gate^T) * (x @ up^T)) for decoding (bias-free projections);
    "swiglu": Ascend's fused silu(gate) * up over a packed gate/up output; "composed" otherwise."""
    if is_ascend():
        return "swiglu" if activation in ("silu", "swish") else "composed"
    fits = not bias and activation in ACTIVATIONS and dtype in _KERNEL_DTYPES
    return "fused" if fits and fused_cpu_kernels() else "composed"


def mlp_config(kernel: str, activation: str):
    return kernels.config(ACTIVATIONS[activation]) if kernel == "fused" else None


def mlp(kernel: str, x, gate, up, down, act_fn, act_config, packed: bool):
    """down(act(x @ gate^T) * (x @ up^T)). `gate`, `up` and `down` are the projection cells; with `packed` the one
    cell `gate` holds gate and up (gate rows first, Phi-3's gate_up_proj) and `up` is None. With kernel "fused" any
    number of rows runs as one kernel (few-row tiles for decoding, the blocked GEMM with the activation fused into
    the gate/up product for prompts)."""
    if kernel == "fused":
        return (kernels.MLP_PACKED if packed else kernels.MLP)(x, *_mlp_weights(gate, up, down, packed), act_config)
    if packed:
        both = gate(x)
        if kernel == "swiglu":
            return down(ops.swiglu(both, -1))
        half = both.shape[-1] // 2
        return down(act_fn(both[..., :half]) * both[..., half:])
    return down(act_fn(gate(x)) * up(x))


def qkv_projection(kernel: str, x, q_proj, k_proj, v_proj):
    """The q, k and v projections (Linear cells with biases or none); with kernel "fused" one kernel for any number
    of rows (the three products share one packing of x for prompts)."""
    if kernel == "fused":
        if q_proj.bias is None:
            return kernels.QKV(x, q_proj.weight, k_proj.weight, v_proj.weight)
        return kernels.QKV_BIAS(x, q_proj.weight, k_proj.weight, v_proj.weight, q_proj.bias, k_proj.bias, v_proj.bias)
    return q_proj(x), k_proj(x), v_proj(x)


# ---------------------------------------------------------------- attention
def attention_kernel(requested=None, dtype=ms.float16, head_dim: int = 64, softcap=None) -> str:
    """CPU: "fused" (the C++ kernel: rotary, q/k norm, cache write and attention in one op) when it built.
    Ascend: "flash" (flash_attention_score for prefill, incre_flash_attention for decoding) for float16/bfloat16,
    head_dim a multiple of 16 and no soft-capping (the kernels' limits), unless `attn_implementation="eager"`
    is asked for. Otherwise "eager" (matmul + softmax). HF's "sdpa" / "flash_attention_2" requests map to the
    fused kernels where they apply."""
    if is_ascend():
        fits = dtype in (ms.float16, ms.bfloat16) and head_dim % 16 == 0 and head_dim <= 512 and softcap is None
        return "flash" if fits and requested != "eager" else "eager"
    return "fused" if dtype in _KERNEL_DTYPES and fused_cpu_kernels() else "eager"


def uses_fused_rotary(kernel: str, partial: bool) -> bool:
    """Ascend's rotary_position_embedding rotates whole heads: partial rotary keeps the composed rotation."""
    return kernel == "flash" and not partial


def attention_config(kernel: str, scaling: float, softcap, rotary_dim: int, heads: int, kv_heads: int,
                     norm_eps: float = 0.0, norm_unit_offset: bool = False, packed: bool = False):  # fmt: skip
    """The fused kernel's settings: query scaling, soft-cap (0: none), rotary dimensions (0: no rotary), q/k norm
    epsilon (0: no norm) and unit offset, whether q/k/v arrive packed in one projection, head counts."""
    if kernel != "fused":
        return None
    return kernels.config(scaling, softcap or 0.0, rotary_dim, norm_eps, norm_unit_offset, packed, heads, kv_heads)


def fused_attention(query, key, value, cos, sin, q_norm, k_norm, mask, cache, layer_idx: int, cache_position,
                    config, packed: bool, heads: int, kv_heads: int, head_dim: int):  # fmt: skip
    """Attention over projections [batch, seq, heads * head_dim] (with `packed`, q, k and v stacked in `query`):
    q/k norm, rotary and a static cache's update inside one kernel; returns [batch, seq, heads * head_dim]. Without
    a static cache (a DynamicCache, or none) the rotated keys and values go through the cache's `update` first."""
    if cache is not None and cache.is_static:
        keys, values = cache.layer_buffers(layer_idx)
        if packed:
            return kernels.CACHED_ATTENTION_PACKED(query, key, value, cos, sin, q_norm, k_norm, keys, values,
                                                   cache_position, mask, config)  # fmt: skip
        return kernels.CACHED_ATTENTION(query, key, value, cos, sin, q_norm, k_norm, keys, values, cache_position, mask, config)
    if packed:
        q_size, kv_size = heads * head_dim, kv_heads * head_dim
        query, key, value = query[..., :q_size], query[..., q_size : q_size + kv_size], query[..., q_size + kv_size :]
    query, key = kernels.ROPE_QK(query, key, cos, sin, q_norm, k_norm, config)
    batch, seq = query.shape[0], query.shape[1]
    key = key.reshape(batch, seq, kv_heads, head_dim).swapaxes(1, 2)
    value = value.reshape(batch, seq, kv_heads, head_dim).swapaxes(1, 2)
    if cache is not None:
        key, value = cache.update(key, value, layer_idx, {"cache_position": cache_position})
    return kernels.ATTENTION(query, key, value, mask, config)


def decoding_rows(x) -> bool:
    """Whether `x` has few enough rows for the fused few-row kernels (decoding; prompts use the blocked GEMM)."""
    return x.size // x.shape[-1] <= FUSED_LINEAR_MAX_ROWS


def attention_block_inputs(hidden, residual, norm, projections: tuple, biases: tuple, o_proj, cos, sin, q_norm, k_norm,
                           mask, cache, layer_idx: int, cache_position, config, unused) -> tuple:  # fmt: skip
    """The inputs of the attention block kernel: the input norm (with the residual add; `residual` None for a first
    layer), the projections (`projections` the q, k, v weights, or the packed qkv weight and two `unused`
    placeholders; `biases` theirs or placeholders), the cached attention and the output projection."""
    keys, values = cache.layer_buffers(layer_idx)
    residual = unused if residual is None else residual
    o_bias = unused if o_proj.bias is None else o_proj.bias
    return (hidden, residual, norm.weight, norm.kernel_config, *projections, o_proj.weight, *biases, o_bias, cos, sin,
            q_norm, k_norm, keys, values, cache_position, mask, config)  # fmt: skip


def attention_block(inputs: tuple):
    """(the residual stream, o_proj(attention(norm(stream)))) for decoding rows over a static cache, in one kernel;
    `inputs` from attention_block_inputs."""
    return kernels.ATTENTION_BLOCK(*inputs)


def decoder_layer(attention_inputs: tuple, norm, gate, up, down, act_config, packed: bool):
    """A whole pre-norm layer for decoding rows in one kernel: the attention block, then the MLP block over its
    outputs; returns (the residual stream after the attention, the MLP's output). `packed` as in `mlp`."""
    kernel = kernels.DECODER_LAYER_PACKED if packed else kernels.DECODER_LAYER
    return kernel(*attention_inputs, norm.weight, norm.kernel_config, *_mlp_weights(gate, up, down, packed), act_config)


def weights_layer(hidden, residual, packed, input_norm, post_norm, act_config, attention_config, cos, sin, mask, cache,
                  layer_idx: int, cache_position, unused):  # fmt: skip
    """decoder_layer for a layer whose weights are slices of one buffer (`packed`: layers.PackedWeights, or
    quantization.linear.QuantizedLayerWeights)."""
    keys, values = cache.layer_buffers(layer_idx)
    residual = unused if residual is None else residual
    kernel = kernels.QUANT_WEIGHTS_LAYER if packed.quantized else kernels.WEIGHTS_LAYER
    return kernel(hidden, residual, packed.weights, packed.layout, input_norm.kernel_config,
                                 post_norm.kernel_config, act_config, attention_config, cos, sin, keys, values,
                                 cache_position, mask)  # fmt: skip


def decoder_stack(hidden, layers, cos, sin, mask, cache, cache_position, unused):
    """Every decoder layer in one kernel for decoding rows over a static cache: `layers` all packed
    (layers.PackedWeights or QuantizedLayerWeights) with one configuration. Returns the last layer's (residual
    stream, MLP output)."""
    first = layers[0]
    inputs = [hidden, unused, first.input_layernorm.kernel_config, first.post_attention_layernorm.kernel_config,
              first.mlp.kernel_config, first.self_attn.kernel_config, cos, sin, cache_position, mask]  # fmt: skip
    for index, layer in enumerate(layers):
        keys, values = cache.layer_buffers(index)
        inputs += [layer.packed.weights, layer.packed.layout, keys, values]
    return kernels.DECODER_STACK(*inputs)


def mlp_block(x, residual, norm, gate, up, down, act_config, packed: bool):
    """(x + residual, the MLP of norm(x + residual)) for decoding rows, in one kernel; `packed` as in `mlp`."""
    kernel = kernels.MLP_BLOCK_PACKED if packed else kernels.MLP_BLOCK
    return kernel(x, residual, norm.weight, norm.kernel_config, *_mlp_weights(gate, up, down, packed), act_config)


def _mlp_weights(gate, up, down, packed: bool) -> tuple:
    """The weight inputs of the MLP kernels: (gate_up, down) when packed, else (gate, up, down)."""
    return (gate.weight, down.weight) if packed else (gate.weight, up.weight, down.weight)


def flash_attention(query, key, value, attention_mask, scaling: float):
    """Ascend, [batch, heads, seq, dim] inputs (fewer kv heads allowed) -> [batch, seq, heads, dim]. The kernels
    take a boolean mask where True means "do not attend", so the additive mask is converted. One query token
    (decoding) uses incre_flash_attention, longer inputs flash_attention_score."""
    discard = None if attention_mask is None else (attention_mask < 0).astype(ms.uint8)
    heads, kv_heads = query.shape[1], key.shape[1]
    if query.shape[2] == 1:
        output = ops.incre_flash_attention(
            query, [key], [value], attn_mask=discard, num_heads=heads, input_layout="BNSD", scale_value=scaling,
            num_key_value_heads=kv_heads,
        )  # fmt: skip
    else:
        output = ops.flash_attention_score(
            query, key, value, heads, attn_mask=discard, scalar_value=scaling, input_layout="BNSD"
        )
    return output.swapaxes(1, 2)


def rotary(x, cos, sin):
    """Ascend: half-split (rotate_half) rotary embedding on [batch, heads, seq, dim], cos/sin [batch, 1, seq, dim]."""
    return ops.rotary_position_embedding(x, cos, sin, 0)


def copy_cache_row(destination, source, row: int, length: int) -> None:
    """Slots [0, length) of row 0 of the StaticCache `source` into row `row` of the StaticCache `destination`, in
    place (a prompt prefilled alone joins a continuous batch): one kernel call for every layer, else a slice
    assignment per buffer."""
    buffers = [(dst, src) for pair in ((destination.keys, source.keys), (destination.values, source.values))
               for dst, src in zip(*pair)]  # fmt: skip
    if fused_cpu_kernels() and destination.dtype in _KERNEL_DTYPES:
        kernels.COPY_CACHE_ROW(ms.Tensor([row, length], ms.int32), *(x for pair in buffers for x in pair))
        return
    for dst, src in buffers:
        dst[row : row + 1, :, :length] = src[:, :, :length]


# ---------------------------------------------------------------- tensor parallel
def communication_rank() -> tuple:
    """(this process's rank, the number of ranks), initialising MindSpore's communication unless it already was."""
    from mindspore.communication import GlobalComm, get_group_size, get_rank, init

    if not GlobalComm.INITED:
        init()
    return get_rank(), get_group_size()


def share_cores(ranks: int) -> None:
    """CPU: the ranks of a machine split its cores, so each rank's kernel pool takes cores // ranks threads unless
    MINDONE_KERNEL_THREADS is set (read when the pool starts, at the process's first kernel). Measured: SmolLM2 at 3
    ranks on 2 cores decoded 3.5 tok/s with a 2-thread pool in each rank and 9.8 tok/s with one thread."""
    if device_target() == "CPU":
        os.environ.setdefault("MINDONE_KERNEL_THREADS", str(max(1, len(os.sched_getaffinity(0)) // ranks)))


def tensor_parallel_group(size: int) -> str:
    """The communication group of this rank's `size` tensor-parallel ranks (consecutive ranks form a group; the
    groups split the rest of the world data-parallel). MindSpore's CPU collectives serve only the world group
    (measured, 2.7.1: "AllReduce only support mccl_world_group on CPU"), so on CPU a group is the whole world;
    Ascend's HCCL creates the sub-groups."""
    from mindspore.communication import GlobalComm, create_group

    rank, world = communication_rank()
    if size == world:
        return GlobalComm.WORLD_COMM_GROUP
    if not is_ascend():
        raise ValueError(f"tp_size={size} with {world} msrun workers needs communication sub-groups, which MindSpore's "
                         f"CPU collectives lack (world group only); on CPU use tp_size={world} or start msrun with "
                         f"--worker_num={size}")  # fmt: skip
    first = rank // size * size
    name = f"tensor_parallel_{first}_{size}"
    create_group(name, list(range(first, first + size)))
    return name
