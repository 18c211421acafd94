"""Every choice that depends on the MindSpore device target lives here.

The CPU backend lacks many `mint` kernels (embedding and argmax in PyNative, multinomial, bf16 matmul, fused
RMSNorm/attention); model and generation code call these helpers instead of picking ops themselves.
"""

import functools

import mindspore as ms
from mindspore import mint, ops

_matmul_nt = ops.MatMul(transpose_b=True)
_matmul = ops.MatMul()


def device_target() -> str:
    return ms.get_context("device_target")


def is_ascend() -> bool:
    return device_target() == "Ascend"


@functools.lru_cache(maxsize=None)
def prepare_runtime() -> None:
    """On CPU, PyNative dispatches ops asynchronously and pays ~1.4 ms per op for it on 2 cores; blocking launch
    removes that overhead (measured: a 576x1536 linear goes from 5.5 ms to 0.18 ms)."""
    if device_target() == "CPU":
        ms.runtime.launch_blocking()


def linear(x: ms.Tensor, weight: ms.Tensor, bias=None) -> ms.Tensor:
    """x @ weight.T (+ bias) with the weight kept in Hugging Face's (out, in) layout.

    In PyNative a 2-D MatMul with transpose_b is 40x faster on CPU than mint.nn.functional.linear; in a compiled
    SmolLM2 decode step the two are within noise of each other (62.5 vs 65.3 ms/token), so one choice serves both."""
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


def layer_norm(x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, eps: float) -> ms.Tensor:
    """LayerNorm over the last axis. mint's LayerNormExt (mint.nn.functional.layer_norm, ops.layer_norm) is not
    registered on CPU; the LayerNorm primitive is, on every backend, and is 10x faster on CPU in PyNative than the
    composed mean/var/rsqrt."""
    return ops.LayerNorm(-1, -1, eps)(x, weight, bias)[0]


def expand_as(x: ms.Tensor, like: ms.Tensor) -> ms.Tensor:
    """`x` broadcast to `like`'s shape, for an elementwise op with `like`. The CPU Mul/Add kernels of a compiled
    graph keep two index tables the size of their output (16 bytes per element, never freed) whenever they
    broadcast implicitly; with equal shapes they keep none. Prefill at batch 8 x 128 tokens: +4.3 GB -> +1.4 GB."""
    return x.broadcast_to(like.shape)


def gelu(x: ms.Tensor, approximate: str) -> ms.Tensor:
    """mint's GeluExt kernel is not registered on CPU; ops.gelu is, on every backend."""
    return ops.gelu(x, approximate=approximate)


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


# ---------------------------------------------------------------- fused kernels (Ascend only)
def attention_kernel(requested=None, dtype=ms.float16, head_dim: int = 64) -> str:
    """Ascend: "flash" (ops.flash_attention_score) for float16/bfloat16 and head_dim a multiple of 16 (the kernel's
    limits), unless `attn_implementation="eager"` is asked for. Elsewhere: "eager" (matmul + softmax). HF's "sdpa" /
    "flash_attention_2" requests map to the fused kernel where it applies."""
    fits = dtype in (ms.float16, ms.bfloat16) and head_dim % 16 == 0 and head_dim <= 512
    return "flash" if is_ascend() and fits and requested != "eager" else "eager"


def uses_fused_norm() -> bool:
    return is_ascend()


def uses_fused_rotary() -> bool:
    return is_ascend()


def flash_attention(query, key, value, attention_mask, scaling: float):
    """[batch, heads, seq, dim] inputs (fewer kv heads allowed) -> [batch, seq, heads, dim]. The kernel takes a
    boolean mask where True means "do not attend", so the additive mask is converted."""
    discard = None if attention_mask is None else (attention_mask < 0).astype(ms.uint8)
    output = ops.flash_attention_score(
        query, key, value, query.shape[1], attn_mask=discard, scalar_value=scaling, input_layout="BNSD"
    )
    return output.swapaxes(1, 2)


def fused_rms_norm(hidden_states, weight, eps: float):
    return ops.rms_norm(hidden_states, weight, eps)[0]


def fused_rotary(x, cos, sin):
    """Half-split (rotate_half) rotary embedding on [batch, heads, seq, dim] with cos/sin [batch, 1, seq, dim]."""
    return ops.rotary_position_embedding(x, cos, sin, 0)


def check_dtype_supported(dtype) -> None:
    if dtype == ms.bfloat16 and device_target() == "CPU":
        raise ValueError(
            "bfloat16 matmul is not available on MindSpore's CPU backend: load with dtype=ms.float32 "
            "(or float16), or run on Ascend"
        )
