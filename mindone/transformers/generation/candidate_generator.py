"""Candidate tokens for assisted decoding, with transformers' classes and constructor arguments: n-gram lookup in
the prompt, a smaller draft model, or the model's own first layers (early exit).

The main model then checks all candidates in one forward pass (see GenerationMixin._assisted_decoding); with greedy
decoding the result is exactly what greedy decoding alone returns, only with fewer main-model calls."""

import copy
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import mint, ops

from .. import backend
from .logits_process import LogitsProcessorList, MinLengthLogitsProcessor


class CandidateGenerator:
    """What assisted decoding asks of a source of candidate tokens."""

    def get_candidates(self, input_ids: ms.Tensor) -> tuple[ms.Tensor, Optional[ms.Tensor]]:
        """Returns input_ids with the candidates appended ([1, length + k]) and the draft scores of the candidates
        ([1, k, vocab]), or None when the source has no scores."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_candidates(input_ids)")

    def update_candidate_strategy(self, input_ids: ms.Tensor, scores: ms.Tensor, num_matches: int) -> None:
        """Learns from a round: `scores` [1, k + 1, vocab] are the main model's, `num_matches` candidates held."""
        raise NotImplementedError(f"{type(self).__name__} must implement update_candidate_strategy(...)")


class AssistedCandidateGenerator(CandidateGenerator):
    """Continuations drafted by a smaller model sharing the tokenizer, with the main call's generation settings. The
    assistant's cache is kept between rounds and cropped to the accepted tokens. Drafting stops early when the
    assistant's probability of its own token falls below `assistant_confidence_threshold`; that threshold then
    follows the accepted/rejected history (the cost-minimising point of its ROC curve, as transformers does)."""

    def __init__(self, input_ids, assistant_model, generation_config, model_kwargs: dict, inputs_tensor=None,
                 logits_processor=None):  # fmt: skip
        self.assistant_model = assistant_model
        self.num_assistant_tokens = assistant_model.generation_config.num_assistant_tokens
        self.assistant_confidence_threshold = assistant_model.generation_config.assistant_confidence_threshold
        assistant_model.generation_config.eos_token_id = generation_config.eos_token_id
        self.assistant_kwargs = {key: value for key, value in model_kwargs.items() if key != "past_key_values"}
        self.logits_processor = logits_processor if logits_processor is not None else LogitsProcessorList()
        if any(isinstance(processor, MinLengthLogitsProcessor) for processor in self.logits_processor):
            raise ValueError("Passing `MinLengthLogitsProcessor` when using `assisted_generation is disabled. "
                             "Please pass in `min_length` into `.generate()` instead")  # fmt: skip
        self.generation_config = copy.deepcopy(generation_config)
        self.generation_config.return_dict_in_generate = True
        self.generation_config.output_scores = True
        self.generation_config.assistant_confidence_threshold = self.assistant_confidence_threshold
        self.generation_config.is_assistant = True
        self.main_model_min_length = self.generation_config.min_length
        self.generation_config.min_length = 0
        self.generation_config.min_new_tokens = None
        self.generation_config.cache_implementation = None
        self.generation_config.return_legacy_cache = False  # the kept cache is cropped between rounds
        self.probs, self.matches = [], []  # the assistant's probability of each drafted token, and whether it held

    def get_candidates(self, input_ids):
        min_new_tokens, max_new_tokens = self._calculate_new_tokens(input_ids)
        if max_new_tokens == 0:
            return input_ids, None
        self._update_past_and_masks(input_ids)
        output = self.assistant_model.generate(
            input_ids,
            min_new_tokens=min_new_tokens,
            max_new_tokens=max_new_tokens,
            generation_config=self.generation_config,
            logits_processor=self.logits_processor,
            **self.assistant_kwargs,
        )
        self.assistant_kwargs["past_key_values"] = output.past_key_values
        drafted = mint.cat(output.scores, dim=0)
        if self._adapts_threshold():
            tokens = output.sequences.asnumpy()[-1, -len(output.scores) :]
            probs = mint.softmax(drafted, dim=-1).asnumpy()
            self.probs.extend(probs[np.arange(len(tokens)), tokens].tolist())
        return output.sequences, drafted.expand_dims(0)

    def update_candidate_strategy(self, input_ids, scores, num_matches: int) -> None:
        if self.assistant_model.generation_config.num_assistant_tokens_schedule in {"heuristic", "heuristic_transient"}:
            if num_matches == scores.shape[1] - 1:
                self.num_assistant_tokens += 2.0
            else:
                self.num_assistant_tokens = max(1.0, self.num_assistant_tokens - 1.0)
        if self._adapts_threshold():
            self._adapt_threshold(num_matches)

    def _adapts_threshold(self) -> bool:
        return bool(self.assistant_model.generation_config.assistant_confidence_threshold) and (
            type(self) is AssistedCandidateGenerator
        )

    def _adapt_threshold(self, num_matches: int) -> None:
        """Records which drafted tokens held and moves the assistant's threshold to the one minimising
        false positives + 3 x false negatives, once there are 6 drafted tokens with both outcomes among them."""
        self.matches.extend([1] * num_matches)
        if len(self.probs) > len(self.matches):
            self.matches.append(0)
        del self.probs[len(self.matches) :]
        if len(self.probs) > 5 and {0, 1}.issubset(self.matches):
            fpr, tpr, thresholds = roc_curve(np.array(self.matches), np.array(self.probs))
            best = thresholds[np.argmin(fpr + 3 * (1 - tpr))]
            self.assistant_model.generation_config.assistant_confidence_threshold = best

    def _calculate_new_tokens(self, input_ids) -> tuple[int, int]:
        """Candidates never push the sequence past max_length - 1, leaving room for the main model's own token."""
        length = input_ids.shape[-1]
        max_new_tokens = min(int(self.num_assistant_tokens), self.generation_config.max_length - length - 1)
        return max(min(max_new_tokens, self.main_model_min_length - length), 0), max_new_tokens

    def _update_past_and_masks(self, input_ids) -> None:
        """The kept cache loses the last accepted positions (re-read with the new tokens); the mask grows."""
        cache = self.assistant_kwargs.get("past_key_values")
        if cache is None:
            return
        length = input_ids.shape[-1]
        cache.crop(length - 2)
        mask = self.assistant_kwargs.get("attention_mask")
        if mask is not None and mask.shape[1] != length:
            grown = mint.ones((mask.shape[0], max(0, length - mask.shape[1])), dtype=mask.dtype)
            self.assistant_kwargs["attention_mask"] = mint.cat([mask[:, :length], grown], dim=-1)


