"""Building blocks shared by every architecture: linear, embedding, norms, rotary embeddings, attention, MLP.

Parameter names and layouts are Hugging Face's, so checkpoint keys map 1:1 onto these cells."""


import contextlib

import mindspore as ms
import numpy as np
from mindspore import Parameter, mint, nn
from mindspore.common.initializer import Normal, initializer

from . import backend, composed
from .modeling_rope_utils import compute_inv_freq, original_context, rope_type_of

def gelu_tanh(x):
    return backend.gelu(x, "tanh")


def gelu(x):
    return backend.gelu(x, "none")


ACT2FN = {  # named functions, not lambdas: compiled graphs parse their source
    "silu": mint.nn.functional.silu,
    "swish": mint.nn.functional.silu,
    "gelu": gelu,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_new": gelu_tanh,
    "relu": mint.nn.functional.relu,
}


def get_activation(name: str):
    if name not in ACT2FN:
        raise ValueError(f"hidden_act '{name}' is not supported; supported: {', '.join(sorted(ACT2FN))}")
    return ACT2FN[name]


_DEFAULTS = {"dtype": ms.float32, "empty": False}


@contextlib.contextmanager
def parameter_defaults(dtype=ms.float32, empty: bool = False):
    """Cells built inside take this dtype; `empty` allocates zeros lazily (no random init) for weights that a
    checkpoint is about to overwrite. `init_parameter` gives a parameter its real initialisation afterwards."""
    saved = dict(_DEFAULTS)
    _DEFAULTS.update(dtype=dtype, empty=empty)
    try:
        yield
    finally:
        _DEFAULTS.update(saved)


def _param(shape, init):
    param = Parameter(initializer("zeros" if _DEFAULTS["empty"] else init, shape, _DEFAULTS["dtype"]))
    param.hf_init = init
    return param


def init_parameter(param: Parameter) -> None:
    param.set_data(initializer(param.hf_init, param.shape, param.dtype).init_data())


def all_fused(*cells) -> bool:
    """Whether every projection cell given is a float Linear on the fused kernels: the fused qkv, MLP and layer
    kernels read their weights directly, which a QuantizedLinear does not have."""
    return all(cell.kernel == "fused" for cell in cells)


def weight_source(cell):
    """A projection's weight as the packed-layer kernels take it: the float Parameter, or the QuantizedLinear."""
    return cell if cell.kernel == "quantized" else cell.weight


class HasProjections:
    """A cell whose fused paths read its projections' weights. `projections_fused` is decided on the host (a
    compiled graph sees a constant): at construction, and again by refresh_projections() once loading may have
    replaced a projection by a QuantizedLinear."""

    projections_fused = True

    def refresh_projections(self) -> None:
        """`inputs_fused`: the projections before the output one are on the fused kernels; `output_partial`: the
        output projection is a tensor-parallel ReducedLinear that a fused kernel may compute up to its all-reduce."""
        *inputs, output = self.projections()
        self.projections_fused = all_fused(*inputs, output)
        self.inputs_fused = all_fused(*inputs)
        self.output_partial = getattr(output, "partial", False)


class Linear(nn.Cell):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = 0.02):
        super().__init__()
        self.weight = _param((out_features, in_features), Normal(std))
        self.bias = _param((out_features,), "zeros") if bias else None
        self.kernel = backend.linear_kernel(_DEFAULTS["dtype"])

    def construct(self, x):
        return backend.linear(x, self.weight, self.bias, self.kernel)


class Conv1D(nn.Cell):
    """Hugging Face's Conv1D (GPT-2): a linear layer whose weight is stored (in, out), i.e. x @ weight + bias.
    Arguments in HF's order: nf output features, nx input features."""

    def __init__(self, nf: int, nx: int, std: float = 0.02):
        super().__init__()
        self.weight = _param((nx, nf), Normal(std))
        self.bias = _param((nf,), "zeros")

    def construct(self, x):
        return backend.linear_in_out(x, self.weight, self.bias)


class Embedding(nn.Cell):
    def __init__(self, num_embeddings: int, embedding_dim: int, std: float = 0.02):
        super().__init__()
        self.weight = _param((num_embeddings, embedding_dim), Normal(std))

    def construct(self, ids):
        return backend.embedding(ids, self.weight)


