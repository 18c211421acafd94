"""generate(): defaults, lengths, special tokens, padding, processors and sampling, against transformers + PyTorch."""

import logging

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers
from helpers import TINY, left_padded, ms_tensor, random_ids, tiny_llama_pair, torch_generate
from scipy import stats

from mindone.transformers import (
    GenerationConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    set_seed,
)
from mindone.transformers import backend


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gen")
    return tiny_llama_pair(directory, seed=1)


@pytest.fixture
def hf_logs():
    transformers.utils.logging.enable_propagation()
    yield
    transformers.utils.logging.disable_propagation()


def _warnings(caplog, logger_prefix):
    return sorted({r.getMessage() for r in caplog.records if r.name.startswith(logger_prefix) and r.levelno >= logging.WARNING})


def test_default_length_is_20_new_tokens(pair):
    reference, model = pair
    ids = random_ids(1, 6, seed=11)
    expected = torch_generate(reference, ids, eos_token_id=None)
    ours = model.generate(ms_tensor(ids), eos_token_id=None).asnumpy().tolist()
    assert ours == expected and len(ours[0]) == 26


def test_same_warnings_as_transformers(pair, caplog, hf_logs):
    reference, model = pair
    ids, mask = left_padded([5, 3], 5, pad=0, seed=2)
    ids[1, -1] = 0  # right padding in the second row
    cases = [dict(pad_token_id=None), dict(pad_token_id=0), dict(max_new_tokens=3, max_length=30)]
    for kwargs in cases:
        caplog.clear()
        torch_generate(reference, ids, max_new_tokens=kwargs.pop("max_new_tokens", 4), **kwargs)
        theirs = [m.replace("tensor(2)", "2") for m in _warnings(caplog, "transformers.generation")]
        caplog.clear()
        model.generate(ms_tensor(ids), max_new_tokens=4 if "max_length" not in kwargs else 3, **kwargs)
        assert _warnings(caplog, "mindone") == theirs and theirs


def test_eos_list_stops_each_row_and_pads(pair):
    reference, model = pair
    ids, mask = left_padded([6, 4, 5], 6, seed=7)
    free_run = torch_generate(reference, ids, mask, max_new_tokens=10, eos_token_id=None)
    eos = [free_run[0][8], free_run[2][10]]
    expected = torch_generate(reference, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    ours = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    assert ours.asnumpy().tolist() == expected


def test_input_longer_than_max_length_raises(pair):
    _, model = pair
    with pytest.raises(ValueError, match="Input length of input_ids is 8, but `max_length` is set to 5"):
        model.generate(ms_tensor(random_ids(1, 8)), max_length=5)


@pytest.mark.parametrize("bad", [np.zeros((1, 0), np.int64), np.zeros((3,), np.int64)])
def test_bad_input_shapes_raise(pair, bad):
    _, model = pair
    with pytest.raises(ValueError, match="non-empty \\[batch, length\\]"):
        model.generate(ms_tensor(bad), max_new_tokens=2)


def test_generation_config_json_and_overrides(pair, tmp_path):
    reference, _ = pair
    reference.generation_config.max_new_tokens = 3
    reference.save_pretrained(tmp_path)
    reference.generation_config.max_new_tokens = None
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    ids = random_ids(1, 4, seed=9)
    assert model.generate(ms_tensor(ids)).shape == (1, 7)
    assert model.generate(ms_tensor(ids), max_new_tokens=5).shape == (1, 9)
    custom = GenerationConfig(max_new_tokens=2, do_sample=False)
    assert model.generate(ms_tensor(ids), generation_config=custom).shape == (1, 6)


def test_sampling_is_reproducible_with_seed(pair):
    _, model = pair
    ids = ms_tensor(random_ids(2, 5))
    runs = []
    for seed in (0, 0, 1):
        set_seed(seed)
        runs.append(model.generate(ids, do_sample=True, max_new_tokens=12, top_k=0).asnumpy().tolist())
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (TemperatureLogitsWarper(0.7), transformers.TemperatureLogitsWarper(0.7)),
        (TopKLogitsWarper(5), transformers.TopKLogitsWarper(5)),
        (TopPLogitsWarper(0.8), transformers.TopPLogitsWarper(0.8)),
        (TopPLogitsWarper(0.3, min_tokens_to_keep=3), transformers.TopPLogitsWarper(0.3, min_tokens_to_keep=3)),
    ],
    ids=["temperature", "top_k", "top_p", "top_p_min_keep"],
)
def test_warpers_match_transformers(ours, theirs):
    scores = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    ids = random_ids(4, 3)
    expected = theirs(torch.tensor(ids), torch.tensor(scores)).numpy()
    got = ours(ms_tensor(ids), ms.Tensor(scores)).asnumpy()
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    assert np.abs(got[finite] - expected[finite]).max() <= 1e-5


