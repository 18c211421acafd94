"""GenerationMixin.generate: Hugging Face's generate() API over MindSpore tensors.

Preparation (config merge, special tokens, attention mask, lengths, processors, stopping criteria) follows
transformers 4.57 step by step so warnings and errors match; decoding is one compact loop per strategy family:
`_sample` (greedy and multinomial), `_beam_search` (beam search and beam sampling) and `_assisted_decoding`
(prompt lookup and draft models, in candidate_generator.py)."""

import contextlib
import copy
import functools
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import mindspore as ms
import numpy as np
from mindspore import mint, ops
from packaging import version
from transformers.utils import ModelOutput

from .. import backend
from ..cache_utils import Cache, DynamicCache
from . import logits_process as lp
from .candidate_generator import AssistedCandidateGenerator, get_candidate_generator, speculative_sampling
from .continuous_batching import ContinuousMixin
from .configuration_utils import GenerationConfig, GenerationMode, check_meaningful
from .decoders import DynamicDecoder, make_decoder
from .device_head import DeviceHead, draw_uniforms, sample_tokens
from .stopping_criteria import (
    ConfidenceCriteria,
    EosTokenCriteria,
    MaxLengthCriteria,
    MaxTimeCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

logger = logging.getLogger(__name__)
warning_once = functools.lru_cache(None)(logger.warning)  # transformers' logger.warning_once: each text once
_SCOPES = threading.Lock()


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    sequences: Any = None
    scores: Optional[tuple] = None
    logits: Optional[tuple] = None
    attentions: Optional[tuple] = None
    hidden_states: Optional[tuple] = None
    past_key_values: Optional[Any] = None


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    sequences: Any = None
    sequences_scores: Any = None
    scores: Optional[tuple] = None
    logits: Optional[tuple] = None
    beam_indices: Any = None
    attentions: Optional[tuple] = None
    hidden_states: Optional[tuple] = None
    past_key_values: Optional[Any] = None


# transformers' older names of the same outputs
GreedySearchDecoderOnlyOutput = SampleDecoderOnlyOutput = GenerateDecoderOnlyOutput
BeamSearchDecoderOnlyOutput = BeamSampleDecoderOnlyOutput = GenerateBeamDecoderOnlyOutput


def _optional_ids(ids) -> Optional[ms.Tensor]:
    return None if ids is None else _as_id_tensor(ids).astype(ms.int32)


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


def _repeat_rows(tensor: ms.Tensor, times: int) -> ms.Tensor:
    """Each row repeated `times` times in place (row 0, row 0, row 1, row 1, ...), like repeat_interleave."""
    if times == 1:
        return tensor
    index = ms.Tensor(np.repeat(np.arange(tensor.shape[0]), times).astype(np.int32))
    return ops.gather(tensor, index, 0)


_MODEL_KWARGS = {"attention_mask", "past_key_values", "use_cache", "negative_prompt_ids", "negative_prompt_attention_mask"}


class GenerationMixin(ContinuousMixin):
    """Mixed into causal LM cells; needs `self.config`, `self.generation_config` and a HF-style forward."""

    # ------------------------------------------------------------------ preparation
    def _prepare_generation_config(self, generation_config: Optional[GenerationConfig], use_model_defaults=None, **kwargs):
        if generation_config is None:
            generation_config = copy.deepcopy(self.generation_config)
        else:
            generation_config = copy.deepcopy(generation_config)
            if use_model_defaults is True or (use_model_defaults is None and self._saved_with_model_defaults()):
                self._fill_model_defaults(generation_config, warn=use_model_defaults is None)
            else:
                self._fill_special_tokens(generation_config)
        model_kwargs = generation_config.update(**kwargs)
        generation_config.validate()
        return generation_config, model_kwargs

    def _saved_with_model_defaults(self) -> bool:
        """transformers merges model defaults into a passed config only for generation configs saved by >= 4.50."""
        saved_by = version.parse(self.generation_config.transformers_version or "0")
        return version.parse(saved_by.base_version) >= version.parse("4.50.0")

    def _fill_model_defaults(self, generation_config: GenerationConfig, warn: bool) -> None:
        """Values the user left at the library default take the model's own generation_config.json value."""
        defaults, modified = GenerationConfig(), {}
        for key, model_value in self.generation_config.__dict__.items():
            if key.startswith("_") or key == "transformers_version":
                continue
            default = getattr(defaults, key, None)
            if getattr(generation_config, key, None) == default and model_value != default:
                modified[key] = model_value
                setattr(generation_config, key, model_value)
        if generation_config.temperature == 0.0:  # temperature 0 means greedy even where the model samples
            generation_config.do_sample = False
        if warn and modified:
            warning_once(
                f"`generation_config` default values have been modified to match model-specific defaults: "
                f"{modified}. If this is not desired, please set these values explicitly."
            )

    def _fill_special_tokens(self, generation_config: GenerationConfig) -> None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            if getattr(generation_config, key) is None:
                setattr(generation_config, key, getattr(self.generation_config, key))

    @staticmethod
    def _validate_model_kwargs(model_kwargs: dict) -> None:
        unused = [key for key, value in model_kwargs.items() if value is not None and key not in _MODEL_KWARGS]
        if unused:
            raise ValueError(
                f"The following `model_kwargs` are not used by the model: {unused} (note: typos in the"
                " generate arguments will also show up in this list)"
            )

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

    @staticmethod
    def _warn_right_padding(input_ids: ms.Tensor, generation_config) -> None:
        pad = generation_config._pad_token_id
        if pad is not None and input_ids.shape[0] > 1 and bool((input_ids[:, -1] == pad).any()):
            logger.warning(
                "A decoder-only architecture is being used, but right-padding was detected! For correct "
                "generation results, please set `padding_side='left'` when initializing the tokenizer."
            )

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
        suffix = (
            " Generation will stop at the defined maximum length. You should decrease the minimum length and/or "
            "increase the maximum length."
        )
        if generation_config.min_length is not None and generation_config.min_length > generation_config.max_length:
            warnings.warn(
                f"Unfeasible length constraints: `min_length` ({generation_config.min_length}) is larger than"
                f" the maximum possible length ({generation_config.max_length})." + suffix,
                UserWarning,
            )

    def _get_logits_processor(
        self, generation_config, input_length: int, prefix_allowed_tokens_fn, custom, encoder_input_ids=None,
        negative_prompt_ids=None, negative_prompt_attention_mask=None,
    ) -> lp.LogitsProcessorList:
        """Processors in transformers' order; custom ones merged before the sampling warpers, as HF does.
        `encoder_input_ids`: the prompts [batch, length], which the encoder_* processors read (for a decoder-only
        model transformers passes its input ids)."""
        gc, eos = generation_config, generation_config._eos_token_list
        processors = lp.LogitsProcessorList()
        if gc.guidance_scale is not None and gc.guidance_scale != 1:
            processors.append(lp.UnbatchedClassifierFreeGuidanceLogitsProcessor(
                gc.guidance_scale, self, _optional_ids(negative_prompt_ids), _optional_ids(negative_prompt_attention_mask),
                gc.use_cache))  # fmt: skip
        if gc.sequence_bias is not None:
            processors.append(lp.SequenceBiasLogitsProcessor(gc.sequence_bias))
        prompts = encoder_input_ids is not None
        if gc.encoder_repetition_penalty is not None and gc.encoder_repetition_penalty != 1.0:
            _check_prompts(prompts, "encoder_repetition_penalty")
            processors.append(lp.EncoderRepetitionPenaltyLogitsProcessor(gc.encoder_repetition_penalty, encoder_input_ids))
        if gc.repetition_penalty is not None and gc.repetition_penalty != 1.0:
            processors.append(lp.RepetitionPenaltyLogitsProcessor(gc.repetition_penalty))
        if gc.no_repeat_ngram_size is not None and gc.no_repeat_ngram_size > 0:
            processors.append(lp.NoRepeatNGramLogitsProcessor(gc.no_repeat_ngram_size))
        if gc.encoder_no_repeat_ngram_size is not None and gc.encoder_no_repeat_ngram_size > 0:
            _check_prompts(prompts, "encoder_no_repeat_ngram_size")
            processors.append(lp.EncoderNoRepeatNGramLogitsProcessor(gc.encoder_no_repeat_ngram_size, encoder_input_ids))
        if gc.bad_words_ids is not None:
            processors.append(lp.NoBadWordsLogitsProcessor(gc.bad_words_ids, eos))
        if gc.min_length is not None and eos is not None and gc.min_length > 0:
            processors.append(lp.MinLengthLogitsProcessor(gc.min_length, eos))
        if gc.min_new_tokens is not None and eos is not None and gc.min_new_tokens > 0:
            processors.append(lp.MinNewTokensLengthLogitsProcessor(input_length, gc.min_new_tokens, eos))
        if prefix_allowed_tokens_fn is not None:
            processors.append(lp.PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn, gc.num_beams))
        if gc.forced_bos_token_id is not None:
            processors.append(lp.ForcedBOSTokenLogitsProcessor(gc.forced_bos_token_id))
        if gc.forced_eos_token_id is not None:
            processors.append(lp.ForcedEOSTokenLogitsProcessor(gc.max_length, gc.forced_eos_token_id))
        if gc.remove_invalid_values is True:
            processors.append(lp.InfNanRemoveLogitsProcessor())
        if gc.exponential_decay_length_penalty is not None:
            processors.append(lp.ExponentialDecayLengthPenalty(gc.exponential_decay_length_penalty, eos, input_length))
        if gc.suppress_tokens is not None:
            processors.append(lp.SuppressTokensLogitsProcessor(gc.suppress_tokens))
        if gc.begin_suppress_tokens is not None:
            begin = input_length if (input_length > 1 or gc.forced_bos_token_id is None) else input_length + 1
            processors.append(lp.SuppressTokensAtBeginLogitsProcessor(gc.begin_suppress_tokens, begin))
        processors = _merge_custom(processors, custom, "logits processor")
        if gc.do_sample:
            processors.extend(self._sampling_warpers(gc))
        if gc.watermarking_config is not None:
            processors.append(self._watermark_processor(gc.watermarking_config))
        if gc.renormalize_logits is True:
            processors.append(lp.LogitNormalization())
        return processors

    def _watermark_processor(self, config):
        """transformers' config.construct_processor(vocab_size, device), building this library's processor."""
        from transformers.generation import SynthIDTextWatermarkingConfig, WatermarkingConfig

        from .synthid import SynthIDTextWatermarkLogitsProcessor
        from .watermarking import WatermarkLogitsProcessor

        if isinstance(config, SynthIDTextWatermarkingConfig):
            return SynthIDTextWatermarkLogitsProcessor(**config.to_dict(), device=None)
        if not isinstance(config, WatermarkingConfig):
            raise NotImplementedError(
                f"{type(config).__name__} is not supported; use WatermarkingConfig or SynthIDTextWatermarkingConfig"
            )
        return WatermarkLogitsProcessor(self.config.get_text_config().vocab_size, None, **config.to_dict())

    @staticmethod
    def _sampling_warpers(gc) -> list:
        keep = (len(gc._eos_token_list or []) + 1 if gc._eos_token_list else 2) if gc.num_beams > 1 else 1
        warpers = []
        if gc.temperature is not None and gc.temperature != 1.0:
            warpers.append(lp.TemperatureLogitsWarper(gc.temperature))
        if gc.top_k is not None and gc.top_k != 0:
            warpers.append(lp.TopKLogitsWarper(gc.top_k, min_tokens_to_keep=keep))
        if gc.top_p is not None and gc.top_p < 1.0:
            warpers.append(lp.TopPLogitsWarper(gc.top_p, min_tokens_to_keep=keep))
        if gc.min_p is not None:
            warpers.append(lp.MinPLogitsWarper(gc.min_p, min_tokens_to_keep=keep))
        if gc.typical_p is not None and gc.typical_p < 1.0:
            warpers.append(lp.TypicalLogitsWarper(gc.typical_p, min_tokens_to_keep=keep))
        if gc.epsilon_cutoff is not None and 0.0 < gc.epsilon_cutoff < 1.0:
            warpers.append(lp.EpsilonLogitsWarper(gc.epsilon_cutoff, min_tokens_to_keep=keep))
        if gc.eta_cutoff is not None and 0.0 < gc.eta_cutoff < 1.0:
            warpers.append(lp.EtaLogitsWarper(gc.eta_cutoff, min_tokens_to_keep=keep))
        return warpers

    def _get_stopping_criteria(self, generation_config, custom, tokenizer=None) -> StoppingCriteriaList:
        criteria = StoppingCriteriaList()
        if generation_config.max_length is not None:
            max_positions = getattr(self.config, "max_position_embeddings", None)
            criteria.append(MaxLengthCriteria(generation_config.max_length, max_positions))
        if generation_config.max_time is not None:
            if self.__dict__.get("tensor_parallel") is not None:
                raise ValueError("max_time stops each rank by its own clock, so tensor-parallel ranks would stop at "
                                 "different steps and wait for each other forever; bound the reply with max_new_tokens")  # fmt: skip
            criteria.append(MaxTimeCriteria(generation_config.max_time))
        if generation_config.stop_strings is not None:
            if tokenizer is None:
                raise ValueError(
                    "There are one or more stop strings, either in the arguments to `generate` or in the "
                    "model's generation config, but we could not locate a tokenizer. When generating with "
                    "stop strings, you must pass the model's tokenizer to the `tokenizer` argument of `generate`."
                )
            criteria.append(StopStringCriteria(tokenizer, generation_config.stop_strings))
        if generation_config._eos_token_list is not None:
            criteria.append(EosTokenCriteria(generation_config._eos_token_list))
        if generation_config.is_assistant and (generation_config.assistant_confidence_threshold or 0) > 0:
            criteria.append(ConfidenceCriteria(generation_config.assistant_confidence_threshold))
        return _merge_custom(criteria, custom, "stopping criteria")

    # ------------------------------------------------------------------ entry point
    def generate(
        self,
        inputs=None,
        generation_config: Optional[GenerationConfig] = None,
        logits_processor: Optional[lp.LogitsProcessorList] = None,
        stopping_criteria: Optional[StoppingCriteriaList] = None,
        prefix_allowed_tokens_fn: Optional[Callable] = None,
        assistant_model=None,
        streamer=None,
        use_model_defaults: Optional[bool] = None,
        **kwargs,
    ):
        with self._generation_scope():
            return self._generate(inputs, generation_config, logits_processor, stopping_criteria,
                                  prefix_allowed_tokens_fn, assistant_model, streamer, use_model_defaults, **kwargs)

    @contextlib.contextmanager
    def _generation_scope(self):
        """Checks the weights once (before a compiled step is chosen) instead of in every forward inside."""
        self.check_weights()
        with _SCOPES:  # a count, so that nested calls and other threads' calls (a batching manager) can overlap
            self.__dict__["generating"] = self.__dict__.get("generating", 0) + 1
        try:
            yield
        finally:
            with _SCOPES:
                self.__dict__["generating"] -= 1

    def _generate(self, inputs, generation_config, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
                  assistant_model, streamer, use_model_defaults, **kwargs):  # fmt: skip
        tokenizer = kwargs.pop("tokenizer", None)
        if kwargs.pop("assistant_tokenizer", None) is not None:
            raise NotImplementedError("assistant models with a different tokenizer (assistant_tokenizer) are not supported")
        passed_config = generation_config
        generation_config, model_kwargs = self._prepare_generation_config(generation_config, use_model_defaults, **kwargs)
        input_ids = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
        if input_ids is None:  # transformers starts one row from bos_token_id
            input_ids = _bos_prompt(generation_config)
        input_ids = _as_id_tensor(input_ids)
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty [batch, length] tensor, got shape {tuple(input_ids.shape)}")
        self._validate_model_kwargs(model_kwargs)
        attention_mask = model_kwargs.pop("attention_mask", None)
        self._prepare_special_tokens(generation_config, attention_mask is not None)
        self._warn_right_padding(input_ids, generation_config)
        if attention_mask is None:
            attention_mask = self._attention_mask_from_inputs(input_ids, generation_config)
        attention_mask = _as_id_tensor(attention_mask).astype(ms.int32)

        _check_supported(generation_config)
        drafter = assistant_model if generation_config.assistant_early_exit is None else self
        _check_assistant_settings(kwargs, passed_config, drafter)
        mode = generation_config.get_generation_mode(assistant_model)
        if streamer is not None and generation_config.num_beams > 1:
            raise ValueError("`streamer` cannot be used with beam search (yet!). Make sure that `num_beams` is set to 1.")
        input_length = input_ids.shape[1]
        has_default_max_length = kwargs.get("max_length") is None and generation_config.max_length is not None
        self._prepare_generated_length(generation_config, has_default_max_length, input_length)
        self._validate_generated_length(generation_config, input_length, has_default_max_length)

        processors = self._get_logits_processor(generation_config, input_length, prefix_allowed_tokens_fn, logits_processor,
                                                input_ids, model_kwargs.pop("negative_prompt_ids", None),
                                                model_kwargs.pop("negative_prompt_attention_mask", None))  # fmt: skip
        check_meaningful(generation_config)  # after transformers' own errors, for what transformers lets through
        criteria = self._get_stopping_criteria(generation_config, stopping_criteria, tokenizer)
        cache = model_kwargs.get("past_key_values")
        if isinstance(cache, (tuple, list)):  # legacy ((key, value), ...) per layer, converted as transformers does
            cache = DynamicCache.from_legacy_cache(cache)
        if cache is not None and generation_config.cache_implementation is not None:
            raise ValueError(
                "Passing both `cache_implementation` (used to initialize certain caches) and `past_key_values` (a "
                "Cache object) is unsupported. Please use only one of the two."
            )

        if generation_config.token_healing:
            input_ids = self.heal_tokens(input_ids, tokenizer)
            if tuple(input_ids.shape) != tuple(attention_mask.shape):  # the prompts were re-tokenized
                attention_mask = self._attention_mask_from_inputs(input_ids, generation_config).astype(ms.int32)
        if mode in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
            times = generation_config.num_return_sequences
            input_ids, attention_mask = _repeat_rows(input_ids, times), _repeat_rows(attention_mask, times)
            if streamer is not None:
                streamer.put(input_ids)
            return self._sample(input_ids, attention_mask, processors, criteria, generation_config, streamer, cache)
        if mode in (GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE):
            times = generation_config.num_beams
            return self._beam_search(_repeat_rows(input_ids, times), _repeat_rows(attention_mask, times), processors,
                                     criteria, generation_config, cache)  # fmt: skip
        if mode == GenerationMode.ASSISTED_GENERATION:
            if streamer is not None:
                streamer.put(input_ids)
            return self._assisted_decoding(input_ids, attention_mask, processors, criteria, generation_config,
                                           streamer, assistant_model)  # fmt: skip
        raise NotImplementedError(f"{MOVED_TO_THE_HUB.get(mode, mode.value)} is not supported (transformers 4.57 "
                                  "moved it to Hub custom_generate code); use greedy, sampling, beam search or assisted "
                                  "decoding")  # fmt: skip

    def heal_tokens(self, input_ids, tokenizer=None) -> ms.Tensor:
        """transformers' token healing: each prompt (decoded, stripped, re-tokenized) loses its last token, which one
        greedy step then regenerates among the vocabulary entries that extend it (favouring the original a little),
        so a prompt cut inside a word ("http" -> "https") continues naturally."""
        from transformers.tokenization_utils import ExtensionsTrie

        if tokenizer is None:
            raise ValueError(" When generating with token healing, you must pass the model's tokenizer to the "
                             "`tokenizer` argument of `generate`.")  # fmt: skip
        bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        trie = ExtensionsTrie(tokenizer.get_vocab())
        config = GenerationConfig(max_new_tokens=1, pad_token_id=pad)
        prompts = [p.strip() for p in tokenizer.batch_decode(lp.host_array(input_ids), skip_special_tokens=True)]
        ids = np.asarray(tokenizer(prompts, return_tensors="np", padding=True).input_ids)
        ids = np.where(ids == bos, pad, ids)  # healing is not conditioned on bos
        if ids.size == 0:
            return ms.Tensor(ids)
        tails = ids[:, -1].tolist()
        space = tokenizer.convert_tokens_to_ids(" ")
        space_token = tokenizer.convert_ids_to_tokens(space)[0] if space is not None else None
        for row, tail in enumerate(tails):
            text = tokenizer.decode(tail)
            text = text.replace(" ", space_token) if space_token is not None else text
            if (ids[row] == pad).all() or ids.shape[1] < 2:
                continue
            bias = {(tokenizer.convert_tokens_to_ids(alternative),): 10.0 for alternative in trie.extensions(prefix=text)}
            if len(bias) == 1:
                continue  # nothing to heal with
            bias[(tail,)] += 1.0
            config.update(sequence_bias=bias)
            trimmed = ids[row, :-1].copy()
            if (ids[row] != pad).sum() == 1:  # a one-token prompt regenerates from bos
                trimmed[-1] = bos
            ids[row] = self.generate(ms.Tensor(trimmed[None]), generation_config=config).asnumpy()[0]
        return ms.Tensor(ids)

    # ------------------------------------------------------------------ greedy / sampling
    def _sample(self, input_ids, attention_mask, logits_processor, stopping_criteria, generation_config, streamer,
                cache: Optional[Cache] = None):  # fmt: skip
        """Greedy decoding and multinomial sampling: one token per step for every row until all rows stop.

        The sequences live on the host (numpy). With a device head the processors and the choice run inside the
        model's step and only the chosen tokens come back; otherwise the logits come back and the processors run
        here, op by op."""
        gc = generation_config
        batch = input_ids.shape[0]
        decoder = make_decoder(self, gc, batch, input_ids.shape[1], cache)
        record_scores = gc.return_dict_in_generate and gc.output_scores
        record_logits = gc.return_dict_in_generate and gc.output_logits
        head = DeviceHead.build(logits_processor, gc, self.config.get_text_config().vocab_size)
        ids, mask = input_ids.asnumpy(), attention_mask.asnumpy()
        all_scores, all_logits = [], []
        unfinished = np.ones(batch, bool)
        while True:
            scores = logits = None
            if head is not None:
                outputs = decoder.select(ids, mask, head)
                if head.return_scores:
                    scores, logits = outputs[1], outputs[2]
                next_tokens = outputs[0].asnumpy()
            else:
                logits = decoder.logits(ids, mask)[:, -1, :]
                scores = logits_processor(ms.Tensor(ids), logits)
                if gc.do_sample:
                    next_tokens = sample_tokens(mint.softmax(scores, dim=-1), ms.Tensor(draw_uniforms(batch)))
                else:
                    next_tokens = backend.argmax(scores)
                next_tokens = next_tokens.asnumpy()
            all_scores += [scores] if record_scores else []
            all_logits += [logits] if record_logits else []
            if gc._eos_token_list is not None:
                next_tokens = np.where(unfinished, next_tokens, gc._pad_token_id)
            ids = np.concatenate([ids, next_tokens.reshape(-1, 1).astype(ids.dtype)], -1)
            mask = np.concatenate([mask, np.ones((batch, 1), mask.dtype)], -1)
            if streamer is not None:
                streamer.put(ms.Tensor(next_tokens.astype(ids.dtype)))
            unfinished &= ~stopping_criteria.host_done(ids, tuple(all_scores) if record_scores else None)
            if not unfinished.any():
                break
        return _finish(ms.Tensor(ids, input_ids.dtype), gc, streamer, all_scores, all_logits, decoder.returned_cache())

    # ------------------------------------------------------------------ beam search
    def _beam_search(self, input_ids, attention_mask, logits_processor, stopping_criteria, generation_config,
                     cache: Optional[Cache] = None):  # fmt: skip
        """Beam search and beam sampling, step for step the algorithm of transformers 4.57 (vectorised over the
        batch): keep the best `num_beams` running hypotheses and the best `num_beams` finished ones per row.

        The model runs on device; the small [batch, beams] bookkeeping runs in numpy."""
        if generation_config.low_memory:  # transformers' error
            raise ValueError("`low_memory=True` is not supported after the beam search refactor. Please check the "
                             "discussion in #35802 *after the PR got merged*, and add a comment there if your questions "
                             "are not yet answered.")  # fmt: skip
        search = _BeamSearchState(generation_config, input_ids, self.config.get_text_config().vocab_size)
        decoder = make_decoder(self, generation_config, input_ids.shape[0], input_ids.shape[1], cache)
        record_scores = generation_config.return_dict_in_generate and generation_config.output_scores
        record_logits = generation_config.return_dict_in_generate and generation_config.output_logits
        all_scores, all_logits = [], []
        while True:
            running = ms.Tensor(search.flat_running(), input_ids.dtype)
            logits = decoder.logits(running, attention_mask)[:, -1, :]
            log_probs = logits_processor(running, ops.log_softmax(logits, -1))
            all_scores += [log_probs] if record_scores else []
            all_logits += [logits] if record_logits else []
            candidates = search.top_candidates(log_probs, generation_config.do_sample)
            hits = stopping_criteria(ms.Tensor(candidates, input_ids.dtype), tuple(all_scores) or None)
            decoder.reorder(ms.Tensor(search.advance(hits.asnumpy())))
            attention_mask = mint.cat([attention_mask, mint.ones((attention_mask.shape[0], 1), dtype=ms.int32)], dim=-1)
            if search.done():
                break
        sequences, sequences_scores, beam_indices = search.result(generation_config.num_return_sequences)
        sequences = ms.Tensor(sequences, input_ids.dtype)
        if not generation_config.return_dict_in_generate:
            return sequences
        return GenerateBeamDecoderOnlyOutput(
            sequences=sequences,
            sequences_scores=ms.Tensor(sequences_scores) if generation_config.output_scores else None,
            scores=tuple(all_scores) if record_scores else None,
            logits=tuple(all_logits) if record_logits else None,
            beam_indices=ms.Tensor(beam_indices),
            past_key_values=_returned_cache(decoder.returned_cache(), generation_config),
        )

    # ------------------------------------------------------------------ assisted decoding
    def _assisted_decoding(self, input_ids, attention_mask, logits_processor, stopping_criteria, generation_config,
                           streamer, assistant_model=None):  # fmt: skip
        """Prompt lookup or draft-model candidates, verified by one forward pass of this model per round."""
        gc = generation_config
        if not gc.use_cache:
            raise ValueError("assisted generate requires `use_cache=True`")
        if input_ids.shape[0] > 1:
            raise ValueError("assisted generate is only supported for batch_size = 1")
        if gc.num_return_sequences > 1:
            raise ValueError(f"num_return_sequences has to be 1 when doing assisted generate, but is {gc.num_return_sequences}.")
        if gc.cache_implementation == "static" or ms.get_context("mode") == ms.GRAPH_MODE:
            raise ValueError("assisted generate is not supported with Static cache classes`")
        generator = get_candidate_generator(self, gc, input_ids, logits_processor, {"attention_mask": attention_mask},
                                            assistant_model)  # fmt: skip
        decoder = DynamicDecoder(self, gc, DynamicCache())
        all_scores, all_logits = [], []
        while True:
            length = input_ids.shape[1]
            candidate_ids, draft_scores = generator.get_candidates(input_ids)
            k = candidate_ids.shape[1] - length
            candidates = candidate_ids.asnumpy()[0, length:]
            is_done_candidate = k > 0 and bool(stopping_criteria(candidate_ids, None)[0])
            mask = mint.cat([attention_mask, mint.ones((1, k), dtype=ms.int32)], dim=-1)
            logits = decoder.logits(candidate_ids, mask, logits_to_keep=k + 1)[0]
            scores = mint.cat([logits_processor(candidate_ids[:, : length + i], logits[i : i + 1]) for i in range(k + 1)])
            if gc.do_sample and draft_scores is not None:
                accepted, matches = speculative_sampling(candidates, draft_scores[0], scores, is_done_candidate)
            else:
                choice = backend.multinomial(mint.softmax(scores, dim=-1)) if gc.do_sample else backend.argmax(scores)
                choice = choice.asnumpy()
                matches = int((np.cumsum(candidates != choice[:k]) < 1).sum())
                matches -= int(is_done_candidate and matches == k)
                accepted = choice[: matches + 1]
            new_tokens = ms.Tensor(np.asarray(accepted).reshape(1, -1), input_ids.dtype)
            input_ids = mint.cat([input_ids, new_tokens], dim=-1)
            attention_mask = mint.cat([attention_mask, mint.ones(new_tokens.shape, dtype=ms.int32)], dim=-1)
            if streamer is not None:
                streamer.put(new_tokens)
            decoder.cache.crop(input_ids.shape[1] - 1)
            generator.update_candidate_strategy(input_ids, scores.expand_dims(0), matches)
            all_scores += [scores[i : i + 1] for i in range(matches + 1)]
            all_logits += [logits[i : i + 1] for i in range(matches + 1)]
            if bool(stopping_criteria(input_ids, tuple(all_scores)).all()):
                break
        _keep_learned_draft_length(generator)
        return _finish(input_ids, gc, streamer, all_scores, all_logits, decoder.returned_cache())

    # ------------------------------------------------------------------ scores of chosen tokens
    def compute_transition_scores(self, sequences, scores, beam_indices=None, normalize_logits: bool = False):
        """Score of each generated token (from `scores` or beam search's processed log-probs), as in HF."""
        vocab = self.config.get_text_config().vocab_size
        steps = np.stack([s.asnumpy() for s in scores])  # [steps, rows * beams, vocab]
        if normalize_logits:
            steps = steps - np.log(np.exp(steps - steps.max(-1, keepdims=True)).sum(-1, keepdims=True)) - steps.max(-1, keepdims=True)
        flat = steps.reshape(len(scores), -1).T  # [rows * beams * vocab, steps]
        if beam_indices is None:
            beam_indices = np.broadcast_to(np.arange(steps.shape[1])[:, None], (steps.shape[1], len(scores)))
        else:
            beam_indices = beam_indices.asnumpy() if isinstance(beam_indices, ms.Tensor) else np.asarray(beam_indices)
        padding = beam_indices < 0
        length = int((~padding).sum(-1).max())
        beam_indices = np.where(padding, 0, beam_indices)[:, :length]
        sequences = sequences.asnumpy() if isinstance(sequences, ms.Tensor) else np.asarray(sequences)
        indices = sequences[:, sequences.shape[-1] - length :] + beam_indices * vocab
        transition = np.take_along_axis(flat, indices, axis=0)
        return ms.Tensor(np.where(padding[:, :length], 0.0, transition).astype(np.float32))


def _finish(sequences, generation_config, streamer, scores: list, logits: list, cache):
    """Closes the streamer and returns the sequences, or HF's output object when return_dict_in_generate is set."""
    if streamer is not None:
        streamer.end()
    if not generation_config.return_dict_in_generate:
        return sequences
    return GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=tuple(scores) if generation_config.output_scores else None,
        logits=tuple(logits) if generation_config.output_logits else None,
        past_key_values=_returned_cache(cache, generation_config),
    )


def _returned_cache(cache, generation_config):
    """The output's past_key_values; legacy ((key, value), ...) tuples for return_legacy_cache=True, as transformers."""
    if generation_config.return_legacy_cache is True and cache is not None:
        return cache.to_legacy_cache()
    return cache


def _bos_prompt(generation_config) -> np.ndarray:
    """transformers' input_ids when none are given: one row holding bos_token_id."""
    if generation_config.bos_token_id is None:
        raise ValueError("`bos_token_id` has to be defined when no `input_ids` are provided.")
    return np.array([[generation_config.bos_token_id]], np.int64)


class _BeamSearchState:
    """The running and finished hypotheses of a beam search, [batch, beams, ...] numpy arrays."""

    def __init__(self, gc, input_ids: ms.Tensor, vocab_size: int):
        self.num_beams, self.vocab_size = gc.num_beams, vocab_size
        self.length_penalty, self.early_stopping = gc.length_penalty, gc.early_stopping
        self.max_length = gc.max_length
        flat = input_ids.asnumpy().astype(np.int64)
        self.batch, self.cur_len = flat.shape[0] // self.num_beams, flat.shape[1]
        self.prompt_len = self.cur_len
        eos, pad = gc._eos_token_list, gc._pad_token_id
        self.beams_to_keep = max(2, 1 + len(eos or [])) * self.num_beams
        self.top_beam_mask = np.arange(self.beams_to_keep) < self.num_beams
        fill = (pad or eos[0]) if eos is not None else -1  # transformers' precedence: a pad id of 0 falls back to eos
        b, n = self.batch, self.num_beams
        self.running = np.full((b, n, self.max_length), fill, np.int64)
        self.running[:, :, : self.cur_len] = flat.reshape(b, n, -1)
        self.sequences = self.running.copy()
        self.running_scores = np.zeros((b, n), np.float32)
        self.running_scores[:, 1:] = -1e9
        self.beam_scores = np.full((b, n), -1e9, np.float32)
        self.finished = np.zeros((b, n), bool)
        self.improvable = np.ones((b, 1), bool)
        self.hits = np.zeros((b, n), bool)
        self.running_indices = np.full((b, n, self.max_length - self.cur_len), -1, np.int32)
        self.beam_indices = self.running_indices.copy()

    def flat_running(self) -> np.ndarray:
        return self.running[:, :, : self.cur_len].reshape(self.batch * self.num_beams, self.cur_len)

    def top_candidates(self, log_probs: ms.Tensor, do_sample: bool) -> np.ndarray:
        """Best (or sampled) `beams_to_keep` continuations per row; returns their sequences for the stopping check."""
        running_scores = ms.Tensor(self.running_scores.reshape(-1, 1))
        accumulated = (log_probs + running_scores).reshape(self.batch, self.num_beams * self.vocab_size)
        if do_sample:
            indices = ops.multinomial(mint.softmax(accumulated, dim=-1), self.beams_to_keep, replacement=False)
            values = ops.gather_elements(accumulated, 1, indices)
        else:
            values, indices = ops.top_k(accumulated, self.beams_to_keep)
        values, indices = values.asnumpy(), indices.asnumpy().astype(np.int64)
        source_beam = indices // self.vocab_size
        self.topk_scores = values
        self.topk_running = np.take_along_axis(self.running, source_beam[..., None], 1)
        self.topk_running[:, :, self.cur_len] = indices % self.vocab_size
        self.topk_indices = np.take_along_axis(self.running_indices, source_beam[..., None], 1)
        self.topk_indices[:, :, self.cur_len - self.prompt_len] = source_beam + np.arange(self.batch)[:, None] * self.num_beams
        return self.topk_running[:, :, : self.cur_len + 1].reshape(-1, self.cur_len + 1)

    def advance(self, hits: np.ndarray) -> np.ndarray:
        """Applies the stopping result of the candidates; returns the cache rows the new running beams came from."""
        self.hits = hits.reshape(self.batch, self.beams_to_keep)
        running_scores = self.topk_scores + self.hits.astype(np.float32) * np.float32(-1e9)
        keep = _top_indices(running_scores, self.num_beams)
        self.running = np.take_along_axis(self.topk_running, keep[..., None], 1)
        self.running_scores = np.take_along_axis(running_scores, keep, 1)
        self.running_indices = np.take_along_axis(self.topk_indices, keep[..., None], 1)
        self._update_finished()
        beam_idx = self.running_indices[..., self.cur_len - self.prompt_len].reshape(-1)
        self.cur_len += 1
        self._update_improvable()
        return beam_idx.astype(np.int32)

    def _update_finished(self):
        just_finished = self.hits & self.top_beam_mask[None, :]
        scores = self.topk_scores / np.float32((self.cur_len + 1 - self.prompt_len) ** self.length_penalty)
        full = self.finished.all(axis=-1, keepdims=True) & (self.early_stopping is True)
        scores = scores + full.astype(np.float32) * np.float32(-1e9)
        scores = scores + (~self.improvable).astype(np.float32) * np.float32(-1e9)
        scores = scores + (~just_finished).astype(np.float32) * np.float32(-1e9)
        merged_scores = np.concatenate([self.beam_scores, scores], 1)
        best = _top_indices(merged_scores, self.num_beams)
        self.sequences = np.take_along_axis(np.concatenate([self.sequences, self.topk_running], 1), best[..., None], 1)
        self.beam_scores = np.take_along_axis(merged_scores, best, 1)
        self.beam_indices = np.take_along_axis(np.concatenate([self.beam_indices, self.topk_indices], 1), best[..., None], 1)
        self.finished = np.take_along_axis(np.concatenate([self.finished, just_finished], 1), best, 1)

    def _update_improvable(self):
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_length = self.max_length - self.prompt_len
        else:
            best_length = self.cur_len - self.prompt_len
        best_running = self.running_scores[:, :1] / np.float32(best_length**self.length_penalty)
        worst_finished = np.where(self.finished, self.beam_scores.min(axis=1, keepdims=True), np.float32(-1e9))
        self.improvable = self.improvable & (best_running > worst_finished).any(axis=-1, keepdims=True)

    def done(self) -> bool:
        open_beam = not (self.finished.all() and self.early_stopping is True)
        return not (self.improvable.any() and open_beam and not self.hits.all())

    def result(self, num_return_sequences: int):
        take = slice(0, num_return_sequences)
        sequences = self.sequences[:, take].reshape(self.batch * num_return_sequences, -1)
        scores = self.beam_scores[:, take].reshape(-1)
        indices = self.beam_indices[:, take].reshape(self.batch * num_return_sequences, -1)
        generated = int((indices + 1 != 0).sum(axis=1).max())
        return sequences[:, : self.prompt_len + generated], scores, indices[:, :generated]


def _top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first; ties keep the lower index first (as torch.topk on CPU)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


CACHE_IMPLEMENTATIONS = (None, "static", "dynamic")
MOVED_TO_THE_HUB = {  # decoding modes transformers 4.57 left to Hub code, by the options that ask for them
    GenerationMode.CONTRASTIVE_SEARCH: "penalty_alpha (contrastive search)",
    GenerationMode.DOLA_GENERATION: "dola_layers (DoLa decoding)",
    GenerationMode.GROUP_BEAM_SEARCH: "num_beam_groups > 1 (group beam search, with diversity_penalty)",
    GenerationMode.CONSTRAINED_BEAM_SEARCH: "constraints / force_words_ids (constrained beam search)",
}


def _check_supported(gc) -> None:
    """Options transformers honours that this library does not yet: refused, never ignored."""
    if gc.cache_implementation not in CACHE_IMPLEMENTATIONS:
        raise NotImplementedError(f"cache_implementation={gc.cache_implementation!r} is not supported; use 'static' "
                                  "(preallocated, compiled decode steps) or 'dynamic' (the default)")  # fmt: skip
    if gc.return_dict_in_generate and gc.output_attentions:
        raise NotImplementedError("output_attentions=True is not supported: the fused attention kernels never form the "
                                  "attention weights; generate without it")  # fmt: skip
    if gc.return_dict_in_generate and gc.output_hidden_states:
        raise NotImplementedError("output_hidden_states=True is not supported in generate() yet; run the model's "
                                  "forward with output_hidden_states=True on the generated sequences instead")  # fmt: skip


