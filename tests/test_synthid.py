"""SynthID text watermarking against transformers + PyTorch: the sampling table, hashes, g-values and masks exactly,
processed scores within 1e-5 (alone and inside generate()), and the Bayesian detector loaded from a checkpoint that
transformers saved."""

import copy
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
import torch
from helpers import ms_tensor, random_ids, tiny_llama_pair
from transformers.generation import BayesianDetectorModel as TheirDetectorModel
from transformers.generation import SynthIDTextWatermarkDetector as TheirDetector
from transformers.generation import SynthIDTextWatermarkLogitsProcessor as TheirProcessor

from mindone.transformers import set_seed
from mindone.transformers.generation import (
    BayesianDetectorConfig,
    BayesianDetectorModel,
    SynthIDTextWatermarkDetector,
    SynthIDTextWatermarkingConfig,
    SynthIDTextWatermarkLogitsProcessor,
)
from mindone.transformers.generation.watermarking import generator_randint

KEYS = [654, 400, 836, 123, 340, 443]
PROMPT_LENGTH, EOS = 5, 2


def processor_pair(**overrides):
    arguments = dict(ngram_len=3, keys=KEYS, sampling_table_size=2**16, sampling_table_seed=0, context_history_size=10)
    arguments.update(overrides)
    return SynthIDTextWatermarkLogitsProcessor(**arguments), TheirProcessor(**arguments, device="cpu")


def ids_with_repeats_and_eos() -> np.ndarray:
    """Two rows of 24 tokens: the second repeats a 6-token stretch (repeated contexts), the first has an eos."""
    ids = random_ids(2, 24, vocab=40, seed=5)
    ids[1, 12:18] = ids[1, 4:10]
    ids[0, 17] = EOS
    return ids


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("synthid_llama")
    return tiny_llama_pair(directory, seed=2)


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    """A BayesianDetectorModel saved by transformers, its weights drawn with a fixed seed and spread wider than the
    initialisation so that every term of the posterior matters."""
    torch.manual_seed(11)
    model = TheirDetectorModel(BayesianDetectorConfig(watermarking_depth=len(KEYS), base_rate=0.3))
    with torch.no_grad():
        model.likelihood_model_watermarked.delta.normal_(0.0, 0.5)
        model.likelihood_model_watermarked.beta.normal_(-1.0, 1.0)
    directory = tmp_path_factory.mktemp("synthid_detector")
    model.save_pretrained(directory)
    return str(directory)


def generate_here(model, watermarking_config, seed: int = 0, new_tokens: int = 40) -> np.ndarray:
    set_seed(seed)
    prompts = ms_tensor(random_ids(4, PROMPT_LENGTH, seed=43))
    text = model.generate(prompts, do_sample=True, max_new_tokens=new_tokens, watermarking_config=watermarking_config)
    return text.asnumpy()


# ---------------------------------------------------------------- the processor on its own
@pytest.mark.parametrize("seed", [0, 1234, 2**33 + 7, -5])
def test_sampling_table_is_torch_randint(seed):
    ours, _ = processor_pair(sampling_table_seed=seed)
    expected = torch.randint(0, 2, (2**16,), generator=torch.Generator().manual_seed(seed)).numpy()
    np.testing.assert_array_equal(ours.sampling_table, expected)
    wider = torch.randint(3, 1000, (500,), generator=torch.Generator().manual_seed(seed)).numpy()
    np.testing.assert_array_equal(generator_randint(3, 1000, 500, seed), wider)


def test_hashes_wrap_around_like_torch():
    ours, theirs = processor_pair()
    ngrams = np.random.default_rng(0).integers(-(2**62), 2**62, size=(2, 7, 3))
    expected = theirs.compute_ngram_keys(torch.tensor(ngrams)).numpy()
    np.testing.assert_array_equal(ours.compute_ngram_keys(ngrams), expected)
    data = ngrams[:, 0, :]
    expected = theirs.accumulate_hash(torch.tensor([3, -9]), torch.tensor(data), multiplier=-7, increment=2**40)
    np.testing.assert_array_equal(ours.accumulate_hash(np.array([3, -9]), data, -7, 2**40), expected.numpy())


