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


ROPE_INIT_FUNCTIONS = {"default": _default, "linear": _linear, "dynamic": _dynamic, "llama3": _llama3}


def rope_type_of(config) -> str:
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(
            f"rope_scaling type '{rope_type}' is not supported; supported: {', '.join(sorted(ROPE_INIT_FUNCTIONS))}"
        )
    return rope_type


def compute_inv_freq(config, seq_len=None):
    """Returns (inv_freq as float32 numpy array, attention scaling applied to cos/sin)."""
    return ROPE_INIT_FUNCTIONS[rope_type_of(config)](config, seq_len)