class RMSNorm(nn.Cell):
    """Normalises in float32, then scales by `weight` in the input dtype (Llama's order of casts). With
    `unit_offset` (Gemma) the scale is (1 + weight), applied in float32 before casting back."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        self.weight = _param((hidden_size,), "zeros" if unit_offset else "ones")
        self.variance_epsilon = eps
        self.unit_offset = unit_offset
        self.kernel = backend.norm_kernel(unit_offset, _DEFAULTS["dtype"])
        self.kernel_config = backend.norm_config(self.kernel, eps, unit_offset)

    def construct(self, hidden_states):
        return backend.rms_norm(self.kernel, hidden_states, self.weight, self.variance_epsilon, self.unit_offset,
                                self.kernel_config)  # fmt: skip

    def add_and_norm(self, hidden_states, residual):
        """(hidden_states + residual, the norm of that sum) in one kernel where the backend has one."""
        return backend.add_rms_norm(self.kernel, hidden_states, residual, self.weight, self.variance_epsilon,
                                    self.unit_offset, self.kernel_config)  # fmt: skip


class LayerNorm(nn.Cell):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (torch.nn.LayerNorm's parameter names)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = _param((hidden_size,), "ones")
        self.bias = _param((hidden_size,), "zeros")
        self.eps = eps
        self.kernel = backend.norm_kernel(False, _DEFAULTS["dtype"])
        self.kernel_config = backend.norm_config(self.kernel, eps)

    def construct(self, hidden_states):
        return backend.layer_norm(self.kernel, hidden_states, self.weight, self.bias, self.eps, self.kernel_config)

    def add_and_norm(self, hidden_states, residual):
        return backend.add_layer_norm(self.kernel, hidden_states, residual, self.weight, self.bias, self.eps,
                                      self.kernel_config)  # fmt: skip


class RotaryEmbedding(nn.Cell):
    """cos/sin tables [batch, 1, seq, head_dim] for the given positions (shaped once per forward, broadcast over
    heads); `dynamic` and `longrope` scaling recompute frequencies on the host when positions grow.

    With a partial rotary factor the dimensions past the rotary ones get cos 1 and sin 0, so attention applies one
    full-width rotation that leaves them unchanged (exactly: x * 1 + 0)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rope_type = rope_type_of(config)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.original_inv_freq, self.original_scaling = compute_inv_freq(config)
        self._set_frequencies(self.original_inv_freq, self.original_scaling)
        self.original_max_seq_len = self.max_seq_len_cached = config.max_position_embeddings

    def _set_frequencies(self, inv_freq: np.ndarray, attention_scaling: float):
        """Per output dimension: its frequency (rotary halves repeated, 0 past them) and the cos/sin scale."""
        pass_dims = self.head_dim - 2 * len(inv_freq)
        self.inv_freq, self.attention_scaling = inv_freq, attention_scaling
        frequencies = np.concatenate([inv_freq, inv_freq, np.zeros(pass_dims, np.float32)])
        scale = np.concatenate([np.full(2 * len(inv_freq), attention_scaling, np.float32), np.ones(pass_dims, np.float32)])
        self.dim_frequencies = ms.Tensor(frequencies.reshape(1, 1, -1))
        self.dim_scale = ms.Tensor(scale.reshape(1, 1, 1, -1))

    def _longrope_update(self, position_ids):
        long = int(position_ids.max()) + 1 > original_context(self.config)
        self._set_frequencies(*compute_inv_freq(self.config, original_context(self.config) + 1 if long else None))

    def _dynamic_update(self, position_ids):
        seq_len = int(position_ids.max()) + 1
        if seq_len > self.max_seq_len_cached:
            self._set_frequencies(*compute_inv_freq(self.config, seq_len))
            self.max_seq_len_cached = seq_len
        if seq_len < self.original_max_seq_len < self.max_seq_len_cached:
            self._set_frequencies(self.original_inv_freq, self.original_scaling)
            self.max_seq_len_cached = self.original_max_seq_len

    def construct(self, x, position_ids):
        if self.rope_type == "dynamic":
            self._dynamic_update(position_ids)
        if self.rope_type == "longrope":
            self._longrope_update(position_ids)
        emb = (position_ids.astype(ms.float32).expand_dims(-1) * self.dim_frequencies).expand_dims(1)
        cos = mint.cos(emb) * self.dim_scale
        sin = mint.sin(emb) * self.dim_scale
        return composed.cast(cos, x.dtype), composed.cast(sin, x.dtype)


class Attention(HasProjections, nn.Cell):
    """Multi-head / grouped-query self-attention with rotary embeddings and a key/value cache."""

    def __init__(self, config, layer_idx: int, qkv_bias=None, o_bias=None, qk_norm: bool = False,
                 unit_offset_norm: bool = False, fused_qkv: bool = False):  # fmt: skip
        """`qkv_bias` / `o_bias` default to config.attention_bias; `qk_norm` adds per-head RMSNorm on q and k;
        `fused_qkv` holds the q, k and v projections as one `qkv_proj` (rows q, then k, then v: Phi-3's layout).
        Read from the config when present: query_pre_attn_scalar (scaling), attn_logit_softcapping and
        partial_rotary_factor."""
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        query_scalar = getattr(config, "query_pre_attn_scalar", None)
        self.scaling = (query_scalar or self.head_dim) ** -0.5
        self.softcap = getattr(config, "attn_logit_softcapping", None)
        bias = getattr(config, "attention_bias", False)
        qkv_bias, o_bias = bias if qkv_bias is None else qkv_bias, bias if o_bias is None else o_bias
        std = config.initializer_range
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, qkv_bias, std)
        else:
            self.q_proj = Linear(config.hidden_size, self.q_size, qkv_bias, std)
            self.k_proj = Linear(config.hidden_size, self.kv_size, qkv_bias, std)
            self.v_proj = Linear(config.hidden_size, self.kv_size, qkv_bias, std)
        self.o_proj = Linear(self.num_heads * self.head_dim, config.hidden_size, o_bias, std)
        self.qk_norm = qk_norm
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, unit_offset_norm) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, unit_offset_norm) if qk_norm else None
        requested = getattr(config, "_attn_implementation", None)
        dtype = _DEFAULTS["dtype"]
        self.kernel = backend.attention_kernel(requested, dtype, self.head_dim, self.softcap)
        rotary_dim = int(self.head_dim * getattr(config, "partial_rotary_factor", 1.0))
        self.fused_rotary = backend.uses_fused_rotary(self.kernel, rotary_dim < self.head_dim)
        self.rotation = composed.rotate_half_matrix(self.head_dim, dtype, rotary_dim)
        self.kernel_config = backend.attention_config(
            self.kernel, self.scaling, self.softcap, rotary_dim, self.num_heads, self.num_kv_heads,
            config.rms_norm_eps if qk_norm else 0.0, unit_offset_norm, fused_qkv,
        )  # fmt: skip
        self.unused = ms.Tensor(np.zeros(1), dtype)  # a kernel input this layer has no tensor for
        self.refresh_projections()

    def _heads(self, x, num_heads):
        batch, seq, _ = x.shape
        return x.reshape(batch, seq, num_heads, self.head_dim).swapaxes(1, 2)

    def construct(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None, cache_position=None):
        batch, seq, _ = hidden_states.shape
        if self.fused_qkv:
            qkv = self.qkv_proj(hidden_states)
            if self.kernel == "fused":
                output = self._fused(qkv, qkv, qkv, position_embeddings, attention_mask, past_key_values, cache_position)
                return self.o_proj(output)
            query, key = qkv[:, :, : self.q_size], qkv[:, :, self.q_size : self.q_size + self.kv_size]
            value = qkv[:, :, self.q_size + self.kv_size :]
        else:
            kernel = "fused" if self.inputs_fused else "matmul"
            query, key, value = backend.qkv_projection(kernel, hidden_states, self.q_proj, self.k_proj, self.v_proj)
            if self.kernel == "fused":
                output = self._fused(query, key, value, position_embeddings, attention_mask, past_key_values, cache_position)
                return self.o_proj(output)
        query, key = self._heads(query, self.num_heads), self._heads(key, self.num_kv_heads)
        value = self._heads(value, self.num_kv_heads)
        if self.qk_norm:
            query, key = self.q_norm(query), self.k_norm(key)
        cos, sin = position_embeddings
        if self.fused_rotary:
            query, key = backend.rotary(query, cos, sin), backend.rotary(key, cos, sin)
        else:
            query, key = composed.rotate(query, cos, sin, self.rotation), composed.rotate(key, cos, sin, self.rotation)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx, {"cache_position": cache_position})
        if self.kernel == "flash":
            output = backend.flash_attention(query, key, value, attention_mask, self.scaling)
        else:
            output = composed.attention(query, key, value, attention_mask, self.scaling, self.softcap)
        return self.o_proj(output.reshape(batch, seq, -1))

    def block_fits(self, hidden_states, past_key_values, norm) -> bool:
        """Whether `block` serves these inputs: decoding rows over a static cache, every part on fused kernels."""
        fused = self.kernel == "fused" and norm.kernel == "fused" and self.projections_fused
        static = past_key_values is not None and past_key_values.is_static
        return fused and static and backend.decoding_rows(hidden_states)

    def block_inputs(self, hidden_states, residual, norm, position_embeddings, attention_mask, past_key_values,
                     cache_position) -> tuple:  # fmt: skip
        """The inputs of this attention as one block kernel over its `norm` (backend.attention_block_inputs): the
        input norm with the residual add, the projections, the cached attention and the output projection."""
        cos, sin = position_embeddings
        q_norm = self.q_norm.weight if self.qk_norm else self.unused
        k_norm = self.k_norm.weight if self.qk_norm else self.unused
        if self.fused_qkv:
            bias = self.unused if self.qkv_proj.bias is None else self.qkv_proj.bias
            projections, biases = (self.qkv_proj.weight, self.unused, self.unused), (bias, self.unused, self.unused)
        else:
            projections = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
            cells = (self.q_proj, self.k_proj, self.v_proj)
            biases = tuple(self.unused if cell.bias is None else cell.bias for cell in cells)
        return backend.attention_block_inputs(hidden_states, residual, norm, projections, biases, self.o_proj, cos, sin,
                                              q_norm, k_norm, attention_mask, past_key_values, self.layer_idx,
                                              cache_position, self.kernel_config, self.unused)  # fmt: skip

    def projections(self) -> tuple:
        """The projection cells: (qkv_proj, o_proj) or (q_proj, k_proj, v_proj, o_proj)."""
        if self.fused_qkv:
            return self.qkv_proj, self.o_proj
        return self.q_proj, self.k_proj, self.v_proj, self.o_proj

    def block_weights(self) -> tuple:
        """The weights of the block kernel in PackedWeights.ORDER (q to k_norm), None where this attention has none;
        with fused_qkv the packed projection takes q's place."""
        def bias(cell):
            return None if cell is None else cell.bias

        if self.fused_qkv:
            q, k, v = self.qkv_proj, None, None
        else:
            q, k, v = self.q_proj, self.k_proj, self.v_proj
        cells = (q, k, v, self.o_proj)
        norms = (self.q_norm.weight, self.k_norm.weight) if self.qk_norm else (None, None)
        return tuple(None if c is None else weight_source(c) for c in cells) + tuple(bias(c) for c in cells) + norms

    def block(self, hidden_states, residual, norm, position_embeddings, attention_mask, past_key_values, cache_position):
        """(the residual stream, this attention over its `norm`) in one kernel (backend.attention_block)."""
        return backend.attention_block(self.block_inputs(hidden_states, residual, norm, position_embeddings,
                                                         attention_mask, past_key_values, cache_position))  # fmt: skip

    def _fused(self, query, key, value, position_embeddings, attention_mask, past_key_values, cache_position):
        cos, sin = position_embeddings
        q_norm = self.q_norm.weight if self.qk_norm else self.unused
        k_norm = self.k_norm.weight if self.qk_norm else self.unused
        return backend.fused_attention(query, key, value, cos, sin, q_norm, k_norm, attention_mask, past_key_values,
                                       self.layer_idx, cache_position, self.kernel_config, self.fused_qkv,
                                       self.num_heads, self.num_kv_heads, self.head_dim)  # fmt: skip