def test_g_values_and_masks_match_transformers():
    ours, theirs = processor_pair()
    ids = ids_with_repeats_and_eos()
    g_values = ours.compute_g_values(ms.Tensor(ids))
    assert g_values.dtype == np.int64 and g_values.shape == (2, 22, len(KEYS))
    np.testing.assert_array_equal(g_values, theirs.compute_g_values(torch.tensor(ids)).numpy())
    repetition = ours.compute_context_repetition_mask(ids)
    np.testing.assert_array_equal(repetition, theirs.compute_context_repetition_mask(torch.tensor(ids)).numpy())
    assert repetition.dtype == bool and not repetition[1].all()  # the repeated stretch is masked
    eos = ours.compute_eos_token_mask(ids, EOS)
    np.testing.assert_array_equal(eos, theirs.compute_eos_token_mask(torch.tensor(ids), EOS).numpy())
    assert eos.dtype == bool and not eos[0, 17:].any() and eos[0, :17].all()
    assert ours.expected_mean_g_value(99) == theirs.expected_mean_g_value(99)


@pytest.mark.parametrize("ngram_len", [1, 2, 5])
def test_g_values_and_masks_match_transformers_for_other_ngram_lengths(ngram_len):
    ours, theirs = processor_pair(ngram_len=ngram_len)
    ids = ids_with_repeats_and_eos()
    np.testing.assert_array_equal(ours.compute_g_values(ids), theirs.compute_g_values(torch.tensor(ids)).numpy())
    expected = theirs.compute_context_repetition_mask(torch.tensor(ids)).numpy()
    np.testing.assert_array_equal(ours.compute_context_repetition_mask(ids), expected)


def processed_steps(ours, theirs, scale: float):
    """(ours, theirs, input scores) for one call per prefix of ids_with_repeats_and_eos(), on the same random scores
    [2, 99]: `scale` times standard normal; the first row has 30 tokens at -inf, as after top-k, the second 5 tokens
    whose probabilities underflow float32 (as at a low temperature). Both become the float32 minimum."""
    ids, rng = ids_with_repeats_and_eos(), np.random.default_rng(1)
    for length in range(PROMPT_LENGTH, ids.shape[1]):
        scores = (scale * rng.standard_normal((2, 99))).astype(np.float32)
        scores[0, :30] = -np.inf
        scores[1, :5] -= 200
        got = ours(ms.Tensor(ids[:, :length]), ms.Tensor(scores)).asnumpy()
        yield got, theirs(torch.tensor(ids[:, :length]), torch.tensor(scores)).numpy(), scores


@pytest.mark.parametrize("options", [{}, {"skip_first_ngram_calls": True}, {"debug_mode": True}])
def test_processed_scores_match_transformers_step_by_step(options):
    left_unwatermarked = 0
    for got, expected, scores in processed_steps(*processor_pair(**options), scale=1.0):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        unchanged = np.ones_like(scores) if options.get("debug_mode") else scores
        left_unwatermarked += int((got == unchanged).all(axis=1).sum())
    assert left_unwatermarked > 0  # repeated contexts (or skipped first calls) keep their scores


def test_peaked_scores_match_transformers_in_probability():
    """Where a layer's g-mass nears 1, 1 + g - mass cancels and transformers' float32 result carries its rounding
    (computed here in float64): improbable tokens' log-scores then differ by more than 1e-5, so probabilities are
    compared, and the log-scores of tokens with probability 1e-3 or more."""
    for got, expected, _ in processed_steps(*processor_pair(keys=list(range(100, 130))), scale=6.0):
        np.testing.assert_allclose(np.exp(got), np.exp(expected), rtol=0, atol=1e-5)
        likely = np.exp(expected) >= 1e-3
        np.testing.assert_allclose(got[likely], expected[likely], rtol=0, atol=1e-4)


