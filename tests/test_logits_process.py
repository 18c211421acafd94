"""Every logits processor and warper against transformers' own on identical random scores and input ids."""

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers.generation.logits_process as hf

import mindone.transformers.generation.logits_process as ours

VOCAB = 40


def _inputs(seed=0, batch=3, length=9, id_range=12):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, id_range, size=(batch, length)).astype(np.int64)  # small range: repeats occur
    scores = (rng.normal(size=(batch, VOCAB)) * 3).astype(np.float32)
    return ids, scores


def _allowed(row):
    return [row[-1].item() % VOCAB, 7, 11]


PROMPTS = np.random.default_rng(7).integers(0, 4, size=(3, 8)).astype(np.int64)  # the ids' small range: shared n-grams


def _prompts(module):
    return torch.tensor(PROMPTS) if module is hf else PROMPTS


CASES = {
    "encoder_repetition_penalty": lambda m: m.EncoderRepetitionPenaltyLogitsProcessor(1.7, _prompts(m)),
    "encoder_repetition_penalty_below_1": lambda m: m.EncoderRepetitionPenaltyLogitsProcessor(0.6, _prompts(m)),
    "no_repeat_encoder_ngram_1": lambda m: m.EncoderNoRepeatNGramLogitsProcessor(1, _prompts(m)),
    "no_repeat_encoder_ngram_2": lambda m: m.EncoderNoRepeatNGramLogitsProcessor(2, _prompts(m)),
    "no_repeat_encoder_ngram_3": lambda m: m.EncoderNoRepeatNGramLogitsProcessor(3, _prompts(m)),
    "sequence_bias_dict": lambda m: m.SequenceBiasLogitsProcessor({(4,): 2.5, (3, 5): -4.0, (1, 2, 6): 1.5}),
    "sequence_bias_list": lambda m: m.SequenceBiasLogitsProcessor([[[4], 2.5], [[3, 5], -4.0]]),
    "repetition_penalty": lambda m: m.RepetitionPenaltyLogitsProcessor(1.3),
    "repetition_penalty_prompt_ignore": lambda m: m.RepetitionPenaltyLogitsProcessor(0.7, prompt_ignore_length=4),
    "no_repeat_ngram_1": lambda m: m.NoRepeatNGramLogitsProcessor(1),
    "no_repeat_ngram_2": lambda m: m.NoRepeatNGramLogitsProcessor(2),
    "no_repeat_ngram_3": lambda m: m.NoRepeatNGramLogitsProcessor(3),
    "bad_words": lambda m: m.NoBadWordsLogitsProcessor([[5], [3, 8], [2], [1, 1, 9]], eos_token_id=2),
    "min_length_active": lambda m: m.MinLengthLogitsProcessor(12, [2, 3]),
    "min_length_done": lambda m: m.MinLengthLogitsProcessor(5, 2),
    "min_new_tokens": lambda m: m.MinNewTokensLengthLogitsProcessor(4, 7, 2),
    "prefix_allowed": lambda m: m.PrefixConstrainedLogitsProcessor(lambda batch, row: _allowed(row), 1),
    "forced_bos_inactive": lambda m: m.ForcedBOSTokenLogitsProcessor(1),
    "forced_eos": lambda m: m.ForcedEOSTokenLogitsProcessor(10, [2, 3]),
    "inf_nan_remove": lambda m: m.InfNanRemoveLogitsProcessor(),
    "exponential_decay": lambda m: m.ExponentialDecayLengthPenalty((2, 1.5), [2, 5], 5),
    "suppress_tokens": lambda m: m.SuppressTokensLogitsProcessor([1, 4, 39]),
    "begin_suppress_tokens": lambda m: m.SuppressTokensAtBeginLogitsProcessor([3, 6], 9),
    "temperature": lambda m: m.TemperatureLogitsWarper(0.6),
    "top_k": lambda m: m.TopKLogitsWarper(7),
    "top_k_min_keep": lambda m: m.TopKLogitsWarper(2, min_tokens_to_keep=4),
    "top_p": lambda m: m.TopPLogitsWarper(0.75),
    "top_p_min_keep": lambda m: m.TopPLogitsWarper(0.1, min_tokens_to_keep=3),
    "min_p": lambda m: m.MinPLogitsWarper(0.1),
    "min_p_min_keep": lambda m: m.MinPLogitsWarper(0.9, min_tokens_to_keep=3),
    "typical_p": lambda m: m.TypicalLogitsWarper(0.8),
    "typical_p_min_keep": lambda m: m.TypicalLogitsWarper(0.2, min_tokens_to_keep=4),
    "epsilon": lambda m: m.EpsilonLogitsWarper(0.03),
    "epsilon_min_keep": lambda m: m.EpsilonLogitsWarper(0.5, min_tokens_to_keep=2),
    "eta": lambda m: m.EtaLogitsWarper(0.05),
    "eta_min_keep": lambda m: m.EtaLogitsWarper(0.9, min_tokens_to_keep=3),
    "renormalize": lambda m: m.LogitNormalization(),
}


def _assert_same(got, expected):
    assert got.shape == expected.shape
    assert np.array_equal(np.isposinf(got), np.isposinf(expected)) and np.array_equal(np.isneginf(got), np.isneginf(expected))
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    finite = np.isfinite(expected)
    assert np.abs(got[finite] - expected[finite]).max(initial=0.0) <= 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_processor_matches_transformers(name, seed):
    ids, scores = _inputs(seed, length=14, id_range=4) if name.startswith("no_repeat") else _inputs(seed)
    if name == "inf_nan_remove":
        scores[0, :3] = [np.nan, np.inf, -np.inf]
    if name in ("eta", "typical_p", "renormalize"):
        scores[1, 5:9] = -np.inf  # already-filtered tokens must not break entropy/normalisation
    expected = CASES[name](hf)(torch.tensor(ids), torch.tensor(scores)).numpy()
    got = CASES[name](ours)(ms.Tensor(ids), ms.Tensor(scores)).asnumpy()
    _assert_same(got, expected)
    changed = not np.array_equal(expected, scores, equal_nan=True)
    assert changed == (name not in INACTIVE), "the case must exercise the processor (or be listed as inactive)"


