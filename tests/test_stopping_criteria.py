"""Stopping criteria against transformers' own on identical input ids."""

import time

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers.generation.stopping_criteria as hf

import mindone.transformers.generation.stopping_criteria as ours


def _both(factory, ids, scores=None):
    expected = factory(hf)(torch.tensor(ids), None if scores is None else torch.tensor(scores)).numpy()
    got = factory(ours)(ms.Tensor(ids), None if scores is None else ms.Tensor(scores)).asnumpy()
    return got, expected


@pytest.mark.parametrize("length", [5, 6, 9])
def test_max_length(length):
    ids = np.zeros((3, length), np.int64)
    got, expected = _both(lambda m: m.MaxLengthCriteria(6), ids)
    assert got.tolist() == expected.tolist()


def test_max_time():
    ids = np.zeros((2, 3), np.int64)
    for start, done in ((time.time(), False), (time.time() - 5, True)):
        got, expected = _both(lambda m: m.MaxTimeCriteria(1.0, initial_timestamp=start), ids)
        assert got.tolist() == expected.tolist() == [done, done]


@pytest.mark.parametrize("eos", [2, [2, 7], [9]])
def test_eos_token(eos):
    ids = np.array([[1, 2], [3, 7], [2, 5]], np.int64)
    got, expected = _both(lambda m: m.EosTokenCriteria(eos), ids)
    assert got.tolist() == expected.tolist()


def test_list_combines_with_or():
    ids = np.array([[1, 2, 3], [3, 4, 2]], np.int64)
    build = lambda m: m.StoppingCriteriaList([m.MaxLengthCriteria(10), m.EosTokenCriteria(2)])  # noqa: E731
    got, expected = _both(build, ids)
    assert got.tolist() == expected.tolist() == [False, True]
    assert build(ours).max_length == 10


@pytest.mark.slow
def test_stop_strings_match_transformers(smollm2_dir):
    """Random windows of real text and of random tokens; the decision must be HF's in every case."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    stops = ["stop", " the", "\n\n", "Paris."]
    text = "Please stop here. Go to the store, then stop at the stopper.\n\nThe capital is Paris. Unstoppable the"
    text_ids = tokenizer(text)["input_ids"]
    rng = np.random.default_rng(0)
    rows = [text_ids[: end] for end in range(2, len(text_ids) + 1)]
    rows += [rng.integers(0, 49152, size=8).tolist() for _ in range(40)]
    width = max(len(r) for r in rows)
    ids = np.array([[0] * (width - len(r)) + r for r in rows], np.int64)
    got, expected = _both(lambda m: m.StopStringCriteria(tokenizer, stops), ids)
    assert got.tolist() == expected.tolist() and 3 < sum(expected) < len(rows)
