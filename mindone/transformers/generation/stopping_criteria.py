"""Stopping criteria: callables `(input_ids, scores) -> [batch] bool tensor`, True where a row is done."""

import copy
import time
import warnings
from typing import Optional, Union

import mindspore as ms
import numpy as np
from mindspore import mint


class StoppingCriteria:
    def __call__(self, input_ids: ms.Tensor, scores: ms.Tensor, **kwargs) -> ms.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


def _all_rows(input_ids, done: bool) -> ms.Tensor:
    return ms.Tensor(np.full((input_ids.shape[0],), done))


class MaxLengthCriteria(StoppingCriteria):
    def __init__(self, max_length: int, max_position_embeddings: Optional[int] = None):
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings

    def __call__(self, input_ids, scores, **kwargs):
        return _all_rows(input_ids, input_ids.shape[-1] >= self.max_length)

    def host_done(self, ids: np.ndarray, scores) -> np.ndarray:
        return np.full(ids.shape[0], ids.shape[-1] >= self.max_length)


class MaxTimeCriteria(StoppingCriteria):
    def __init__(self, max_time: float, initial_timestamp: Optional[float] = None):
        self.max_time = max_time
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids, scores, **kwargs):
        return _all_rows(input_ids, time.time() - self.initial_timestamp > self.max_time)

    def host_done(self, ids: np.ndarray, scores) -> np.ndarray:
        return np.full(ids.shape[0], time.time() - self.initial_timestamp > self.max_time)


class EosTokenCriteria(StoppingCriteria):
    def __init__(self, eos_token_id: Union[int, list, ms.Tensor]):
        ids = eos_token_id.asnumpy() if isinstance(eos_token_id, ms.Tensor) else eos_token_id
        self.eos_token_id = ms.Tensor(np.atleast_1d(np.asarray(ids, dtype=np.int64)).reshape(1, -1))

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids[:, -1:].astype(ms.int64) == self.eos_token_id).any(axis=-1)

    def host_done(self, ids: np.ndarray, scores) -> np.ndarray:
        return np.isin(ids[:, -1], self.eos_token_id.asnumpy())


class StopStringCriteria(StoppingCriteria):
    """Stops a row when a stop string occurs in its decoded text and ends inside the final token.

    Same rule as transformers: the string may span several tokens and the final token may run past its end
    (["st", "opera"] matches "stop"), but a stop string that ended in an earlier token does not match.
    Token texts are taken in context, the way the tokenizer would decode them."""

    _CONTEXT = "abcdef"

    def __init__(self, tokenizer, stop_strings: Union[str, list]):
        self.stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not self.stop_strings or any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"`stop_strings` must be a non-empty string or list of non-empty strings, got {stop_strings}")
        self.tokenizer = tokenizer
        self._context_tokens = tokenizer.convert_ids_to_tokens(tokenizer(self._CONTEXT, add_special_tokens=False)["input_ids"])
        self._texts = {}
        self._window = max(len(s) for s in self.stop_strings) + 1

    def _token_text(self, token_id: int) -> str:
        if token_id not in self._texts:
            token = self.tokenizer.convert_ids_to_tokens(token_id)
            text = self.tokenizer.convert_tokens_to_string(self._context_tokens + [token]) if token is not None else ""
            self._texts[token_id] = text[text.index(self._CONTEXT) + len(self._CONTEXT) :] if self._CONTEXT in text else ""
        return self._texts[token_id]

    def _row_matches(self, ids) -> bool:
        texts = [self._token_text(int(t)) for t in ids]
        tail = "".join(texts)
        final_start = len(tail) - len(texts[-1])
        return any(tail.find(s, max(0, final_start - len(s) + 1)) != -1 for s in self.stop_strings)

    def __call__(self, input_ids, scores, **kwargs):
        return ms.Tensor(self.host_done(input_ids[:, -self._window :].asnumpy(), scores))

    def host_done(self, ids: np.ndarray, scores) -> np.ndarray:
        return np.array([self._row_matches(row) for row in ids[:, -self._window :]], dtype=bool)


class ConfidenceCriteria(StoppingCriteria):
    """Stops (an assistant model's drafting) once the probability of the last token, under the last step's scores
    (`scores` is the tuple of step scores), falls below `assistant_confidence_threshold`."""

    def __init__(self, assistant_confidence_threshold):
        self.assistant_confidence_threshold = assistant_confidence_threshold

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        probs = mint.nn.functional.softmax(scores[-1].astype(ms.float32), -1)
        token = int(input_ids[0, -1].asnumpy() if isinstance(input_ids, ms.Tensor) else input_ids[0, -1])
        return float(probs[0, token].asnumpy()) < self.assistant_confidence_threshold


class StoppingCriteriaList(list):
    def __call__(self, input_ids, scores, **kwargs) -> ms.Tensor:
        ids = input_ids.asnumpy() if isinstance(input_ids, ms.Tensor) else np.asarray(input_ids)
        return ms.Tensor(self.host_done(ids, scores))

    def host_done(self, ids: np.ndarray, scores) -> np.ndarray:
        """The same decision for numpy sequences, as numpy: the built-in criteria decide on the host without a
        device op; a user's own criterion gets tensors, as with __call__."""
        done = np.zeros(ids.shape[0], bool)
        for criteria in self:
            if hasattr(criteria, "host_done"):
                done |= criteria.host_done(ids, scores)
            else:
                done |= _host_bool(criteria(ms.Tensor(ids), scores))
        return done

    @property
    def max_length(self) -> Optional[int]:
        for criteria in self:
            if isinstance(criteria, MaxLengthCriteria):
                return criteria.max_length
        return None


def _host_bool(decision) -> np.ndarray:
    """A criterion's answer (a [batch] tensor, or one bool as transformers' ConfidenceCriteria returns) as numpy."""
    return np.asarray(decision.asnumpy() if isinstance(decision, ms.Tensor) else decision, bool)


def validate_stopping_criteria(stopping_criteria: StoppingCriteriaList, max_length: int) -> StoppingCriteriaList:
    """A copy of `stopping_criteria` that stops at `max_length` (transformers' helper): a MaxLengthCriteria is added
    when there is none; one with another length stays, with transformers' warning."""
    criteria = copy.deepcopy(stopping_criteria)
    if stopping_criteria.max_length is not None and stopping_criteria.max_length != max_length:
        warnings.warn("You set different `max_length` for stopping criteria and `max_length` parameter", UserWarning)
    elif stopping_criteria.max_length is None:
        criteria.append(MaxLengthCriteria(max_length=max_length))
    return criteria
