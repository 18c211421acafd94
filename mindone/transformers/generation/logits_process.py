"""Logits processors and warpers over [batch, vocab] float32 MindSpore tensors, with Hugging Face's names,
arguments, validation messages and semantics. Each is a callable `(input_ids, scores) -> scores`; all work on the
whole batch with tensor ops (only PrefixConstrainedLogitsProcessor calls back into Python, per row, by design)."""

import math
from typing import Callable, Iterable, Optional, Union

import mindspore as ms
import numpy as np
from mindspore import mint, ops

from .. import backend

NEG_INF = float("-inf")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class LogitsProcessor:
    def __call__(self, input_ids: ms.Tensor, scores: ms.Tensor) -> ms.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


class LogitsProcessorList(list):
    def __call__(self, input_ids: ms.Tensor, scores: ms.Tensor, **kwargs) -> ms.Tensor:
        for processor in self:
            scores = processor(input_ids, scores, **kwargs) if kwargs else processor(input_ids, scores)
        return scores


# ---------------------------------------------------------------- tensor helpers
def _fill(scores, remove, value: float = NEG_INF):
    return mint.where(remove, ms.Tensor(value, scores.dtype), scores)


def _token_mask(token_ids: Iterable[int], vocab_size: int) -> ms.Tensor:
    mask = np.zeros((1, vocab_size), dtype=bool)
    mask[0, [t for t in token_ids if 0 <= t < vocab_size]] = True
    return ms.Tensor(mask)


def _only(scores, token_ids) -> ms.Tensor:
    """Every score -inf except `token_ids`, which become 0 (forcing one of them)."""
    keep = _token_mask(token_ids, scores.shape[-1])
    return mint.where(keep, ms.Tensor(0.0, scores.dtype), ms.Tensor(NEG_INF, scores.dtype)).broadcast_to(scores.shape)


def _scatter_to_vocab(sorted_flags, sorted_indices) -> ms.Tensor:
    """Undo a sort: flags given in sorted order, returned at their vocabulary positions."""
    flags = sorted_flags.astype(ms.int32)
    return ops.tensor_scatter_elements(ops.zeros_like(flags), sorted_indices, flags, axis=-1).astype(ms.bool_)


def _kth_best(scores, k: int):
    return ops.top_k(scores, min(k, scores.shape[-1]))[0][..., -1:]


def _eos_list(eos_token_id) -> list:
    if isinstance(eos_token_id, ms.Tensor):
        eos_token_id = eos_token_id.asnumpy().tolist()
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if any(not isinstance(t, (int, np.integer)) or t < 0 for t in eos):
        raise ValueError(f"`eos_token_id` has to be a list of positive integers, but is {eos_token_id}")
    return [int(t) for t in eos]


def _check_min_tokens(min_tokens_to_keep) -> int:
    if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"`min_tokens_to_keep` has to be a strictly positive integer, but is {min_tokens_to_keep}")
    return min_tokens_to_keep


# ---------------------------------------------------------------- processors (HF order in generate)
class SequenceBiasLogitsProcessor(LogitsProcessor):
    """Adds a bias to the last token of a sequence when the tokens before it were just generated."""

    def __init__(self, sequence_bias: Union[list, dict]):
        _validate_sequence_bias(sequence_bias)
        if isinstance(sequence_bias, list):
            sequence_bias = {tuple(ids): bias for ids, bias in sequence_bias}
        self.sequence_bias = sequence_bias
        self._single_token_bias = None

    def _prepare(self, vocab_size: int):
        invalid = [t for ids in self.sequence_bias for t in ids if t >= vocab_size]
        if invalid:
            raise ValueError(
                f"The model vocabulary size is {vocab_size}, but the following tokens were being biased: {invalid}"
            )
        bias = np.zeros((1, vocab_size), np.float32)
        for ids, value in self.sequence_bias.items():
            if len(ids) == 1:
                bias[0, ids[0]] = value
        self._single_token_bias = ms.Tensor(bias)

    def __call__(self, input_ids, scores):
        if self._single_token_bias is None:
            self._prepare(scores.shape[-1])
        scores = scores + self._single_token_bias
        for ids, value in self.sequence_bias.items():
            if len(ids) == 1 or len(ids) > input_ids.shape[1]:
                continue
            prefix = ms.Tensor(np.array(ids[:-1]), input_ids.dtype).reshape(1, -1)
            matches = (input_ids[:, -len(prefix[0]) :] == prefix).all(axis=1, keep_dims=True)
            hit = mint.logical_and(matches, _token_mask([ids[-1]], scores.shape[-1]))
            scores = scores + mint.where(hit, ms.Tensor(value, scores.dtype), ms.Tensor(0.0, scores.dtype))
        return scores


