"""transformers' own GenerationConfig, so defaults, validation and generation_config.json are identical, plus the
checks transformers leaves out: values it accepts silently although they cannot mean anything."""

from transformers import GenerationConfig
from transformers.generation.configuration_utils import GenerationMode

# field -> (whether a value is meaningful, the meaningful range, what the field means); None always passes
_MEANINGFUL = {
    "temperature": (lambda v: v >= 0, "[0, inf)", "logits are divided by it; 0 means greedy"),
    "top_k": (lambda v: v >= 0, "[0, inf)", "the number of most likely tokens kept; 0 keeps all"),
    "top_p": (lambda v: 0 < v <= 1, "(0, 1]", "the probability mass of the most likely tokens kept; 1.0 keeps all"),
    "typical_p": (lambda v: 0 < v <= 1, "(0, 1]", "the probability mass kept around the expected information; 1.0 keeps all"),
    "min_p": (lambda v: 0 <= v <= 1, "[0, 1]", "tokens below min_p times the top probability are dropped"),
    "epsilon_cutoff": (lambda v: 0 <= v < 1, "[0, 1)", "tokens below this probability are dropped; 0 keeps all"),
    "eta_cutoff": (lambda v: 0 <= v < 1, "[0, 1)", "an entropy-dependent probability floor; 0 keeps all"),
    "repetition_penalty": (lambda v: v > 0, "(0, inf)", "seen tokens' logits are divided by it (1.0: no penalty)"),
    "encoder_repetition_penalty": (lambda v: v > 0, "(0, inf)", "prompt tokens' logits are multiplied by it (1.0: none)"),
    "no_repeat_ngram_size": (lambda v: v >= 0, "[0, inf)", "n-grams of this size are never repeated; 0 turns it off"),
    "encoder_no_repeat_ngram_size": (lambda v: v >= 0, "[0, inf)", "prompt n-grams of this size are not repeated; 0 turns it off"),
    "num_beams": (lambda v: v >= 1, "[1, inf)", "the number of beams; 1 is no beam search"),
    "num_beam_groups": (lambda v: v >= 1, "[1, inf)", "the number of beam groups"),
    "num_return_sequences": (lambda v: v >= 1, "[1, inf)", "the number of sequences returned per prompt"),
    "diversity_penalty": (lambda v: v >= 0, "[0, inf)", "the penalty between beam groups"),
    "max_length": (lambda v: v >= 1, "[1, inf)", "the total length of prompt and new tokens"),
    "min_length": (lambda v: v >= 0, "[0, inf)", "the least total length"),
    "min_new_tokens": (lambda v: v >= 0, "[0, inf)", "the least number of new tokens"),
    "max_time": (lambda v: v > 0, "(0, inf)", "seconds of generation at most"),
    "prompt_lookup_num_tokens": (lambda v: v >= 1, "[1, inf)", "tokens copied from the prompt per step"),
    "num_assistant_tokens": (lambda v: v >= 1, "[1, inf)", "tokens the assistant model drafts per step"),
    "assistant_early_exit": (lambda v: v >= 1, "[1, inf)", "the number of the model's first layers that draft"),
    "prefill_chunk_size": (lambda v: v >= 1, "[1, inf)", "prompt tokens per prefill forward"),
}


def check_meaningful(config: GenerationConfig) -> None:
    """One-line ValueError for a value outside the range where its field means something (transformers accepts
    e.g. top_p=1.5 and then skips the warper, so the option silently does nothing)."""
    for name, (meaningful, allowed, meaning) in _MEANINGFUL.items():
        value = getattr(config, name, None)
        if value is None or isinstance(value, bool):
            continue
        if not meaningful(value):
            raise ValueError(f"{name}={value!r} is outside {allowed}: {meaning}")
    if config.diversity_penalty and (config.num_beam_groups or 1) <= 1:  # transformers then ignores it
        raise ValueError(f"diversity_penalty={config.diversity_penalty!r} acts only between beam groups "
                         "(num_beam_groups > 1, group beam search, which is not supported); leave it at 0.0")  # fmt: skip


__all__ = ["GenerationConfig", "GenerationMode", "check_meaningful"]