INACTIVE = {"min_length_done", "forced_bos_inactive"}


def test_processors_chain_in_a_list():
    ids, scores = _inputs(2)
    build = lambda m: m.LogitsProcessorList(  # noqa: E731
        [m.RepetitionPenaltyLogitsProcessor(1.2), m.NoRepeatNGramLogitsProcessor(2), m.TemperatureLogitsWarper(0.8),
         m.TopKLogitsWarper(10), m.TopPLogitsWarper(0.9)]  # fmt: skip
    )
    _assert_same(build(ours)(ms.Tensor(ids), ms.Tensor(scores)).asnumpy(), build(hf)(torch.tensor(ids), torch.tensor(scores)).numpy())


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda m: m.TemperatureLogitsWarper(-0.5), "strictly positive float"),
        (lambda m: m.TemperatureLogitsWarper(0.0), "set `do_sample=False`"),
        (lambda m: m.TopPLogitsWarper(1.5), "`top_p` has to be a float > 0 and < 1"),
        (lambda m: m.TopKLogitsWarper(0), "`top_k` has to be a strictly positive integer"),
        (lambda m: m.RepetitionPenaltyLogitsProcessor(0.0), "`penalty` has to be a strictly positive float"),
        (lambda m: m.NoRepeatNGramLogitsProcessor(0), "`ngram_size` has to be a strictly positive integer"),
        (lambda m: m.NoBadWordsLogitsProcessor([]), "`bad_words_ids` has to be a non-empty list"),
        (lambda m: m.SequenceBiasLogitsProcessor({(1,): 1}), "dict with floats as values"),
        (lambda m: m.TypicalLogitsWarper(1.5), "`typical_p` has to be a float > 0 and < 1"),
        (lambda m: m.EtaLogitsWarper(2.0), "`eta_cutoff` has to be a float > 0 and < 1"),
        (lambda m: m.EpsilonLogitsWarper(0.0), "`epsilon_cutoff` has to be a float > 0 and < 1"),
        (lambda m: m.MinPLogitsWarper(1.5), "`min_p` has to be a float in the [0, 1] interval"),
        (lambda m: m.EncoderRepetitionPenaltyLogitsProcessor(0.0, _prompts(m)), "`penalty` has to be a strictly positive"),
        (lambda m: m.EncoderNoRepeatNGramLogitsProcessor(0, _prompts(m)), "`encoder_ngram_size` has to be a strictly"),
    ],
)
def test_invalid_arguments_raise_like_transformers(factory, message):
    for module in (hf, ours):
        with pytest.raises(ValueError) as excinfo:
            factory(module)
        assert message in str(excinfo.value)


@pytest.mark.parametrize("scale", [1.5, 3.0])
def test_classifier_free_guidance_matches_transformers(scale):
    ids, _ = _inputs(3, batch=2)
    scores = np.random.default_rng(4).normal(size=(4, VOCAB)).astype(np.float32)
    expected = hf.ClassifierFreeGuidanceLogitsProcessor(scale)(torch.tensor(ids), torch.tensor(scores)).numpy()
    got = ours.ClassifierFreeGuidanceLogitsProcessor(scale)(ms.Tensor(ids), ms.Tensor(scores)).asnumpy()
    _assert_same(got, expected)
    for module in (hf, ours):
        with pytest.raises(ValueError, match="Require guidance scale >1"):
            module.ClassifierFreeGuidanceLogitsProcessor(1.0)


@pytest.mark.parametrize("threshold", [0.01, 0.3, 0.9])
def test_confidence_criteria_matches_transformers(threshold):
    import transformers.generation.stopping_criteria as hf_stop

    from mindone.transformers.generation import ConfidenceCriteria

    ids, scores = _inputs(5, batch=1)
    steps = (scores * 0.3, scores)
    expected = hf_stop.ConfidenceCriteria(threshold)(torch.tensor(ids), tuple(torch.tensor(s) for s in steps))
    assert ConfidenceCriteria(threshold)(ms.Tensor(ids), tuple(ms.Tensor(s) for s in steps)) == expected


@pytest.mark.parametrize("scheme, width", [("lefthash", 1), ("lefthash", 3), ("selfhash", 1), ("selfhash", 2)])
def test_watermark_processor_matches_transformers(scheme, width):
    from mindone.transformers.generation import WatermarkLogitsProcessor

    ids, scores = _inputs(6, length=5)
    options = dict(greenlist_ratio=0.3, bias=2.5, seeding_scheme=scheme, context_width=width)
    expected = hf.WatermarkLogitsProcessor(VOCAB, "cpu", **options)(torch.tensor(ids), torch.tensor(scores)).numpy()
    got = WatermarkLogitsProcessor(VOCAB, "cpu", **options)(ms.Tensor(ids), ms.Tensor(scores)).asnumpy()
    _assert_same(got, expected)
    assert not np.array_equal(got, scores)


def test_generator_permutation_is_pytorchs_randperm():
    from mindone.transformers.generation.watermarking import generator_permutation

    for n, seed in [(99, 7), (49152, 15485863 * 49151), (1000, 2**40 + 3)]:
        expected = torch.randperm(n, generator=torch.Generator().manual_seed(seed % (2**64 - 1))).numpy()
        assert np.array_equal(generator_permutation(n, seed), expected)