def _validate_sequence_bias(sequence_bias):
    if not isinstance(sequence_bias, (dict, list)) or len(sequence_bias) == 0:
        raise ValueError(
            f"`sequence_bias` has to be a non-empty dictionary, or non-empty list of lists but is {sequence_bias}."
        )
    if isinstance(sequence_bias, dict):
        if any(not isinstance(ids, tuple) for ids in sequence_bias):
            raise ValueError(f"`sequence_bias` has to be a dict with tuples as keys, but is {sequence_bias}.")
        if any(len(ids) == 0 or any(not isinstance(t, (int, np.integer)) or t < 0 for t in ids) for ids in sequence_bias):
            raise ValueError(
                f"Each key in `sequence_bias` has to be a non-empty tuple of positive integers, but is {sequence_bias}."
            )
        if any(not isinstance(bias, float) for bias in sequence_bias.values()):
            raise ValueError(f"`sequence_bias` has to be a dict with floats as values, but is {sequence_bias}.")
        return

    def valid(pair):
        return (
            len(pair) == 2
            and isinstance(pair[0], list)
            and all(isinstance(t, (int, np.integer)) and t > 0 for t in pair[0])
            and isinstance(pair[1], float)
        )

    if any(not valid(pair) for pair in sequence_bias):
        raise ValueError(
            "Each element in `sequence_bias` has to be a non-empty list of lists of positive integers and float, "
            f"but is {sequence_bias}."
        )


class NoBadWordsLogitsProcessor(SequenceBiasLogitsProcessor):
    """Makes the last token of each banned sequence impossible after its prefix (eos is never banned alone)."""

    def __init__(self, bad_words_ids: list, eos_token_id=None):
        if not isinstance(bad_words_ids, list) or len(bad_words_ids) == 0:
            raise ValueError(f"`bad_words_ids` has to be a non-empty list, but is {bad_words_ids}.")
        if any(not isinstance(ids, list) for ids in bad_words_ids):
            raise ValueError(f"`bad_words_ids` has to be a list of lists, but is {bad_words_ids}.")
        if any(any(not isinstance(t, (int, np.integer)) or t < 0 for t in ids) for ids in bad_words_ids):
            raise ValueError(f"Each list in `bad_words_ids` has to be a list of positive integers, but is {bad_words_ids}.")
        self.bad_word_ids = bad_words_ids
        if eos_token_id is not None:
            eos = _eos_list(eos_token_id)
            bad_words_ids = [ids for ids in bad_words_ids if all(ids != [e] for e in eos)]
        super().__init__({tuple(ids): NEG_INF for ids in bad_words_ids})


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Divides positive / multiplies negative scores of tokens already in the sequence by `penalty`."""

    def __init__(self, penalty: float, prompt_ignore_length: Optional[int] = None):
        if not isinstance(penalty, float) or not penalty > 0:
            raise ValueError(f"`penalty` has to be a strictly positive float, but is {penalty}")
        if prompt_ignore_length is not None and (not isinstance(prompt_ignore_length, int) or prompt_ignore_length < 0):
            raise ValueError(f"`prompt_ignore_length` has to be a positive integer, but is {prompt_ignore_length}")
        self.penalty, self.prompt_ignore_length = penalty, prompt_ignore_length

    def __call__(self, input_ids, scores):
        if self.prompt_ignore_length:
            input_ids = input_ids[:, self.prompt_ignore_length :]
        index = input_ids.astype(ms.int32)
        seen = ops.gather_elements(scores, 1, index)
        penalised = mint.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return ops.tensor_scatter_elements(scores, index, penalised, axis=1)


class EncoderRepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Scores of the prompt's tokens (`encoder_input_ids`, [batch, length]: for a decoder-only model the input ids)
    are multiplied by `penalty` where positive and divided where negative: penalty > 1 favours them, < 1 avoids
    them (transformers' hallucination penalty). Like transformers, the prompt rows are applied to the first rows."""

    def __init__(self, penalty: float, encoder_input_ids):
        if not isinstance(penalty, float) or not penalty > 0:
            raise ValueError(f"`penalty` has to be a strictly positive float, but is {penalty}")
        self.penalty = 1 / penalty
        self.encoder_input_ids = ms.Tensor(host_array(encoder_input_ids).astype(np.int32))

    def __call__(self, input_ids, scores):
        rows = self.encoder_input_ids.shape[0]
        head = scores[:rows]
        seen = ops.gather_elements(head, 1, self.encoder_input_ids)
        changed = mint.where(seen < 0, seen * self.penalty, seen / self.penalty)
        head = ops.tensor_scatter_elements(head, self.encoder_input_ids, changed, axis=1)
        return head if rows == scores.shape[0] else mint.cat([head, scores[rows:]], dim=0)


class EncoderNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Bans every token that would repeat an n-gram of the prompt (`encoder_input_ids`); hypotheses i use prompt
    row i // (hypotheses per prompt), as in transformers."""

    def __init__(self, encoder_ngram_size: int, encoder_input_ids):
        if not isinstance(encoder_ngram_size, int) or encoder_ngram_size <= 0:
            raise ValueError(f"`encoder_ngram_size` has to be a strictly positive integer, but is {encoder_ngram_size}")
        self.ngram_size = encoder_ngram_size
        prompts = host_array(encoder_input_ids)
        prompts = prompts[None] if prompts.ndim == 1 else prompts
        self.batch_size = prompts.shape[0]
        self.generated_ngrams = [_ngrams(row.tolist(), encoder_ngram_size) for row in prompts]

    def __call__(self, input_ids, scores):
        hypotheses, length = scores.shape[0], input_ids.shape[-1]
        per_prompt = hypotheses // self.batch_size
        ids = host_array(input_ids)
        banned = np.zeros(scores.shape, dtype=bool)
        for row in range(hypotheses):
            key = tuple(ids[row, length + 1 - self.ngram_size : length].tolist())
            banned[row, self.generated_ngrams[row // per_prompt].get(key, [])] = True
        return _fill(scores, ms.Tensor(banned))


def host_array(x) -> np.ndarray:
    """A tensor's or array-like's values as a numpy array on the host."""
    return x.asnumpy() if isinstance(x, ms.Tensor) else np.asarray(x)


def _ngrams(tokens: list, n: int) -> dict:
    """{the first n - 1 tokens of each n-gram of `tokens`: the tokens that followed them}."""
    following = {}
    for ngram in zip(*[tokens[i:] for i in range(n)]):
        following.setdefault(tuple(ngram[:-1]), []).append(ngram[-1])
    return following


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Bans every token that would repeat an n-gram already present in the row."""

    def __init__(self, ngram_size: int):
        if not isinstance(ngram_size, int) or ngram_size <= 0:
            raise ValueError(f"`ngram_size` has to be a strictly positive integer, but is {ngram_size}")
        self.ngram_size = ngram_size

    def __call__(self, input_ids, scores):
        n, length = self.ngram_size, input_ids.shape[1]
        if length + 1 < n:
            return scores
        windows = length - n + 1
        if n == 1:
            matches = mint.ones((input_ids.shape[0], length), dtype=ms.bool_)
        else:
            prefix = input_ids[:, length - n + 1 :]
            matches = mint.ones((input_ids.shape[0], windows), dtype=ms.bool_)
            for offset in range(n - 1):
                matches = mint.logical_and(matches, input_ids[:, offset : offset + windows] == prefix[:, offset : offset + 1])
        banned_tokens = input_ids[:, n - 1 :].astype(ms.int32)
        hits = ops.tensor_scatter_elements(
            mint.zeros(scores.shape, dtype=ms.float32), banned_tokens, matches.astype(ms.float32), axis=1, reduction="add"
        )
        return _fill(scores, hits > 0)


class MinLengthLogitsProcessor(LogitsProcessor):
    def __init__(self, min_length: int, eos_token_id, device: str = "cpu"):
        if not isinstance(min_length, int) or min_length < 0:
            raise ValueError(f"`min_length` has to be a non-negative integer, but is {min_length}")
        self.min_length, self.eos_token_id = min_length, _eos_list(eos_token_id)

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] < self.min_length:
            return _fill(scores, _token_mask(self.eos_token_id, scores.shape[-1]))
        return scores


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int, eos_token_id, device: str = "cpu"):
        for name, value in (("prompt_length_to_skip", prompt_length_to_skip), ("min_new_tokens", min_new_tokens)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` has to be a positive integer, but is {value}")
        self.prompt_length_to_skip, self.min_new_tokens = prompt_length_to_skip, min_new_tokens
        self.eos_token_id = _eos_list(eos_token_id)

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] - self.prompt_length_to_skip < self.min_new_tokens:
            return _fill(scores, _token_mask(self.eos_token_id, scores.shape[-1]))
        return scores


class PrefixConstrainedLogitsProcessor(LogitsProcessor):
    """Only the tokens `prefix_allowed_tokens_fn(batch_id, input_ids_row)` returns may follow."""

    def __init__(self, prefix_allowed_tokens_fn: Callable, num_beams: int):
        self._prefix_allowed_tokens_fn, self._num_beams = prefix_allowed_tokens_fn, num_beams

    def __call__(self, input_ids, scores):
        allowed = np.zeros(scores.shape, dtype=bool)
        for row in range(input_ids.shape[0]):
            tokens = self._prefix_allowed_tokens_fn(row // self._num_beams, input_ids[row])
            if len(tokens) == 0:
                raise ValueError(
                    f"`prefix_allowed_tokens_fn` returned an empty list for batch ID {row // self._num_beams}. "
                    "This means that the constraint is unsatisfiable. Please check your implementation of "
                    "`prefix_allowed_tokens_fn` "
                )
            allowed[row, list(tokens)] = True
        return _fill(scores, ms.Tensor(~allowed))


class ForcedBOSTokenLogitsProcessor(LogitsProcessor):
    def __init__(self, bos_token_id: int):
        self.bos_token_id = bos_token_id

    def __call__(self, input_ids, scores):
        return _only(scores, [self.bos_token_id]) if input_ids.shape[-1] == 1 else scores


class ForcedEOSTokenLogitsProcessor(LogitsProcessor):
    def __init__(self, max_length: int, eos_token_id, device: str = "cpu"):
        self.max_length, self.eos_token_id = max_length, _eos_list(eos_token_id)

    def __call__(self, input_ids, scores):
        return _only(scores, self.eos_token_id) if input_ids.shape[-1] == self.max_length - 1 else scores


class InfNanRemoveLogitsProcessor(LogitsProcessor):
    """nan -> 0, +inf -> the dtype's max, -inf -> the dtype's min (so sampling cannot fail)."""

    def __call__(self, input_ids, scores):
        cleaned = _fill(scores, scores != scores, 0.0)
        cleaned = _fill(cleaned, scores == float("inf"), _FLOAT32_MAX)
        return _fill(cleaned, scores == NEG_INF, -_FLOAT32_MAX)


class ExponentialDecayLengthPenalty(LogitsProcessor):
    """After `start_index` new tokens, raises eos scores by |score| * (decay_factor ** steps - 1)."""

    def __init__(self, exponential_decay_length_penalty: tuple, eos_token_id, input_ids_seq_length: int):
        self.regulation_start = exponential_decay_length_penalty[0] + input_ids_seq_length
        self.regulation_factor = exponential_decay_length_penalty[1]
        self.eos_token_id = _eos_list(eos_token_id)

    def __call__(self, input_ids, scores):
        steps = input_ids.shape[-1] - self.regulation_start
        if steps <= 0:
            return scores
        eos = _token_mask(self.eos_token_id, scores.shape[-1])
        penalty = mint.abs(scores) * (pow(self.regulation_factor, steps) - 1)
        return scores + mint.where(eos, penalty, ms.Tensor(0.0, scores.dtype))


class SuppressTokensLogitsProcessor(LogitsProcessor):
    def __init__(self, suppress_tokens, device: str = "cpu"):
        self.suppress_tokens = [int(t) for t in suppress_tokens]

    def __call__(self, input_ids, scores):
        return _fill(scores, _token_mask(self.suppress_tokens, scores.shape[-1]))


class SuppressTokensAtBeginLogitsProcessor(LogitsProcessor):
    def __init__(self, begin_suppress_tokens, begin_index: int, device: str = "cpu"):
        self.begin_suppress_tokens, self.begin_index = [int(t) for t in begin_suppress_tokens], begin_index

    def set_begin_index(self, begin_index: int):
        self.begin_index = begin_index

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] != self.begin_index:
            return scores
        return _fill(scores, _token_mask(self.begin_suppress_tokens, scores.shape[-1]))


# ---------------------------------------------------------------- sampling warpers
class TemperatureLogitsWarper(LogitsProcessor):
    def __init__(self, temperature: float):
        if not isinstance(temperature, float) or not temperature > 0:
            message = f"`temperature` (={temperature}) has to be a strictly positive float, otherwise your next token scores will be invalid."
            if isinstance(temperature, float) and temperature == 0.0:
                message += " If you're looking for greedy decoding strategies, set `do_sample=False`."
            raise ValueError(message)
        self.temperature = temperature

    def __call__(self, input_ids, scores):
        return scores / self.temperature


class TopKLogitsWarper(LogitsProcessor):
    """Keeps the `top_k` highest scores (ties with the k-th kept too)."""

    def __init__(self, top_k: int, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"`top_k` has to be a strictly positive integer, but is {top_k}")
        self.top_k, self.filter_value = max(top_k, min_tokens_to_keep), filter_value

    def __call__(self, input_ids, scores):
        return _fill(scores, scores < _kth_best(scores, self.top_k), self.filter_value)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus filtering: keeps the smallest set of most likely tokens whose probability reaches `top_p`."""

    def __init__(self, top_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        top_p = float(top_p)
        if top_p < 0 or top_p > 1.0:
            raise ValueError(f"`top_p` has to be a float > 0 and < 1, but is {top_p}")
        self.top_p, self.filter_value = top_p, filter_value
        self.min_tokens_to_keep = _check_min_tokens(min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        sorted_logits, sorted_indices = ops.sort(scores, axis=-1, descending=False)
        cumulative = backend.cumsum(mint.softmax(sorted_logits, dim=-1), -1)
        vocab = scores.shape[-1]
        remove = mint.logical_and(cumulative <= (1 - self.top_p), backend.arange(vocab) < vocab - self.min_tokens_to_keep)
        return _fill(scores, _scatter_to_vocab(remove, sorted_indices), self.filter_value)


class MinPLogitsWarper(LogitsProcessor):
    """Drops tokens less likely than `min_p` times the most likely token's probability."""

    def __init__(self, min_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if not 0 <= min_p <= 1.0:
            raise ValueError(f"`min_p` has to be a float in the [0, 1] interval, but is {min_p}")
        self.min_p, self.filter_value = min_p, filter_value
        self.min_tokens_to_keep = _check_min_tokens(min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        probs = mint.softmax(scores, dim=-1)
        remove = probs < self.min_p * probs.max(axis=-1, keepdims=True)
        sorted_indices = ops.sort(scores, axis=-1, descending=True)[1]
        remove_sorted = ops.gather_elements(remove.astype(ms.int32), -1, sorted_indices).astype(ms.bool_)
        remove_sorted = mint.logical_and(remove_sorted, backend.arange(scores.shape[-1]) >= self.min_tokens_to_keep)
        return _fill(scores, _scatter_to_vocab(remove_sorted, sorted_indices), self.filter_value)


class TypicalLogitsWarper(LogitsProcessor):
    """Locally typical sampling: keeps tokens whose surprise is closest to the distribution's entropy."""

    def __init__(self, mass: float = 0.9, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        mass = float(mass)
        if not 0 < mass < 1:
            raise ValueError(f"`typical_p` has to be a float > 0 and < 1, but is {mass}")
        self.mass, self.filter_value = mass, filter_value
        self.min_tokens_to_keep = _check_min_tokens(min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        log_probs = ops.log_softmax(scores, -1)
        probs = mint.exp(log_probs)
        entropy = -_nansum(log_probs * probs)
        shifted = mint.abs(-log_probs - entropy)
        sorted_shifted, sorted_indices = ops.sort(shifted, axis=-1, descending=False)
        cumulative = backend.cumsum(mint.softmax(ops.gather_elements(scores, -1, sorted_indices), dim=-1), -1)
        last = mint.clamp((cumulative < self.mass).astype(ms.int32).sum(axis=1, keepdims=True), max=scores.shape[-1] - 1)
        remove = sorted_shifted > ops.gather_elements(sorted_shifted, 1, last)
        remove = mint.logical_and(remove, backend.arange(scores.shape[-1]) >= self.min_tokens_to_keep)
        return _fill(scores, _scatter_to_vocab(remove, sorted_indices), self.filter_value)


def _nansum(x):
    return mint.where(x != x, ms.Tensor(0.0, x.dtype), x).sum(axis=-1, keepdims=True)


class EpsilonLogitsWarper(LogitsProcessor):
    """Truncation sampling: drops tokens with probability below `epsilon`."""

    def __init__(self, epsilon: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        epsilon = float(epsilon)
        if epsilon <= 0 or epsilon >= 1:
            raise ValueError(f"`epsilon_cutoff` has to be a float > 0 and < 1, but is {epsilon}")
        self.epsilon, self.filter_value = epsilon, filter_value
        self.min_tokens_to_keep = _check_min_tokens(min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        remove = mint.softmax(scores, dim=-1) < self.epsilon
        remove = mint.logical_and(remove, scores < _kth_best(scores, self.min_tokens_to_keep))
        return _fill(scores, remove, self.filter_value)


class EtaLogitsWarper(LogitsProcessor):
    """Eta sampling: an entropy-dependent cutoff min(eta, sqrt(eta) * exp(-entropy))."""

    def __init__(self, epsilon: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1, device: str = "cpu"):
        epsilon = float(epsilon)
        if epsilon <= 0 or epsilon >= 1:
            raise ValueError(f"`eta_cutoff` has to be a float > 0 and < 1, but is {epsilon}")
        self.epsilon, self.filter_value = epsilon, filter_value
        self.min_tokens_to_keep = _check_min_tokens(int(min_tokens_to_keep))

    def __call__(self, input_ids, scores):
        log_probs = ops.log_softmax(scores, -1)
        probs = mint.exp(log_probs)
        entropy = -mint.where(probs > 0, probs * log_probs, ms.Tensor(0.0, scores.dtype)).sum(axis=-1, keepdims=True)
        eta = mint.minimum(ms.Tensor(self.epsilon, scores.dtype), math.sqrt(self.epsilon) * mint.exp(-entropy))
        remove = mint.logical_and(probs < eta, scores < _kth_best(scores, self.min_tokens_to_keep))
        return _fill(scores, remove, self.filter_value)


class LogitNormalization(LogitsProcessor):
    """log_softmax, so beam scores and sampled scores are proper log-probabilities."""

    def __call__(self, input_ids, scores):
        return ops.log_softmax(scores, -1)


class ClassifierFreeGuidanceLogitsProcessor(LogitsProcessor):
    """Classifier-free guidance over a doubled batch: the first half of `scores` are the conditional rows, the second
    half the unconditional ones; returns uncond + guidance_scale * (cond - uncond) for the first half."""

    def __init__(self, guidance_scale):
        if guidance_scale > 1:
            self.guidance_scale = guidance_scale
        else:
            raise ValueError("Require guidance scale >1 to use the classifier free guidance processor, got guidance "
                             f"scale {guidance_scale}.")  # fmt: skip

    def __call__(self, input_ids, scores):
        if scores.shape[0] != 2 * input_ids.shape[0]:
            raise ValueError(
                "Logits should have twice the batch size of the input ids, the first half of batches corresponding to "
                "the conditional inputs, and the second half of batches corresponding to the unconditional inputs. Got "
                f"batch size {scores.shape[0]} for the logits and {input_ids.shape[0]} for the input ids."
            )
        rows = scores.shape[0] // 2
        cond, uncond = scores[:rows], scores[rows:]
        return uncond + (cond - uncond) * self.guidance_scale


class UnbatchedClassifierFreeGuidanceLogitsProcessor(LogitsProcessor):
    """Classifier-free guidance for a decoder-only model: the model also runs on an unconditional context
    (`unconditional_ids`, by default the prompt's last token) with a cache of its own, one token per step, and the
    scores become uncond + guidance_scale * (cond - uncond) over log-softmaxed logits (transformers' processor)."""

    def __init__(self, guidance_scale: float, model, unconditional_ids=None, unconditional_attention_mask=None,
                 use_cache: Optional[bool] = True):  # fmt: skip
        self.guidance_scale = guidance_scale
        self.model = model
        self.unconditional_context = {"input_ids": unconditional_ids, "attention_mask": unconditional_attention_mask,
                                      "use_cache": use_cache, "past_key_values": None, "first_pass": True}  # fmt: skip

    def get_unconditional_logits(self, input_ids):
        context = self.unconditional_context
        if context["first_pass"]:
            if context["input_ids"] is None:
                context["input_ids"] = input_ids[:, -1:]
            if context["attention_mask"] is None:
                context["attention_mask"] = ops.ones(context["input_ids"].shape, ms.int32)
            ids, mask = context["input_ids"], context["attention_mask"]
            context["first_pass"] = False
        else:
            mask = mint.cat([context["attention_mask"], ops.ones((input_ids.shape[0], 1), ms.int32)], dim=1)
            last = input_ids[:, -1:].astype(ms.int32)
            ids = last if context["use_cache"] else mint.cat([context["input_ids"].astype(ms.int32), last], dim=1)
            context["input_ids"], context["attention_mask"] = ids, mask
        out = self.model(ids.astype(ms.int32), attention_mask=mask, use_cache=context["use_cache"],
                         past_key_values=context["past_key_values"])  # fmt: skip
        context["past_key_values"] = out.past_key_values
        return out.logits

    def __call__(self, input_ids, scores):
        scores = ops.log_softmax(scores, -1)
        if self.guidance_scale == 1:
            return scores
        unconditional = ops.log_softmax(self.get_unconditional_logits(input_ids)[:, -1].astype(scores.dtype), -1)
        return self.guidance_scale * (scores - unconditional) + unconditional
