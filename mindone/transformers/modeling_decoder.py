"""The decoder-only transformer shared by Llama-like architectures: embeddings, pre-norm blocks (attention + MLP),
final norm, rotary positions, causal / sliding-window masks and the LM head. An architecture subclasses these
classes and states only what differs (config class, attention options, a different block)."""

import copy
from typing import Optional

import mindspore as ms
from mindspore import mint, nn, ops

from . import backend
from .backend import arange
from .cache_utils import DynamicCache
from .generation import GenerationMixin
from .layers import Attention, Embedding, GatedMLP, Linear, PackedWeights, RMSNorm, RotaryEmbedding
from .masking_utils import causal_mask
from .modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from .modeling_utils import PreTrainedModel
from .quantization.linear import QuantizedLayerWeights


def layer_sliding_window(config, layer_idx: int) -> Optional[int]:
    """The layer's attention window: from `layer_types` when the config has them, else the config-wide value."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    return window


class DecoderLayer(nn.Cell):
    """x + attn(norm(x)), then + mlp(norm(x)). `options` is the model class, whose attributes say how the
    architecture configures attention, norms and the MLP activation."""

    packed = None  # PackedWeights or QuantizedLayerWeights once pack_weights found the whole layer on fused kernels

    def __init__(self, config, layer_idx: int, options):
        super().__init__()
        self.sliding_window = layer_sliding_window(config, layer_idx)
        self.self_attn = Attention(config, layer_idx, unit_offset_norm=options.unit_offset_norm, **options.attention_options)
        self.mlp = GatedMLP(config, options.activation_key, **options.mlp_options)
        self.input_layernorm = self.norm(config, options)
        self.post_attention_layernorm = self.norm(config, options)

    @staticmethod
    def norm(config, options) -> RMSNorm:
        return RMSNorm(config.hidden_size, config.rms_norm_eps, options.unit_offset_norm)

    def construct(self, hidden_states, residual, position_embeddings, attention_mask=None, past_key_values=None,
                  cache_position=None):  # fmt: skip
        """Returns (the MLP's output, the residual stream before it): their sum is the layer's output, which the
        next layer's input norm (or the final norm) adds in the same kernel. `residual` is None for the first
        layer, whose input is the embeddings alone. Decoding rows over a static cache run the layer as one kernel."""
        static = past_key_values is not None and past_key_values.is_static
        if self.packed is not None and static and backend.decoding_rows(hidden_states):
            cos, sin = position_embeddings
            residual, out = backend.weights_layer(hidden_states, residual, self.packed, self.input_layernorm,
                                                  self.post_attention_layernorm, self.mlp.kernel_config,
                                                  self.self_attn.kernel_config, cos, sin, attention_mask,
                                                  past_key_values, self.self_attn.layer_idx, cache_position,
                                                  self.self_attn.unused)  # fmt: skip
            return out, residual
        if self.self_attn.block_fits(hidden_states, past_key_values, self.input_layernorm) and self.mlp.block_fits(
            hidden_states, self.post_attention_layernorm
        ):
            attention_inputs = self.self_attn.block_inputs(hidden_states, residual, self.input_layernorm,
                                                           position_embeddings, attention_mask, past_key_values,
                                                           cache_position)  # fmt: skip
            residual, out = self.mlp.after_attention_block(attention_inputs, self.post_attention_layernorm)
            return out, residual
        residual, attended = self.attend(hidden_states, residual, position_embeddings, attention_mask, past_key_values,
                                         cache_position)  # fmt: skip
        residual, out = self.mlp.after_norm(attended, residual, self.post_attention_layernorm)
        return out, residual

    def pack_weights(self, arena) -> None:
        """Read all weights from one buffer where the whole layer runs as one fused kernel: PackedWeights over the
        loading arena for float projections, QuantizedLayerWeights when they are all quantized."""
        attention, mlp = self.self_attn, self.mlp
        norms = (self.input_layernorm, self.post_attention_layernorm)
        if attention.kernel != "fused" or mlp.kernel != "fused" or not all(n.kernel == "fused" for n in norms):
            return
        weights = (self.input_layernorm.weight,) + attention.block_weights() + (self.post_attention_layernorm.weight,)
        weights += mlp.block_weights()
        name = f"packed_layer_weights.{attention.layer_idx}"
        if attention.projections_fused and mlp.projections_fused:
            packed = PackedWeights.of(weights, arena, name)
        else:
            packed = QuantizedLayerWeights.of(weights, name)
        object.__setattr__(self, "packed", packed)

    def attend(self, hidden_states, residual, position_embeddings, attention_mask, past_key_values, cache_position):
        """(the layer's input, the attention over its input norm); one kernel for decoding rows over a static cache."""
        if self.self_attn.block_fits(hidden_states, past_key_values, self.input_layernorm):
            return self.self_attn.block(hidden_states, residual, self.input_layernorm, position_embeddings, attention_mask,
                                        past_key_values, cache_position)  # fmt: skip
        if residual is None:
            residual, normed = hidden_states, self.input_layernorm(hidden_states)
        else:
            residual, normed = self.input_layernorm.add_and_norm(hidden_states, residual)
        return residual, self.self_attn(normed, position_embeddings, attention_mask, past_key_values, cache_position)


class DecoderPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    layer_class = DecoderLayer
    attention_options: dict = {}  # keyword arguments of layers.Attention
    mlp_options: dict = {}  # keyword arguments of layers.GatedMLP
    unit_offset_norm = False  # Gemma's (1 + weight) RMSNorm
    activation_key = "hidden_act"  # the config field naming the MLP activation
    scale_embeddings = False  # multiply embeddings by sqrt(hidden_size)
    # generate() recomputes the cache when LongRoPE switches factors (transformers does this for Phi-3 only)
    recompute_cache_at_rope_switch = False
    _supports_static_cache = True  # transformers' flag: generate() may preallocate a StaticCache

    # forward bookkeeping shared by the base models (DecoderModel and architectures with their own module names)
    def _cache_and_positions(self, inputs_embeds, past_key_values, use_cache, cache_position, position_ids):
        """(past_key_values, cache, past_length, cache_position, position_ids): a new DynamicCache when caching
        without one, the cache the layers write to (None without use_cache), the cache positions after the cached
        tokens and the position ids (the cache positions unless given)."""
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if cache_position is None:
            cache_position = arange(inputs_embeds.shape[1]) + past_length
        if position_ids is None:
            position_ids = cache_position.expand_dims(0)
        return past_key_values, past_key_values if use_cache else None, past_length, cache_position, position_ids

    def _mask(self, attention_mask, past_key_values, cache_position, seq_length, past_length, dtype, window):
        if past_key_values is not None and past_key_values.is_static:
            return past_key_values.attention_mask(attention_mask, cache_position, dtype, window)
        return causal_mask(attention_mask, seq_length, past_length, dtype, window)

    def _layers_stack(self) -> bool:
        """Whether one kernel can run all layers (backend.decoder_stack): one configuration, no sliding window,
        every layer's weights packed."""
        if not self.uniform_layers:
            return False
        for layer in self.layers:
            if layer.packed is None:
                return False
        return True

    @staticmethod
    def _output(hidden_states, cache, all_hidden_states, output_hidden_states, return_dict):
        if not return_dict:  # plain tuples are what compiled graphs return best
            return hidden_states, cache
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=cache,
            hidden_states=all_hidden_states + (hidden_states,) if output_hidden_states else None,
        )


class DecoderModel(DecoderPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, std=config.initializer_range)
        self.layers = nn.CellList([self.layer_class(config, i, type(self)) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, self.unit_offset_norm)
        self.rotary_emb = RotaryEmbedding(config)
        self.rotary_emb_local = _local_rotary(config)
        windows = {layer.sliding_window for layer in self.layers}
        self.sliding_window = max((w for w in windows if w is not None), default=None)
        self.uniform_layers = windows == {None} and len({_kernel_settings(layer) for layer in self.layers}) == 1
        self.embed_scale = config.hidden_size**0.5

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
        if self.scale_embeddings:
            inputs_embeds = inputs_embeds * ms.Tensor(self.embed_scale, inputs_embeds.dtype)
        past_key_values, cache, past_length, cache_position, position_ids = self._cache_and_positions(
            inputs_embeds, past_key_values, use_cache, cache_position, position_ids
        )
        seq_length, dtype = inputs_embeds.shape[1], inputs_embeds.dtype
        full_mask = self._mask(attention_mask, past_key_values, cache_position, seq_length, past_length, dtype, None)
        sliding_mask = full_mask
        if self.sliding_window is not None:
            sliding_mask = self._mask(
                attention_mask, past_key_values, cache_position, seq_length, past_length, dtype, self.sliding_window
            )
        global_rope = self.rotary_emb(inputs_embeds, position_ids)
        local_rope = self.rotary_emb_local(inputs_embeds, position_ids) if self.rotary_emb_local is not None else global_rope

        hidden_states, residual, all_hidden_states = inputs_embeds, None, ()
        layers = self._running_layers()
        static = cache is not None and cache.is_static
        if static and not output_hidden_states and backend.decoding_rows(inputs_embeds) and self._layers_stack():
            cos, sin = global_rope
            residual, hidden_states = backend.decoder_stack(inputs_embeds, layers, cos, sin, full_mask, cache,
                                                            cache_position, self.layers[0].self_attn.unused)  # fmt: skip
            return self._output(final_norm(self.norm, hidden_states, residual), cache, (), False, return_dict)
        for layer in layers:
            if output_hidden_states:
                all_hidden_states += (layer_input(hidden_states, residual),)
            if layer.sliding_window is None:
                hidden_states, residual = layer(hidden_states, residual, global_rope, full_mask, cache, cache_position)
            else:
                hidden_states, residual = layer(hidden_states, residual, local_rope, sliding_mask, cache, cache_position)
        normed = final_norm(self.norm, hidden_states, residual)
        return self._output(normed, cache, all_hidden_states, output_hidden_states, return_dict)

    def _running_layers(self):
        """Every layer, or only the first `config.num_hidden_layers` while early-exit drafting lowers it."""
        if self.config.num_hidden_layers < len(self.layers):
            return [self.layers[i] for i in range(self.config.num_hidden_layers)]
        return self.layers


def _kernel_settings(layer) -> tuple:
    """What the layer kernels are configured with, for checking that one setting serves every layer."""
    cells = (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp, layer.self_attn)
    configs = [getattr(cell, "kernel_config", None) for cell in cells]
    return (type(layer),) + tuple(None if c is None else tuple(c.asnumpy().ravel().tolist()) for c in configs)


def layer_input(hidden_states, residual):
    """A layer's input from the (output, residual) pair the previous layer returned."""
    return hidden_states if residual is None else hidden_states + residual


def final_norm(norm, hidden_states, residual):
    """The final norm of the last layer's (output, residual) pair, with their sum fused into it."""
    return norm(hidden_states) if residual is None else norm.add_and_norm(hidden_states, residual)[1]


def _local_rotary(config) -> Optional[RotaryEmbedding]:
    """Sliding-window layers with their own rope base (`rope_local_base_freq`, Gemma 3) get a default-scaled
    rotary embedding at that base; everywhere else all layers share one."""
    base = getattr(config, "rope_local_base_freq", None)
    if base is None:
        return None
    local = copy.deepcopy(config)
    local.rope_theta, local.rope_scaling = base, {"rope_type": "default"}
    return RotaryEmbedding(local)


def causal_lm_loss(logits, labels, ignore_index: int = -100):
    """Mean next-token cross entropy over labels that are not `ignore_index` (HF's shift-by-one convention)."""
    logits, targets = logits[:, :-1].astype(ms.float32), labels[:, 1:]
    valid = targets != ignore_index
    log_probs = ops.log_softmax(logits, -1)
    picked = ops.gather_elements(log_probs, -1, ops.where(valid, targets, 0).expand_dims(-1)).squeeze(-1)
    return -(picked * valid.astype(ms.float32)).sum() / valid.sum().astype(ms.float32)


class DecoderForCausalLM(DecoderPreTrainedModel, GenerationMixin):
    base_model_class = DecoderModel
    _tied_weights_keys = ["lm_head.weight"]
    _tp_plan = {"lm_head": "colwise_rep"}  # transformers': the vocabulary split, the logits gathered

    def __init__(self, config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.base_model_class(config))  # HF's name: model, transformer, ...
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, std=config.initializer_range)
        self.final_logit_softcapping = getattr(config, "final_logit_softcapping", None)
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
        outputs = getattr(self, self.base_model_prefix)(
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
        if logits_to_keep and logits_to_keep < hidden_states.shape[1]:  # a slice is a (slow) kernel even when it keeps all
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        if self.final_logit_softcapping is not None:
            logits = mint.tanh(logits / self.final_logit_softcapping) * self.final_logit_softcapping
        if not return_dict:
            return logits, outputs[1]
        return CausalLMOutputWithPast(
            loss=causal_lm_loss(logits, labels) if labels is not None else None,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )


def decoder_architecture(prefix: str, config_class, module: str, layer_base=DecoderLayer, model_name=None, **options):
    """Hugging Face-named classes (<prefix>DecoderLayer, <prefix>PreTrainedModel, <prefix>Model,
    <prefix>ForCausalLM) for an architecture that is the shared decoder with `options` (attention_options,
    mlp_options, unit_offset_norm, activation_key, scale_embeddings: the DecoderPreTrainedModel attributes). `model_name`
    overrides the base model's class name where Hugging Face's differs (Gemma3TextModel)."""
    layer = type(f"{prefix}DecoderLayer", (layer_base,), {"__module__": module})
    pretrained = type(
        f"{prefix}PreTrainedModel",
        (DecoderPreTrainedModel,),
        {"__module__": module, "config_class": config_class, "layer_class": layer,
         "_no_split_modules": [layer.__name__], **options},  # fmt: skip
    )
    model = type(model_name or f"{prefix}Model", (pretrained, DecoderModel), {"__module__": module})
    causal_lm = type(f"{prefix}ForCausalLM", (pretrained, DecoderForCausalLM), {"__module__": module, "base_model_class": model})
    return layer, pretrained, model, causal_lm
