"""GPT-2: learned absolute positions (`wpe`), LayerNorm, q/k/v fused in one Conv1D (weights stored (in, out)), a
plain MLP and no rotary. Its module names (transformer.wte/wpe/h/ln_f) are not the shared decoder's, so GPT2Model
has its own few-line forward over the shared bookkeeping (cache, positions, masks, outputs); GPT2LMHeadModel is the
shared causal LM (tied lm_head, loss, generate) over it."""

import math

import mindspore as ms
import numpy as np
from mindspore import nn
from transformers import GPT2Config

from ... import backend, composed
from ...layers import Conv1D, Embedding, LayerNorm, get_activation
from ...modeling_decoder import DecoderForCausalLM, DecoderPreTrainedModel, final_norm, layer_input


class GPT2Attention(nn.Cell):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        hidden, std = config.hidden_size, config.initializer_range
        self.layer_idx, self.num_heads = layer_idx, config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.c_attn = Conv1D(3 * hidden, hidden, std)
        self.c_proj = Conv1D(hidden, hidden, std / math.sqrt(2 * config.num_hidden_layers))  # HF's scaled init
        self.scaling = (self.head_dim**-0.5 if config.scale_attn_weights else 1.0) / (
            layer_idx + 1 if config.scale_attn_by_inverse_layer_idx else 1
        )
        dtype = self.c_attn.weight.dtype
        requested = getattr(config, "_attn_implementation", None)
        self.kernel = backend.attention_kernel(requested, dtype, self.head_dim)
        # HF computes q k^T in float32 with reorder_and_upcast_attn, on its eager path only (softmax is float32
        # anyway); the fused kernel computes scores in float32 always
        self.upcast = config.reorder_and_upcast_attn and self.kernel == "eager" and dtype != ms.float32
        heads = self.num_heads
        self.kernel_config = backend.attention_config(self.kernel, self.scaling, None, 0, heads, heads, packed=True)
        self.unused = ms.Tensor(np.zeros(1), dtype)  # no rotary, no q/k norm

    def construct(self, hidden_states, attention_mask=None, past_key_values=None, cache_position=None):
        batch, seq, _ = hidden_states.shape
        qkv = self.c_attn(hidden_states)
        heads = self.num_heads
        if self.kernel == "fused":
            output = backend.fused_attention(qkv, qkv, qkv, self.unused, self.unused, self.unused, self.unused,
                                             attention_mask, past_key_values, self.layer_idx, cache_position,
                                             self.kernel_config, True, heads, heads, self.head_dim)  # fmt: skip
            return self.c_proj(output)
        qkv = qkv.reshape(batch, seq, 3 * heads, self.head_dim).swapaxes(1, 2)
        query, key, value = qkv[:, :heads], qkv[:, heads : 2 * heads], qkv[:, 2 * heads :]
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx, {"cache_position": cache_position})
        if self.upcast:
            query, key = query.astype(ms.float32), key.astype(ms.float32)
        if self.kernel == "flash":
            output = backend.flash_attention(query, key, value, attention_mask, self.scaling)
        else:
            output = composed.attention(query, key, value, attention_mask, self.scaling)
        return self.c_proj(output.reshape(batch, seq, -1))


class GPT2MLP(nn.Cell):
    def __init__(self, intermediate_size: int, config):
        super().__init__()
        std = config.initializer_range
        self.c_fc = Conv1D(intermediate_size, config.hidden_size, std)
        self.c_proj = Conv1D(config.hidden_size, intermediate_size, std / math.sqrt(2 * config.num_hidden_layers))
        self.act = get_activation(config.activation_function)

    def construct(self, hidden_states):
        return self.c_proj(self.act(self.c_fc(hidden_states)))


class GPT2Block(nn.Cell):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        inner_dim = config.n_inner if config.n_inner is not None else 4 * config.hidden_size
        self.ln_1 = LayerNorm(config.hidden_size, config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mlp = GPT2MLP(inner_dim, config)

    def construct(self, hidden_states, residual, attention_mask=None, past_key_values=None, cache_position=None):
        """(the MLP's output, the residual stream before it), as the shared decoder's layers return them."""
        if residual is None:
            residual, normed = hidden_states, self.ln_1(hidden_states)
        else:
            residual, normed = self.ln_1.add_and_norm(hidden_states, residual)
        attended = self.attn(normed, attention_mask, past_key_values, cache_position)
        residual, normed = self.ln_2.add_and_norm(attended, residual)
        return self.mlp(normed), residual


class GPT2PreTrainedModel(DecoderPreTrainedModel):
    config_class = GPT2Config
    base_model_prefix = "transformer"
    _no_split_modules = ["GPT2Block"]

    def get_input_embeddings(self):
        return getattr(self, self.base_model_prefix, self).wte


class GPT2Model(GPT2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        if config.add_cross_attention:
            raise ValueError("GPT-2 with cross-attention (add_cross_attention=True) is not supported")
        std = config.initializer_range
        self.wte = Embedding(config.vocab_size, config.hidden_size, std)
        self.wpe = Embedding(config.max_position_embeddings, config.hidden_size, std)
        self.h = nn.CellList([GPT2Block(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon)

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, use_cache=None, output_hidden_states=None, cache_position=None,
                  return_dict: bool = True, **kwargs):  # fmt: skip
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        inputs_embeds = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        past_key_values, cache, past_length, cache_position, position_ids = self._cache_and_positions(
            inputs_embeds, past_key_values, use_cache, cache_position, position_ids
        )
        seq_length, dtype = inputs_embeds.shape[1], inputs_embeds.dtype
        mask = self._mask(attention_mask, past_key_values, cache_position, seq_length, past_length, dtype, None)
        hidden_states, residual, all_hidden_states = inputs_embeds + self.wpe(position_ids), None, ()
        for block in self.h:
            if output_hidden_states:
                all_hidden_states += (layer_input(hidden_states, residual),)
            hidden_states, residual = block(hidden_states, residual, mask, cache, cache_position)
        normed = final_norm(self.ln_f, hidden_states, residual)
        return self._output(normed, cache, all_hidden_states, output_hidden_states, return_dict)


class GPT2LMHeadModel(GPT2PreTrainedModel, DecoderForCausalLM):
    base_model_class = GPT2Model