class EarlyExitCandidateGenerator(AssistedCandidateGenerator):
    """Drafts with the main model itself, stopping after its first `assistant_early_exit` layers (self-speculative
    decoding; useful with models trained for it, such as LayerSkip checkpoints)."""

    def __init__(self, input_ids, assistant_model, generation_config, model_kwargs: dict, inputs_tensor=None,
                 logits_processor=None):  # fmt: skip
        if not hasattr(getattr(assistant_model, assistant_model.base_model_prefix), "_running_layers"):
            raise ValueError(f"assistant_early_exit needs a model that can stop after its first layers; "
                             f"{type(assistant_model).__name__} always runs all of them: pass an assistant_model or "
                             "prompt_lookup_num_tokens instead")  # fmt: skip
        super().__init__(input_ids, assistant_model, generation_config, model_kwargs, inputs_tensor, logits_processor)
        self.assistant_early_exit = self.generation_config.assistant_early_exit
        self.generation_config.assistant_early_exit = None

    def get_candidates(self, input_ids):
        config = getattr(self.assistant_model, self.assistant_model.base_model_prefix).config
        all_layers, config.num_hidden_layers = config.num_hidden_layers, self.assistant_early_exit
        try:
            return super().get_candidates(input_ids)
        finally:
            config.num_hidden_layers = all_layers


class PromptLookupCandidateGenerator(CandidateGenerator):
    """Copies the tokens that followed the latest n-gram's earliest earlier occurrence (n from
    `max_matching_ngram_size` down to 1), up to `num_output_tokens` of them, stopping before any eos and before a
    token `logits_processor` forbids at its position."""

    def __init__(self, eos_token_id=None, num_output_tokens: int = 10, max_matching_ngram_size: int = 2,
                 max_length: int = 20, logits_processor=None, vocab_size: Optional[int] = None):  # fmt: skip
        self.num_output_tokens, self.max_matching_ngram_size = num_output_tokens, max_matching_ngram_size
        self.max_length, self.eos_token_id = max_length, eos_token_id
        self.logits_processor, self.vocab_size = logits_processor, vocab_size
        if self.max_matching_ngram_size <= 0 or self.num_output_tokens <= 0:
            raise ValueError("Invalid max_matching_ngram_size or num_output_tokens")
        if logits_processor and vocab_size is None:
            raise ValueError("PromptLookupCandidateGenerator needs `vocab_size` to check candidates with logits_processor")

    def get_candidates(self, input_ids):
        ids = input_ids.asnumpy()[0]
        room = max(0, min(self.num_output_tokens, self.max_length - len(ids) - 1))
        chosen = _cut_at_eos(self._first_match(ids, room), self.eos_token_id)
        if not len(chosen):
            return input_ids, None
        return mint.cat([input_ids, ms.Tensor(chosen.reshape(1, -1), input_ids.dtype)], dim=-1), None

    def _first_match(self, ids: np.ndarray, room: int) -> np.ndarray:
        """The allowed tokens after the earliest occurrence of the longest trailing n-gram that has any."""
        length = len(ids)
        for n in range(min(self.max_matching_ngram_size, length - 1), 0, -1) if room else ():
            windows = np.lib.stride_tricks.sliding_window_view(ids, n)
            for start in np.nonzero((windows == ids[-n:]).all(axis=1))[0] + n:
                chosen = self._allowed_prefix(ids, ids[start : min(start + room, length)])
                if len(chosen):
                    return chosen
        return ids[:0]

    def update_candidate_strategy(self, input_ids, scores, num_matches: int) -> None:
        pass

    def _allowed_prefix(self, ids: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """The candidates up to the first one the processors turn to -inf (or the dtype's minimum) on flat logits."""
        if not self.logits_processor:
            return chosen
        flat = mint.ones((1, self.vocab_size), dtype=ms.float32)
        lowest = float(np.finfo(np.float32).min)
        for i, token in enumerate(chosen):
            sequence = ms.Tensor(np.concatenate([ids, chosen[:i]]).reshape(1, -1))
            score = float(self.logits_processor(sequence, flat)[0, int(token)].asnumpy())
            if score in (-np.inf, lowest):
                return chosen[:i]
        return chosen


def _cut_at_eos(tokens: np.ndarray, eos) -> np.ndarray:
    if eos is not None:
        hits = np.nonzero(np.isin(tokens, np.asarray(eos).reshape(-1)))[0]
        if hits.size:
            return tokens[: hits[0]]
    return tokens


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's `roc_curve(labels, scores)` (drop_intermediate=True): false and true positive rates at each
    distinct score taken as threshold, points on straight segments dropped, and an infinite first threshold."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, labels = scores[order], labels[order]
    last_of_each = np.r_[np.nonzero(np.diff(scores))[0], labels.size - 1]
    tps = np.cumsum(labels)[last_of_each]
    fps = 1 + last_of_each - tps
    thresholds = scores[last_of_each]
    if len(fps) > 2:
        corners = np.nonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[corners], tps[corners], thresholds[corners]
    fps, tps, thresholds = np.r_[0, fps], np.r_[0, tps], np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def get_candidate_generator(model, generation_config, input_ids, logits_processor, model_kwargs, assistant_model):
    """The source of candidates transformers picks for these settings, in its order of precedence."""
    gc = generation_config
    if gc.assistant_early_exit is not None:
        return EarlyExitCandidateGenerator(input_ids, model, gc, model_kwargs, logits_processor=logits_processor)
    if gc.prompt_lookup_num_tokens is not None:
        return PromptLookupCandidateGenerator(gc._eos_token_list, gc.prompt_lookup_num_tokens,
                                              gc.max_matching_ngram_size or 2, gc.max_length, logits_processor,
                                              model.config.get_text_config().vocab_size)  # fmt: skip
    return AssistedCandidateGenerator(input_ids, assistant_model, gc, model_kwargs, logits_processor=logits_processor)


def speculative_sampling(candidates: np.ndarray, draft_scores: ms.Tensor, target_scores: ms.Tensor, is_done: bool):
    """Accepts draft token i with probability min(1, p_i / q_i); the first rejected position is resampled from
    max(0, p - q) (or p after the last draft token). Returns (accepted tokens, number of draft tokens kept)."""
    k = len(candidates)
    index = ms.Tensor(candidates.astype(np.int32).reshape(-1, 1))
    q = mint.softmax(draft_scores, dim=-1)
    p = mint.softmax(target_scores, dim=-1)
    ratio = (ops.gather_elements(p[:k], 1, index) / ops.gather_elements(q, 1, index)).asnumpy()[:, 0]
    accepted = ops.uniform((k,), ms.Tensor(0.0), ms.Tensor(1.0)).asnumpy() <= ratio
    n = int((np.cumsum(~accepted) < 1).sum())
    if is_done and n == k:
        return candidates[:k], k - 1
    residual = p[n]
    if n < k:
        residual = mint.clamp(residual - q[n], min=0.0)
        residual = residual / residual.sum()
    token = backend.multinomial(residual.reshape(1, -1)).asnumpy()
    return np.concatenate([candidates[:n], token.astype(candidates.dtype)]), n