# ---------------------------------------------------------------- inside generate()
def test_generate_scores_match_transformers_each_step(pair):
    """Our generate() samples its own tokens; transformers' processors (built by its own _get_logits_processor) then
    replay the same prefixes, and every step's processed scores agree. A second generate() with the same seed gives
    the same result: each generation starts a new watermarking state."""
    reference, model = pair
    config = SynthIDTextWatermarkingConfig(keys=KEYS, ngram_len=3, context_history_size=8)
    ids = random_ids(2, PROMPT_LENGTH, seed=41)
    options = dict(do_sample=True, top_k=20, max_new_tokens=12, return_dict_in_generate=True, output_scores=True)
    runs = []
    for _ in range(2):
        set_seed(0)
        runs.append(model.generate(ms_tensor(ids), watermarking_config=config, **options))
    sequences = runs[0].sequences.asnumpy()
    assert sequences.tolist() == runs[1].sequences.asnumpy().tolist()
    generation_config = copy.deepcopy(reference.generation_config)
    generation_config.update(watermarking_config=config, do_sample=True, top_k=20)
    processors = reference._get_logits_processor(generation_config, PROMPT_LENGTH, torch.tensor(ids), device="cpu")
    with torch.no_grad():
        for step, (mine, again) in enumerate(zip(runs[0].scores, runs[1].scores)):
            prefix = torch.tensor(sequences[:, : PROMPT_LENGTH + step])
            expected = processors(prefix, reference(prefix).logits[:, -1, :]).numpy()
            np.testing.assert_allclose(mine.asnumpy(), expected, rtol=0, atol=1e-5)
            np.testing.assert_array_equal(mine.asnumpy(), again.asnumpy())


def test_first_step_scores_match_transformers_generate(pair):
    reference, model = pair
    config = SynthIDTextWatermarkingConfig(keys=KEYS, ngram_len=4)
    ids = random_ids(2, PROMPT_LENGTH, seed=42)
    options = dict(do_sample=True, max_new_tokens=1, return_dict_in_generate=True, output_scores=True)
    ours = model.generate(ms_tensor(ids), watermarking_config=config, **options)
    with torch.no_grad():
        theirs = reference.generate(torch.tensor(ids), watermarking_config=config, **options)
    np.testing.assert_allclose(ours.scores[0].asnumpy(), theirs.scores[0].numpy(), rtol=0, atol=1e-5)


def test_watermarked_text_has_higher_mean_g_value(pair):
    """What a detector relies on: the same sampling seed, with and without the watermark; the g-values of the
    generated tokens (repeated contexts left out) average ~0.72 against ~0.49."""
    _, model = pair
    config = SynthIDTextWatermarkingConfig(keys=KEYS, ngram_len=3)
    processor = SynthIDTextWatermarkLogitsProcessor(**config.to_dict())
    means = {}
    for name, watermarking_config in (("plain", None), ("watermarked", config)):
        text = generate_here(model, watermarking_config)
        first_generated = PROMPT_LENGTH - (config.ngram_len - 1)
        g_values = processor.compute_g_values(text)[:, first_generated:]
        counted = processor.compute_context_repetition_mask(text)[:, first_generated:]
        means[name] = g_values[counted].mean()
    assert means["watermarked"] > 0.65 > 0.55 > means["plain"], means


# ---------------------------------------------------------------- the Bayesian detector
def test_detector_posterior_matches_transformers_on_text_watermarked_here(pair, detector_dir):
    _, model = pair
    config = SynthIDTextWatermarkingConfig(keys=KEYS, ngram_len=3)
    text = generate_here(model, config, new_tokens=24)
    text[1, 20:] = EOS  # an eos ends what is scored
    tokenizer = SimpleNamespace(eos_token_id=EOS)
    ours = SynthIDTextWatermarkDetector(BayesianDetectorModel.from_pretrained(detector_dir),
                                        SynthIDTextWatermarkLogitsProcessor(**config.to_dict()), tokenizer)  # fmt: skip
    their_processor = config.construct_processor(99, "cpu")
    theirs = TheirDetector(TheirDetectorModel.from_pretrained(detector_dir), their_processor, tokenizer)
    (posterior,) = ours(ms.Tensor(text))
    with torch.no_grad():
        (expected,) = theirs(torch.tensor(text))
    assert posterior.shape == (4,)
    np.testing.assert_allclose(posterior.asnumpy(), expected.numpy(), rtol=0, atol=1e-5)


def detector_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    g_values = (rng.random((3, 40, len(KEYS))) < 0.6).astype(np.int64)
    return g_values, rng.random((3, 40)) < 0.9, np.array([1.0, 0.0, 1.0], np.float32)