def test_multinomial_follows_the_distribution():
    """Chi-square goodness of fit of 20,000 draws against the processed distribution, at alpha = 0.001."""
    logits = np.random.default_rng(3).normal(size=(1, 12)).astype(np.float32)
    processors = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(8)])
    scores = processors(None, ms.Tensor(logits))
    probs = ms.ops.softmax(scores, -1)
    draws = 20000
    set_seed(123)
    samples = backend.multinomial(probs.broadcast_to((draws, 12))).asnumpy()
    expected = probs.asnumpy()[0].astype(np.float64)
    expected = expected / expected.sum() * draws
    observed = np.bincount(samples, minlength=12)
    assert observed[expected == 0].sum() == 0
    keep = expected > 0
    assert stats.chisquare(observed[keep], expected[keep]).pvalue > 1e-3


def test_model_forward_returns_dynamic_cache(pair):
    from mindone.transformers import DynamicCache

    _, model = pair
    out = model(input_ids=ms_tensor(random_ids(1, 4)), use_cache=True)
    assert isinstance(out.past_key_values, DynamicCache) and out.past_key_values.get_seq_length() == 4
    assert model(input_ids=ms_tensor(random_ids(1, 4)), use_cache=False).past_key_values is None


def test_custom_processor_of_a_configured_type_replaces_it_like_transformers(pair, caplog, hf_logs):
    """transformers 4.57 warns and lets the custom object take the configured one's place (before 4.50 it raised);
    custom processors are merged before the sampling warpers are appended."""
    from mindone.transformers import RepetitionPenaltyLogitsProcessor

    reference, model = pair
    ids = random_ids(2, 5, seed=12)
    custom_hf = transformers.LogitsProcessorList([transformers.RepetitionPenaltyLogitsProcessor(3.0)])
    expected = torch_generate(reference, ids, max_new_tokens=8, repetition_penalty=1.1, logits_processor=custom_hf)
    theirs = [m for m in _warnings(caplog, "transformers.generation") if "custom logits processor" in m]
    caplog.clear()
    custom = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(3.0)])
    ours = model.generate(ms_tensor(ids), max_new_tokens=8, repetition_penalty=1.1, logits_processor=custom)
    mine = [m for m in _warnings(caplog, "mindone") if "custom logits processor" in m]
    assert ours.asnumpy().tolist() == expected
    assert len(theirs) == len(mine) == 1 and mine[0].split("<class")[0] == theirs[0].split("<class")[0]


@pytest.mark.parametrize("saved_by", ["4.37.0", "4.57.1"])
@pytest.mark.parametrize("use_model_defaults", [None, True, False])
def test_model_defaults_merge_like_transformers(pair, tmp_path, saved_by, use_model_defaults):
    """A passed GenerationConfig takes the model's generation_config.json values only when transformers would
    (saved by >= 4.50, or use_model_defaults=True); otherwise only the special tokens are filled in."""
    reference, _ = pair
    reference.generation_config.repetition_penalty = 3.0
    reference.generation_config.eos_token_id = 7
    reference.save_pretrained(tmp_path)
    reference.generation_config.repetition_penalty, reference.generation_config.eos_token_id = 1.0, 2
    config_file = tmp_path / "generation_config.json"
    config_file.write_text(config_file.read_text().replace('"4.57.1"', f'"{saved_by}"'))
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ours = LlamaForCausalLM.from_pretrained(tmp_path)
    ids = random_ids(2, 5, seed=14)
    passed = GenerationConfig(max_new_tokens=10)
    expected = torch_generate(theirs, ids, generation_config=passed, use_model_defaults=use_model_defaults)
    got = ours.generate(ms_tensor(ids), generation_config=passed, use_model_defaults=use_model_defaults)
    assert got.asnumpy().tolist() == expected


