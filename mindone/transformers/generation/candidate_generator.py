"""Candidate tokens for assisted decoding: n-gram lookup in the prompt, or a small draft model.

The main model then checks all candidates in one forward pass (see GenerationMixin._assisted_decoding); with greedy
decoding the result is exactly what greedy decoding alone returns, only with fewer main-model calls."""

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import mint, ops

from .. import backend
from ..cache_utils import DynamicCache


class CandidateGenerator:
    def get_candidates(self, input_ids: ms.Tensor) -> tuple[np.ndarray, Optional[ms.Tensor]]:
        """Returns (proposed new token ids, their draft scores [k, vocab] or None)."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_candidates(input_ids)")

    def update_candidate_strategy(self, input_ids: ms.Tensor, scores, num_matches: int) -> None:
        pass


def _room(max_length: int, length: int, wanted: int) -> int:
    """Candidates never push the sequence past max_length - 1, leaving room for the main model's own token."""
    return max(0, min(wanted, max_length - length - 1))


def _cut_at_eos(tokens: np.ndarray, eos: Optional[list]) -> np.ndarray:
    if eos:
        hits = np.nonzero(np.isin(tokens, eos))[0]
        if hits.size:
            return tokens[: hits[0]]
    return tokens


class PromptLookupCandidateGenerator(CandidateGenerator):
    """Copies the tokens that followed the latest n-gram's earliest earlier occurrence (n from
    `max_matching_ngram_size` down to 1), up to `num_output_tokens` of them, stopping before any eos."""

    def __init__(self, eos_token_id=None, num_output_tokens: int = 10, max_matching_ngram_size: int = 2, max_length: int = 20):
        if max_matching_ngram_size <= 0 or num_output_tokens <= 0:
            raise ValueError("Invalid max_matching_ngram_size or num_output_tokens")
        self.eos_token_id, self.num_output_tokens = eos_token_id, num_output_tokens
        self.max_matching_ngram_size, self.max_length = max_matching_ngram_size, max_length

    def get_candidates(self, input_ids):
        ids = input_ids.asnumpy()[0]
        length = len(ids)
        room = _room(self.max_length, length, self.num_output_tokens)
        for n in range(min(self.max_matching_ngram_size, length - 1), 0, -1) if room else ():
            windows = np.lib.stride_tricks.sliding_window_view(ids, n)
            for start in np.nonzero((windows == ids[-n:]).all(axis=1))[0] + n:
                end = min(start + self.num_output_tokens, length)
                if start < end:
                    return _cut_at_eos(ids[start:end], self.eos_token_id)[:room], None
        return ids[:0], None


class AssistedCandidateGenerator(CandidateGenerator):
    """Greedy (or sampled) continuations from a smaller model sharing the tokenizer; its KV cache is kept between
    rounds and cropped to the tokens the main model accepted."""

    def __init__(self, assistant_model, generation_config, logits_processor=None):
        self.assistant = assistant_model
        settings = assistant_model.generation_config
        self.num_assistant_tokens = settings.num_assistant_tokens
        self.schedule = settings.num_assistant_tokens_schedule
        self.max_length = generation_config.max_length
        self.eos_token_id = generation_config._eos_token_list
        self.pad_token_id = generation_config._pad_token_id
        self.do_sample = generation_config.do_sample
        self.logits_processor = logits_processor
        self.cache = DynamicCache()

    def get_candidates(self, input_ids):
        length = input_ids.shape[1]
        room = _room(self.max_length, length, int(self.num_assistant_tokens))
        if room == 0:
            return np.zeros((0,), np.int64), None
        self.cache.crop(min(self.cache.get_seq_length(), length - 1))
        output = self.assistant.generate(
            input_ids,
            attention_mask=mint.ones(input_ids.shape, dtype=ms.int32),
            past_key_values=self.cache,
            max_new_tokens=room,
            do_sample=self.do_sample,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            logits_processor=self.logits_processor,
            return_dict_in_generate=True,
            output_scores=True,
        )
        return output.sequences.asnumpy()[0, length:], mint.cat(output.scores, dim=0)

    def update_candidate_strategy(self, input_ids, scores, num_matches: int) -> None:
        if self.schedule in {"heuristic", "heuristic_transient"}:
            if num_matches == scores.shape[0] - 1:
                self.num_assistant_tokens += 2.0
            else:
                self.num_assistant_tokens = max(1.0, self.num_assistant_tokens - 1.0)


def get_candidate_generator(generation_config, assistant_model, logits_processor) -> CandidateGenerator:
    if assistant_model is not None:
        return AssistedCandidateGenerator(assistant_model, generation_config, logits_processor)
    return PromptLookupCandidateGenerator(
        generation_config._eos_token_list,
        generation_config.prompt_lookup_num_tokens,
        generation_config.max_matching_ngram_size or 2,
        generation_config.max_length,
    )


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
