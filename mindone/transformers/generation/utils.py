"""GenerationMixin.generate: Hugging Face's generate() API over MindSpore tensors.

Preparation (config merge, special tokens, attention mask, lengths, processors, stopping criteria) follows
transformers 4.57 step by step so warnings and errors match; decoding is one compact loop per strategy family."""

import copy
import logging
import warnings
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import mint

from .. import backend
from ..cache_utils import Cache, DynamicCache
from .configuration_utils import GenerationConfig
from .logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from .stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

logger = logging.getLogger(__name__)


def _as_id_tensor(ids) -> ms.Tensor:
    if isinstance(ids, ms.Tensor):
        return ids
    array = np.asarray(ids)
    if array.dtype.kind not in "iu":
        raise TypeError(f"input_ids must hold integer token ids, got dtype {array.dtype}")
    return ms.Tensor(array.astype(np.int64 if array.dtype.itemsize == 8 else np.int32))


def _id_list(value) -> Optional[list]:
    if value is None:
        return None
    if isinstance(value, ms.Tensor):
        value = value.asnumpy().tolist()
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


class GenerationMixin:
    """Mixed into causal LM cells; needs `self.config`, `self.generation_config` and a HF-style forward."""

    # ------------------------------------------------------------------ preparation
    def _prepare_generation_config(self, generation_config: Optional[GenerationConfig], use_model_defaults=None, **kwargs):
        if generation_config is None:
            generation_config = copy.deepcopy(self.generation_config)
        else:
            generation_config = copy.deepcopy(generation_config)
            if use_model_defaults is not False:
                self._fill_model_defaults(generation_config)
        model_kwargs = generation_config.update(**kwargs)
        generation_config.validate()
        return generation_config, model_kwargs

    def _fill_model_defaults(self, generation_config: GenerationConfig) -> None:
        """Values the user left at the library default take the model's own generation_config.json value."""
        defaults = GenerationConfig()
        for key, model_value in self.generation_config.__dict__.items():
            if key.startswith("_") or key == "transformers_version":
                continue
            default = getattr(defaults, key, None)
            if getattr(generation_config, key, None) == default and model_value != default:
                setattr(generation_config, key, model_value)

    def _prepare_special_tokens(self, generation_config: GenerationConfig, has_attention_mask: bool) -> None:
        eos = _id_list(generation_config.eos_token_id)
        pad = generation_config.pad_token_id
        if pad is None and eos is not None:
            if not has_attention_mask:
                logger.warning(
                    "The attention mask and the pad token id were not set. As a consequence, you may observe "
                    "unexpected behavior. Please pass your input's `attention_mask` to obtain reliable results."
                )
            pad = eos[0]
            logger.warning(f"Setting `pad_token_id` to `eos_token_id`:{pad} for open-end generation.")
        if eos is not None and pad in eos and not has_attention_mask:
            logger.warning(
                "The attention mask is not set and cannot be inferred from input because pad token is same as "
                "eos token. As a consequence, you may observe unexpected behavior. Please pass your input's "
                "`attention_mask` to obtain reliable results."
            )
        if eos is not None and any(token < 0 for token in eos):
            logger.warning(
                f"`eos_token_id` should consist of positive integers, but is {eos}. Your generation will not stop "
                "until the maximum length is reached. Depending on other flags, it may even crash."
            )
        generation_config._eos_token_list, generation_config._pad_token_id = eos, pad

    @staticmethod
    def _attention_mask_from_inputs(input_ids: ms.Tensor, generation_config: GenerationConfig) -> ms.Tensor:
        """All ones, unless the pad token occurs in the inputs and differs from eos (then pad positions are 0)."""
        pad, eos = generation_config._pad_token_id, generation_config._eos_token_list or []
        ones = mint.ones(input_ids.shape, dtype=ms.int32)
        if pad is None or pad in eos or not bool((input_ids == pad).any()):
            return ones
        return (input_ids != pad).astype(ms.int32)

    def _prepare_generated_length(self, generation_config, has_default_max_length: bool, input_length: int) -> None:
        if generation_config.max_new_tokens is not None:
            if not has_default_max_length and generation_config.max_length is not None:
                logger.warning(
                    f"Both `max_new_tokens` (={generation_config.max_new_tokens}) and `max_length`(="
                    f"{generation_config.max_length}) seem to have been set. `max_new_tokens` will take precedence. "
                    "Please refer to the documentation for more information. "
                    "(https://huggingface.co/docs/transformers/main/en/main_classes/text_generation)"
                )
            generation_config.max_length = generation_config.max_new_tokens + input_length
        elif has_default_max_length and generation_config.max_length == GenerationConfig().max_length:
            generation_config.max_length += input_length
            max_positions = getattr(self.config, "max_position_embeddings", None)
            if max_positions is not None:
                generation_config.max_length = min(generation_config.max_length, max_positions)
        if generation_config.min_new_tokens is not None:
            generation_config.min_length = generation_config.min_new_tokens + input_length

    @staticmethod
    def _validate_generated_length(generation_config, input_length: int, has_default_max_length: bool) -> None:
        if has_default_max_length and generation_config.max_new_tokens is None and generation_config.max_length == 20:
            warnings.warn(
                f"Using the model-agnostic default `max_length` (={generation_config.max_length}) to control the "
                "generation length. We recommend setting `max_new_tokens` to control the maximum length of the "
                "generation.",
                UserWarning,
            )
        if input_length >= generation_config.max_length:
            raise ValueError(
                f"Input length of input_ids is {input_length}, but `max_length` is set to"
                f" {generation_config.max_length}. This can lead to unexpected behavior. You should consider"
                " increasing `max_length` or, better yet, setting `max_new_tokens`."
            )

    def _get_logits_processor(self, generation_config, custom: Optional[LogitsProcessorList]) -> LogitsProcessorList:
        processors = LogitsProcessorList()
        if generation_config.do_sample:
            min_keep = 2 if generation_config.num_beams > 1 else 1
            if generation_config.temperature is not None and generation_config.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(generation_config.temperature))
            if generation_config.top_k is not None and generation_config.top_k != 0:
                processors.append(TopKLogitsWarper(generation_config.top_k, min_tokens_to_keep=min_keep))
            if generation_config.top_p is not None and generation_config.top_p < 1.0:
                processors.append(TopPLogitsWarper(generation_config.top_p, min_tokens_to_keep=min_keep))
        return _merge_custom(processors, custom, "logits processor")

    def _get_stopping_criteria(self, generation_config, custom: Optional[StoppingCriteriaList]) -> StoppingCriteriaList:
        criteria = StoppingCriteriaList()
        if generation_config.max_length is not None:
            max_positions = getattr(self.config, "max_position_embeddings", None)
            criteria.append(MaxLengthCriteria(generation_config.max_length, max_positions))
        if generation_config._eos_token_list is not None:
            criteria.append(EosTokenCriteria(generation_config._eos_token_list))
        return _merge_custom(criteria, custom, "stopping criteria")

    # ------------------------------------------------------------------ entry point
    def generate(
        self,
        inputs=None,
        generation_config: Optional[GenerationConfig] = None,
        logits_processor: Optional[LogitsProcessorList] = None,
        stopping_criteria: Optional[StoppingCriteriaList] = None,
        streamer=None,
        use_model_defaults: Optional[bool] = None,
        **kwargs,
    ) -> ms.Tensor:
        generation_config, model_kwargs = self._prepare_generation_config(generation_config, use_model_defaults, **kwargs)
        input_ids = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
        if input_ids is None:
            raise ValueError("generate() needs `input_ids` (a [batch, length] tensor of token ids)")
        input_ids = _as_id_tensor(input_ids)
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty [batch, length] tensor, got shape {tuple(input_ids.shape)}")
        attention_mask = model_kwargs.pop("attention_mask", None)
        self._prepare_special_tokens(generation_config, attention_mask is not None)
        self._warn_right_padding(input_ids, generation_config)
        if attention_mask is None:
            attention_mask = self._attention_mask_from_inputs(input_ids, generation_config)
        attention_mask = _as_id_tensor(attention_mask).astype(ms.int32)

        has_default_max_length = kwargs.get("max_length") is None and generation_config.max_length is not None
        self._prepare_generated_length(generation_config, has_default_max_length, input_ids.shape[1])
        self._validate_generated_length(generation_config, input_ids.shape[1], has_default_max_length)
        if generation_config.num_beams != 1:
            raise NotImplementedError("num_beams > 1 (beam search) is not available yet; use num_beams=1")

        return self._sample(
            input_ids,
            attention_mask,
            self._get_logits_processor(generation_config, logits_processor),
            self._get_stopping_criteria(generation_config, stopping_criteria),
            generation_config,
            streamer,
            past_key_values=model_kwargs.pop("past_key_values", None),
        )

    @staticmethod
    def _warn_right_padding(input_ids: ms.Tensor, generation_config) -> None:
        pad = generation_config._pad_token_id
        if pad is not None and input_ids.shape[0] > 1 and bool((input_ids[:, -1] == pad).any()):
            logger.warning(
                "A decoder-only architecture is being used, but right-padding was detected! For correct "
                "generation results, please set `padding_side='left'` when initializing the tokenizer."
            )

    # ------------------------------------------------------------------ decoding
    def _sample(self, input_ids, attention_mask, logits_processor, stopping_criteria, generation_config, streamer,
                past_key_values: Optional[Cache] = None) -> ms.Tensor:  # fmt: skip
        """Greedy decoding and multinomial sampling: one token per step for every row until all rows stop."""
        use_cache = generation_config.use_cache
        cache = (past_key_values if past_key_values is not None else DynamicCache()) if use_cache else None
        pad = generation_config._pad_token_id
        unfinished = mint.ones((input_ids.shape[0],), dtype=input_ids.dtype)
        if streamer is not None:
            streamer.put(input_ids)
        while True:
            logits = self._next_token_logits(input_ids, attention_mask, cache)
            scores = logits_processor(input_ids, logits)
            if generation_config.do_sample:
                next_tokens = backend.multinomial(mint.softmax(scores, dim=-1))
            else:
                next_tokens = backend.argmax(scores)
            next_tokens = next_tokens.astype(input_ids.dtype)
            if generation_config._eos_token_list is not None:
                next_tokens = next_tokens * unfinished + pad * (1 - unfinished)
            input_ids = mint.cat([input_ids, next_tokens.expand_dims(1)], dim=-1)
            attention_mask = mint.cat([attention_mask, mint.ones((attention_mask.shape[0], 1), dtype=ms.int32)], dim=-1)
            if streamer is not None:
                streamer.put(next_tokens)
            finished = stopping_criteria(input_ids, scores)
            unfinished = unfinished * mint.logical_not(finished).astype(unfinished.dtype)
            if int(unfinished.max()) == 0:
                break
        if streamer is not None:
            streamer.end()
        return input_ids

    def _next_token_logits(self, input_ids, attention_mask, cache: Optional[Cache]) -> ms.Tensor:
        """Runs the model on the tokens the cache has not seen; float32 logits of the last position."""
        position_ids = backend.cumsum(attention_mask, -1) - 1
        position_ids = mint.where(attention_mask == 0, ms.Tensor(1, position_ids.dtype), position_ids)
        seen = cache.get_seq_length() if cache is not None else 0
        outputs = self(
            input_ids=input_ids[:, seen:],
            attention_mask=attention_mask,
            position_ids=position_ids[:, seen:],
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=1,
        )
        return outputs.logits[:, -1, :].astype(ms.float32)


def _merge_custom(default_list, custom, kind: str):
    """A user-supplied processor/criterion replaces the built one of the same type in place (with HF's warning);
    the others are appended."""
    if not custom:
        return default_list
    merged = type(default_list)()
    for default in default_list:
        replacement = next((item for item in custom if type(item) is type(default)), None)
        if replacement is not None:
            logger.warning(
                f"A custom {kind} of type {type(replacement)} has been passed to `.generate()`, but it was also "
                f"created in `.generate()`, given its parameterization. The custom {type(replacement)} will take "
                f"precedence. Please check the docstring of {type(replacement)} to see related `.generate()` flags."
            )
        merged.append(replacement if replacement is not None else default)
    merged.extend(item for item in custom if item not in merged)
    return merged