def test_past_key_values_inputs_like_transformers(pair):
    """A legacy tuple cache is converted; a cache together with cache_implementation is refused (HF's error)."""
    from mindone.transformers import DynamicCache

    _, model = pair
    ids = ms_tensor(random_ids(1, 6, seed=15))
    expected = model.generate(ids, max_new_tokens=5).asnumpy().tolist()
    prefix = model(input_ids=ids[:, :5], use_cache=True).past_key_values
    legacy = prefix.to_legacy_cache()
    assert model.generate(ids, max_new_tokens=5, past_key_values=legacy).asnumpy().tolist() == expected
    with pytest.raises(ValueError, match="Passing both `cache_implementation`"):
        model.generate(ids, max_new_tokens=5, past_key_values=DynamicCache(), cache_implementation="static")


@pytest.mark.parametrize(
    "option, message",
    [
        (dict(cache_implementation="offloaded"), "cache_implementation='offloaded' is not supported; use 'static'"),
        (dict(return_dict_in_generate=True, output_attentions=True), "output_attentions=True is not supported"),
        (dict(return_dict_in_generate=True, output_hidden_states=True), "output_hidden_states=True is not supported"),
    ],
)
def test_options_transformers_honours_and_this_library_not_yet_are_refused(pair, option, message):
    _, model = pair
    with pytest.raises(NotImplementedError) as refused:
        model.generate(ms_tensor(random_ids(1, 4)), max_new_tokens=2, **option)
    assert message in str(refused.value)


def test_a_forward_asked_for_attention_weights_refuses_instead_of_leaving_them_out(pair):
    _, model = pair
    with pytest.raises(NotImplementedError, match="output_attentions=True is not supported"):
        model(ms_tensor(random_ids(1, 4)), output_attentions=True)
    assert model(ms_tensor(random_ids(1, 4)), output_attentions=False).logits.shape == (1, 4, TINY["vocab_size"])


@pytest.mark.parametrize("recorded", [False, True])
def test_custom_criteria_receive_the_scores_transformers_passes(pair, recorded):
    """transformers hands a criterion the tuple of the steps' scores when they are recorded, else None."""
    from mindone.transformers.generation import StoppingCriteria, StoppingCriteriaList

    def recorder(base, seen, never):
        class Recorder(base):
            def __call__(self, input_ids, scores, **kwargs):
                seen.append(None if scores is None else len(scores))
                return never(input_ids.shape[0])

        return Recorder()

    reference, model = pair
    ids, options = random_ids(1, 4), dict(max_new_tokens=3, return_dict_in_generate=recorded, output_scores=recorded)
    theirs, ours = [], []
    never_torch = lambda rows: torch.zeros(rows, dtype=torch.bool)  # noqa: E731
    with torch.no_grad():
        criteria = transformers.StoppingCriteriaList([recorder(transformers.StoppingCriteria, theirs, never_torch)])
        reference.generate(torch.tensor(ids), stopping_criteria=criteria, **options)
    never_ms = lambda rows: ms.Tensor(np.zeros(rows, bool))  # noqa: E731
    model.generate(ms_tensor(ids), stopping_criteria=StoppingCriteriaList([recorder(StoppingCriteria, ours, never_ms)]),
                   **options)  # fmt: skip
    assert ours == theirs == ([1, 2, 3] if recorded else [None, None, None])
