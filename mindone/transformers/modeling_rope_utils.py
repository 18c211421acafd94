"""Rotary inverse frequencies for every `rope_scaling` type, computed once on the host in float32 like HF does."""

import math

import numpy as np


def _rotary_dim(config) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head_dim * getattr(config, "partial_rotary_factor", 1.0))


def _inverse_frequencies(base, dim: int) -> np.ndarray:
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / (np.float32(base) ** exponents)).astype(np.float32)


def _default(config, seq_len=None):
    return _inverse_frequencies(config.rope_theta, _rotary_dim(config)), 1.0


def _linear(config, seq_len=None):
    inv_freq, scaling = _default(config)
    return (inv_freq / np.float32(config.rope_scaling["factor"])).astype(np.float32), scaling


def _dynamic(config, seq_len=None):
    dim = _rotary_dim(config)
    max_positions = config.max_position_embeddings
    factor = config.rope_scaling["factor"]
    seq_len = max(seq_len or max_positions, max_positions)
    growth = np.float32(factor * seq_len / max_positions - (factor - 1))
    base = np.float32(config.rope_theta) * growth ** np.float32(dim / (dim - 2))
    return _inverse_frequencies(base, dim), 1.0


def _llama3(config, seq_len=None):
    inv_freq, scaling = _default(config)
    params = config.rope_scaling
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
    return np.where(is_medium, smoothed, scaled).astype(np.float32), scaling


def _yarn_mscale(scale, mscale=1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(config, seq_len=None):
    """YaRN: interpolate low frequencies, keep high ones, ramp in between; cos/sin scaled by the attention factor."""
    params, base, dim = config.rope_scaling, config.rope_theta, _rotary_dim(config)
    factor = params["factor"]
    original = params.get("original_max_position_embeddings") or config.max_position_embeddings
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))
        else:
            attention_factor = _yarn_mscale(factor)

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(params.get("beta_fast") or 32), correction_dim(params.get("beta_slow") or 1)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    extrapolation_weight = np.float32(1) - ramp
    pos_freqs = np.float32(base) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))
    extrapolated, interpolated = np.float32(1) / pos_freqs, np.float32(1) / (np.float32(factor) * pos_freqs)
    inv_freq = interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight
    return inv_freq.astype(np.float32), attention_factor


def _longrope(config, seq_len=None):
    """LongRoPE (Phi-3): per-dimension rescaling, `long_factor` beyond the original context, `short_factor` within."""
    params, dim = config.rope_scaling, _rotary_dim(config)
    factor, attention_factor = params.get("factor"), params.get("attention_factor")
    original = getattr(config, "original_max_position_embeddings", None)
    if original:
        factor = config.max_position_embeddings / original
    else:
        original = config.max_position_embeddings
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = np.asarray(params["long_factor"] if seq_len and seq_len > original else params["short_factor"], np.float32)
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1) / (ext * np.float32(config.rope_theta) ** exponents)).astype(np.float32), attention_factor


def original_context(config) -> int:
    return getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings


ROPE_INIT_FUNCTIONS = {
    "default": _default,
    "linear": _linear,
    "dynamic": _dynamic,
    "llama3": _llama3,
    "yarn": _yarn,
    "longrope": _longrope,
}
# types whose frequencies depend on the current sequence length (recomputed on the host between forwards)
HOST_UPDATED_ROPE = {"dynamic", "longrope"}


def rope_type_of(config) -> str:
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(
            f"rope_scaling type '{rope_type}' is not supported; supported: {', '.join(sorted(ROPE_INIT_FUNCTIONS))}"
        )
    return rope_type


def rope_switch_length(config):
    """LongRoPE changes every frequency once the sequence outgrows the original context, which invalidates keys
    cached before; models that recompute their cache then (Phi-3) do so when the sequence passes this length."""
    return original_context(config) if rope_type_of(config) == "longrope" else None


def compute_inv_freq(config, seq_len=None):
    """Returns (inv_freq as float32 numpy array, attention scaling applied to cos/sin)."""
    return ROPE_INIT_FUNCTIONS[rope_type_of(config)](config, seq_len)