class GatedMLP(HasProjections, nn.Cell):
    """down(act(gate(x)) * up(x)); the activation is named by the config field `activation_key`. `fused_gate_up`
    holds gate and up as one `gate_up_proj` (gate rows first: Phi-3's layout)."""

    def __init__(self, config, activation_key: str = "hidden_act", fused_gate_up: bool = False):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        std, hidden, self.intermediate = config.initializer_range, config.hidden_size, config.intermediate_size
        self.fused_gate_up = fused_gate_up
        if fused_gate_up:
            self.gate_up_proj = Linear(hidden, 2 * self.intermediate, bias, std)
        else:
            self.gate_proj = Linear(hidden, self.intermediate, bias, std)
            self.up_proj = Linear(hidden, self.intermediate, bias, std)
        self.down_proj = Linear(self.intermediate, hidden, bias, std)
        activation = getattr(config, activation_key)
        self.act_fn = get_activation(activation)
        self.kernel = backend.mlp_kernel(activation, bias, _DEFAULTS["dtype"])
        self.refresh_projections()
        self.kernel_config = backend.mlp_config(self.kernel, activation)

    def projections(self) -> tuple:
        """The projection cells: (gate_up_proj, down_proj) or (gate_proj, up_proj, down_proj)."""
        if self.fused_gate_up:
            return self.gate_up_proj, self.down_proj
        return self.gate_proj, self.up_proj, self.down_proj

    def fused(self) -> bool:
        return self.kernel == "fused" and self.projections_fused

    def construct(self, x):
        if self.kernel == "fused" and self.inputs_fused and self.output_partial:  # tensor parallel: this rank's share
            gate, up = (self.gate_up_proj, None) if self.fused_gate_up else (self.gate_proj, self.up_proj)
            partial = backend.mlp("fused", x, gate, up, self.down_proj, self.act_fn, self.kernel_config, self.fused_gate_up)
            return self.down_proj.finish(partial)
        kernel = self.kernel if self.kernel != "fused" or self.fused() else "composed"
        if self.fused_gate_up:
            return backend.mlp(kernel, x, self.gate_up_proj, None, self.down_proj, self.act_fn, self.kernel_config, True)
        return backend.mlp(kernel, x, self.gate_proj, self.up_proj, self.down_proj, self.act_fn, self.kernel_config,
                           False)  # fmt: skip

    def block_fits(self, x, norm) -> bool:
        """Whether the norm before this MLP and the MLP run as one fused kernel for `x` (decoding rows)."""
        return self.fused() and norm.kernel == "fused" and backend.decoding_rows(x)

    def block_weights(self) -> tuple:
        """(gate, up, down) weights (weight_source), up None when gate and up are one packed projection."""
        if self.fused_gate_up:
            return weight_source(self.gate_up_proj), None, weight_source(self.down_proj)
        return tuple(weight_source(cell) for cell in (self.gate_proj, self.up_proj, self.down_proj))

    def after_attention_block(self, attention_inputs: tuple, norm):
        """(the residual stream after the attention, this MLP's output) of a whole layer in one kernel: the
        attention block with `attention_inputs` (Attention.block_inputs), then `norm` and this MLP."""
        gate = self.gate_up_proj if self.fused_gate_up else self.gate_proj
        up = None if self.fused_gate_up else self.up_proj
        return backend.decoder_layer(attention_inputs, norm, gate, up, self.down_proj, self.kernel_config,
                                     self.fused_gate_up)  # fmt: skip

    def after_norm(self, x, residual, norm):
        """(x + residual, this MLP over their `norm`): one kernel for decoding rows where the norm and the MLP are
        fused kernels."""
        if self.block_fits(x, norm):
            if self.fused_gate_up:
                return backend.mlp_block(x, residual, norm, self.gate_up_proj, None, self.down_proj, self.kernel_config, True)
            return backend.mlp_block(x, residual, norm, self.gate_proj, self.up_proj, self.down_proj, self.kernel_config,
                                     False)  # fmt: skip
        residual, normed = norm.add_and_norm(x, residual)
        return residual, self.construct(normed)


class PackedWeights(nn.Cell):
    """A decoder layer's weights as one parameter over their contiguous slices of the loading arena
    (modeling_utils.WeightArena), with each weight's (offset, rows, cols) in `layout`: the layer kernel then takes
    one weight input instead of up to fifteen. Not a child cell, so it adds nothing to the model's state_dict;
    PreTrainedModel.check_weights drops it when a weight is replaced. A compiled step registers its parameter
    (generation/compile_cache.own_parameters): a graph loaded from disk binds only its cell's own parameters."""

    quantized = False
    ORDER = ("input_norm", "q", "k", "v", "o", "q_bias", "k_bias", "v_bias", "o_bias", "q_norm", "k_norm", "post_norm",
             "gate", "up", "down")  # fmt: skip

    def __init__(self, weights: tuple, span: tuple, name: str):
        super().__init__()
        tensor, offsets = span
        # a lazy parameter given the arena's memory: Parameter(tensor) would copy the weights
        self.weights = Parameter(initializer("zeros", tensor.shape, tensor.dtype), name=name, requires_grad=False)
        self.weights.set_data(tensor)
        layout, offsets = [], iter(offsets)
        for weight in weights:
            cols = 0 if weight is None or len(weight.shape) == 1 else weight.shape[1]
            layout += [-1, 0, 0] if weight is None else [next(offsets), weight.shape[0], cols]
        self.layout = ms.Tensor(np.array(layout, np.int64))

    @classmethod
    def of(cls, weights: tuple, arena, name: str):
        """The packed weights, or None when they are not all contiguous slices of `arena` in one dtype."""
        span = arena.span([w for w in weights if w is not None])
        return None if span is None else cls(weights, span, name)