def test_detector_loss_and_gradients_match_transformers(detector_dir):
    ours, theirs = BayesianDetectorModel.from_pretrained(detector_dir), TheirDetectorModel.from_pretrained(detector_dir)
    g_values, mask, labels = detector_inputs()
    output = ours(g_values, mask, labels=labels, loss_batch_weight=2, return_dict=True)
    expected = theirs(torch.tensor(g_values), torch.tensor(mask), labels=torch.tensor(labels), loss_batch_weight=2,
                      return_dict=True)  # fmt: skip
    expected_posterior = expected.posterior_probabilities.detach().numpy()
    np.testing.assert_allclose(output.posterior_probabilities.asnumpy(), expected_posterior, rtol=0, atol=1e-5)
    np.testing.assert_allclose(output.loss.asnumpy(), expected.loss.detach().numpy(), rtol=1e-5)
    expected.loss.backward()
    parameters = ours.trainable_params()
    loss_of = lambda *inputs: ours(*inputs, loss_batch_weight=2)[1]  # noqa: E731
    inputs = (ms.Tensor(g_values, ms.float32), ms.Tensor(mask), ms.Tensor(labels))
    _, gradients = ms.value_and_grad(loss_of, None, parameters)(*inputs)
    their_gradients = {name: parameter.grad.numpy() for name, parameter in theirs.named_parameters()}
    for parameter, gradient in zip(parameters, gradients):
        np.testing.assert_allclose(gradient.asnumpy(), their_gradients[parameter.name], rtol=1e-4, atol=1e-6)


def test_detector_saved_here_loads_in_transformers(detector_dir, tmp_path):
    BayesianDetectorModel.from_pretrained(detector_dir).save_pretrained(tmp_path)
    g_values, mask, _ = detector_inputs(seed=1)
    with torch.no_grad():
        expected = TheirDetectorModel.from_pretrained(detector_dir)(torch.tensor(g_values), torch.tensor(mask))[0]
        reloaded = TheirDetectorModel.from_pretrained(tmp_path)(torch.tensor(g_values), torch.tensor(mask))[0]
    np.testing.assert_array_equal(reloaded.numpy(), expected.numpy())


def test_rows_with_one_scored_position_are_independent(detector_dir):
    """transformers 4.57 mixes such rows (it squeezes every size-1 axis, docs/generation.md); here each row gets the
    posterior it gets alone, which transformers computes the same for a batch of one."""
    ours, theirs = BayesianDetectorModel.from_pretrained(detector_dir), TheirDetectorModel.from_pretrained(detector_dir)
    g_values, mask, _ = detector_inputs()
    g_values, mask = g_values[:2, :1], mask[:2, :1]
    (together,) = ours(g_values, mask)
    for row in range(2):
        with torch.no_grad():
            (alone,) = theirs(torch.tensor(g_values[row : row + 1]), torch.tensor(mask[row : row + 1]))
        np.testing.assert_allclose(together.asnumpy()[row], alone.numpy()[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_one_line():
    ours, _ = processor_pair()
    with pytest.raises(ValueError, match="too short for ngram_len=3"):
        ours.compute_g_values(np.array([[5, 6]]))
    with pytest.raises(ValueError, match=r"shape \(batch_size, input_len\)"):
        ours.compute_context_repetition_mask(np.array([5, 6, 7, 8]))
    ours(np.array([[5, 6, 7]]), ms.Tensor(np.zeros((1, 10), np.float32)))
    with pytest.raises(ValueError, match="use a new SynthIDTextWatermarkLogitsProcessor for each generation"):
        ours(np.array([[5, 6, 7]] * 2), ms.Tensor(np.zeros((2, 10), np.float32)))
    with pytest.raises(ValueError, match="watermarking_depth is None"):
        BayesianDetectorModel(BayesianDetectorConfig())
    detector = BayesianDetectorModel(BayesianDetectorConfig(watermarking_depth=2))
    with pytest.raises(ValueError, match="labels must have shape"):
        detector(np.zeros((2, 4, 2)), np.ones((2, 4)), labels=np.ones(3))
    with pytest.raises(ValueError, match="watermarking_depth=2"):
        detector(np.zeros((2, 4, 3)), np.ones((2, 4)))


def test_detector_config_reads_transformers_file(tmp_path):
    """The config is this library's class (transformers' needs PyTorch to import) writing the same config.json."""
    from transformers.generation import BayesianDetectorConfig as TheirConfig

    theirs = TheirConfig(watermarking_depth=3, base_rate=0.2)
    theirs.set_detector_information("tiny-llama", {"keys": KEYS, "ngram_len": 5})
    theirs.save_pretrained(tmp_path)
    ours = BayesianDetectorConfig.from_pretrained(str(tmp_path))
    assert ours.to_dict() == theirs.to_dict()
