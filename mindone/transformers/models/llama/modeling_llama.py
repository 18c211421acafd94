"""Llama: the reference decoder-only architecture (pre-norm blocks, rotary attention, gated MLP)."""

from typing import Optional

import mindspore as ms
from mindspore import nn, ops
from transformers import LlamaConfig

from ...backend import arange
from ...cache_utils import DynamicCache
from ...generation import GenerationMixin
from ...layers import Attention, Embedding, GatedMLP, Linear, RMSNorm, RotaryEmbedding
from ...masking_utils import causal_mask
from ...modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from ...modeling_utils import PreTrainedModel


class LlamaDecoderLayer(nn.Cell):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = GatedMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def construct(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None, cache_position=None):
        normed = self.input_layernorm(hidden_states)
        attended = self.self_attn(normed, position_embeddings, attention_mask, past_key_values, cache_position)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"
    _no_split_modules = ["LlamaDecoderLayer"]


class LlamaModel(LlamaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, std=config.initializer_range)
        self.layers = nn.CellList([LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def construct(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        cache_position=None,
        return_dict: bool = True,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        seq_length = inputs_embeds.shape[1]
        if cache_position is None:
            cache_position = arange(seq_length) + past_length
        if position_ids is None:
            position_ids = cache_position.expand_dims(0)
        if past_key_values is not None and past_key_values.is_static:
            mask = past_key_values.attention_mask(attention_mask, cache_position, inputs_embeds.dtype)
        else:
            mask = causal_mask(attention_mask, seq_length, past_length, inputs_embeds.dtype)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states, all_hidden_states = inputs_embeds, ()
        cache = past_key_values if use_cache else None
        for layer in self.layers:
            all_hidden_states += (hidden_states,)
            hidden_states = layer(hidden_states, position_embeddings, mask, cache, cache_position)
        hidden_states = self.norm(hidden_states)
        if not return_dict:  # plain tuples are what compiled graphs return best
            return hidden_states, cache
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden_states + (hidden_states,) if output_hidden_states else None,
        )


def causal_lm_loss(logits, labels, ignore_index: int = -100):
    """Mean next-token cross entropy over labels that are not `ignore_index` (HF's shift-by-one convention)."""
    logits, targets = logits[:, :-1].astype(ms.float32), labels[:, 1:]
    valid = targets != ignore_index
    log_probs = ops.log_softmax(logits, -1)
    picked = ops.gather_elements(log_probs, -1, ops.where(valid, targets, 0).expand_dims(-1)).squeeze(-1)
    return -(picked * valid.astype(ms.float32)).sum() / valid.sum().astype(ms.float32)


class LlamaForCausalLM(LlamaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, std=config.initializer_range)
        self.tie_weights()

    def construct(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        logits_to_keep: int = 0,
        cache_position=None,
        return_dict: bool = True,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
            return_dict=return_dict,
        )
        hidden_states = outputs[0]
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        if not return_dict:
            return logits, outputs[1]
        return CausalLMOutputWithPast(
            loss=causal_lm_loss(logits, labels) if labels is not None else None,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )
