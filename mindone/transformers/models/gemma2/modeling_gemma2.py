"""Gemma 2: Gemma plus norms after attention and around the MLP ("sandwich" blocks), attention and final logit
soft-capping, query scaling by query_pre_attn_scalar, and alternating sliding/global layers (config.layer_types).
The soft-capping and scaling are read from the config by the shared layers."""

from transformers import Gemma2Config

from ...modeling_decoder import DecoderLayer, decoder_architecture


class SandwichNormDecoderLayer(DecoderLayer):
    """x + post_attn_norm(attn(norm(x))), then + post_ff_norm(mlp(pre_ff_norm(x)))."""

    def __init__(self, config, layer_idx: int, options):
        super().__init__(config, layer_idx, options)
        self.pre_feedforward_layernorm = self.norm(config, options)
        self.post_feedforward_layernorm = self.norm(config, options)

    def construct(self, hidden_states, residual, position_embeddings, attention_mask=None, past_key_values=None,
                  cache_position=None):  # fmt: skip
        residual, attended = self.attend(hidden_states, residual, position_embeddings, attention_mask, past_key_values,
                                         cache_position)  # fmt: skip
        residual, normed = self.pre_feedforward_layernorm.add_and_norm(self.post_attention_layernorm(attended), residual)
        return self.post_feedforward_layernorm(self.mlp(normed)), residual

    def pack_weights(self, arena) -> None:
        """Not packed: the layer kernels have no place for the sandwich norms, so this layer runs its blocks."""


Gemma2DecoderLayer, Gemma2PreTrainedModel, Gemma2Model, Gemma2ForCausalLM = decoder_architecture(
    "Gemma2", Gemma2Config, __name__, layer_base=SandwichNormDecoderLayer,
    unit_offset_norm=True, activation_key="hidden_activation", scale_embeddings=True,
)  # fmt: skip