DRAFTER_SETTINGS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")


def _check_assistant_settings(kwargs: dict, passed_config, drafter) -> None:
    """transformers reads these from the drafting model's generation_config and ignores them in generate()'s
    arguments or config; here an argument, or a config value the drafter does not have, is an error that says where
    the setting goes."""
    given = {name: kwargs[name] for name in DRAFTER_SETTINGS if name in kwargs}
    if given and drafter is None:
        raise ValueError(f"{next(iter(given))} applies to drafting with assistant_model or assistant_early_exit, which "
                         "this call does not use")  # fmt: skip
    if passed_config is not None and drafter is not None:
        defaults = GenerationConfig()
        for name in DRAFTER_SETTINGS:
            value = getattr(passed_config, name)
            if value != getattr(defaults, name) and value != getattr(drafter.generation_config, name):
                given.setdefault(name, value)
    for name, value in given.items():
        raise ValueError(f"{name} is read from the drafting model's generation_config, as in transformers, not from "
                         f"generate()'s arguments or config; set <model>.generation_config.{name} = {value!r} on it")  # fmt: skip


def _keep_learned_draft_length(generator) -> None:
    """Under the "heuristic" schedule the draft length learned in this call is the assistant's next starting point."""
    if isinstance(generator, AssistedCandidateGenerator):
        settings = generator.assistant_model.generation_config
        if settings.num_assistant_tokens_schedule == "heuristic":
            settings.num_assistant_tokens = generator.num_assistant_tokens


def _check_prompts(given: bool, option: str) -> None:
    if not given:  # transformers warns and drops the option; here it is an error, never a silent no-op
        raise ValueError(f"`{option}` applies to the prompt's tokens, which this call did not pass; pass input_ids")


def _merge_custom(default_list, custom, kind: str):
    """A user-supplied processor/criterion replaces the built one of the same type in place (with HF's warning);
    the others are appended."""
    if not custom:
        return default_list
    merged = type(default_list)()
    for default in default_list:
        replacement = next((item for item in custom if type(item) is type(default)), None)
        if replacement is not None:
            warning_once(
                f"A custom {kind} of type {type(replacement)} has been passed to `.generate()`, but it was also "
                f"created in `.generate()`, given its parameterization. The custom {type(replacement)} will take "
                f"precedence. Please check the docstring of {type(replacement)} to see related `.generate()` flags."
            )
        merged.append(replacement if replacement is not None else default)
    merged.extend(item for item in custom if item not in merged)
    return merged
