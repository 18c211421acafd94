"""Assisted decoding round by round against transformers + PyTorch (with scikit-learn installed, so transformers
adapts the assistant's confidence threshold): the candidates drafted in each round, the learned threshold and draft
length, tokens and processed scores."""

import copy

import numpy as np
import pytest
import sklearn.metrics
import torch
import transformers
import transformers.generation.candidate_generator as theirs
from helpers import TINY, ms_tensor, random_ids, save_tiny_llama

import mindone.transformers.generation.candidate_generator as ours
from mindone.transformers import LlamaForCausalLM
from mindone.transformers.generation import LogitsProcessorList, NoBadWordsLogitsProcessor


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 3-layer main model and a draft close to it (its weights plus noise), so that drafts are often but not
    always accepted and the threshold adapts; each as (PyTorch, MindSpore)."""
    main_dir, draft_dir = tmp_path_factory.mktemp("main"), tmp_path_factory.mktemp("draft")
    main = save_tiny_llama(main_dir, seed=2, num_hidden_layers=3)
    draft = copy.deepcopy(main)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    draft.save_pretrained(draft_dir)
    return (main, LlamaForCausalLM.from_pretrained(str(main_dir))), (draft, LlamaForCausalLM.from_pretrained(str(draft_dir)))


def _drafted_per_round(monkeypatch, module, class_name) -> list:
    """Records how many candidates each get_candidates call of `module.class_name` proposed."""
    counts, cls = [], getattr(module, class_name)
    original = cls.get_candidates

    def recording(self, input_ids):
        candidates, scores = original(self, input_ids)
        counts.append(candidates.shape[1] - input_ids.shape[1])
        return candidates, scores

    monkeypatch.setattr(cls, "get_candidates", recording)
    return counts


def _both(monkeypatch, models, class_name, ids, assistant=True, **kwargs):
    """Runs the same assisted generate() in both libraries; returns ((output, drafted per round) theirs, ours)."""
    (main_t, main_o), (draft_t, draft_o) = models
    drafted_t = _drafted_per_round(monkeypatch, theirs, class_name)
    drafted_o = _drafted_per_round(monkeypatch, ours, class_name)
    kwargs.update(return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        expected = main_t.generate(torch.tensor(ids), assistant_model=draft_t if assistant else None, **kwargs)
    got = main_o.generate(ms_tensor(ids), assistant_model=draft_o if assistant else None, **kwargs)
    return (expected, drafted_t), (got, drafted_o)


def _assert_same_generation(expected, got):
    assert got.sequences.asnumpy().tolist() == expected.sequences.numpy().tolist()
    assert len(got.scores) == len(expected.scores)
    assert max(np.abs(a.numpy() - b.asnumpy()).max() for a, b in zip(expected.scores, got.scores)) < 1e-5


@pytest.fixture(autouse=True)
def saved_settings(models):
    """Each test starts from the models' saved generation settings: a generate() call leaves the learned threshold
    and draft length on the assistant's generation_config, and its eos_token_id on the assistant's (for early exit
    the main model's) generation_config, in both libraries."""
    cells = [model for pair in models for model in pair]
    saved = [copy.deepcopy(model.generation_config) for model in cells]
    yield
    for model, config in zip(cells, saved):
        model.generation_config = config


@pytest.mark.parametrize("schedule", ["constant", "heuristic"])
def test_draft_model_rounds_and_learned_settings_match_transformers(models, monkeypatch, schedule):
    (_, _), (draft_t, draft_o) = models
    for draft in (draft_t, draft_o):
        draft.generation_config.num_assistant_tokens_schedule = schedule
    (expected, drafted_t), (got, drafted_o) = _both(
        monkeypatch, models, "AssistedCandidateGenerator", random_ids(1, 6, seed=9), max_new_tokens=40, eos_token_id=None
    )
    _assert_same_generation(expected, got)
    assert drafted_o == drafted_t
    assert 1 in drafted_t and max(drafted_t) > 3  # confidence stopped some drafts early and let others run
    learned_t, learned_o = draft_t.generation_config, draft_o.generation_config
    assert learned_t.assistant_confidence_threshold != 0.4  # transformers adapted it ...
    assert learned_o.assistant_confidence_threshold == pytest.approx(learned_t.assistant_confidence_threshold, abs=1e-6)
    assert learned_o.num_assistant_tokens == learned_t.num_assistant_tokens


def test_a_fixed_confidence_threshold_stops_drafting_like_transformers(models, monkeypatch):
    (_, _), (draft_t, draft_o) = models
    for draft in (draft_t, draft_o):
        draft.generation_config.assistant_confidence_threshold = 0.7
    (expected, drafted_t), (got, drafted_o) = _both(
        monkeypatch, models, "AssistedCandidateGenerator", random_ids(1, 5, seed=4), max_new_tokens=30, eos_token_id=None
    )
    _assert_same_generation(expected, got)
    assert drafted_o == drafted_t


@pytest.mark.parametrize("exit_layer", [1, 2])
def test_early_exit_drafts_with_the_first_layers_like_transformers(models, monkeypatch, exit_layer):
    (expected, drafted_t), (got, drafted_o) = _both(
        monkeypatch, models, "EarlyExitCandidateGenerator", random_ids(1, 6, seed=3), assistant=False,
        max_new_tokens=30, eos_token_id=None, assistant_early_exit=exit_layer,
    )  # fmt: skip
    _assert_same_generation(expected, got)
    assert drafted_o == drafted_t and len(drafted_t) > 1
    assert models[0][1].model.config.num_hidden_layers == 3  # restored after drafting


def test_early_exit_draft_equals_the_truncated_model(models):
    """The draft's scores are those of the model cut after `assistant_early_exit` layers (norm and head kept)."""
    (_, model), _ = models
    ids = ms_tensor(random_ids(1, 6, seed=5))
    generator = ours.EarlyExitCandidateGenerator(ids, model, _config(model, assistant_early_exit=1, max_length=9),
                                                 {"attention_mask": ms_tensor(np.ones((1, 6)))})  # fmt: skip
    candidates, scores = generator.get_candidates(ids)
    model.model.config.num_hidden_layers = 1
    try:
        cut = model(candidates).logits.asnumpy()[0, 5:-1]
    finally:
        model.model.config.num_hidden_layers = 3
    assert np.abs(scores.asnumpy()[0] - cut).max() < 1e-5


def _config(model, **settings):
    config = copy.deepcopy(model.generation_config)
    config.update(**settings)
    return config


def test_prompt_lookup_drops_candidates_the_processors_forbid_like_transformers():
    ids = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]]
    kwargs = dict(num_output_tokens=5, max_length=40, vocab_size=TINY["vocab_size"])
    expected, _ = theirs.PromptLookupCandidateGenerator(
        torch.tensor([2]), logits_processor=_bad_words_theirs(), **kwargs
    ).get_candidates(torch.tensor(ids))
    bad_words = LogitsProcessorList([NoBadWordsLogitsProcessor([[9]], eos_token_id=2)])
    got, _ = ours.PromptLookupCandidateGenerator([2], logits_processor=bad_words, **kwargs).get_candidates(ms_tensor(ids))
    assert got.asnumpy().tolist() == expected.numpy().tolist() == [ids[0] + [7, 8]]


def _bad_words_theirs():
    from transformers.generation import LogitsProcessorList, NoBadWordsLogitsProcessor

    return LogitsProcessorList([NoBadWordsLogitsProcessor([[9]], eos_token_id=2)])


def test_prompt_lookup_keeps_max_new_tokens_where_transformers_overshoots(models):
    """A model that always continues the prompt's cycle accepts every candidate: transformers 4.57 then returns
    more than max_new_tokens; here the output stops at max_new_tokens, as greedy decoding does."""
    (main_t, main_o), _ = models
    cycle = [5, 6, 7, 8, 9]
    ids = np.array([cycle * 3])

    def next_in_cycle(batch_id, sequence):
        return [cycle[(cycle.index(int(sequence[-1])) + 1) % len(cycle)]]

    kwargs = dict(max_new_tokens=3, prompt_lookup_num_tokens=10, prefix_allowed_tokens_fn=next_in_cycle, eos_token_id=97)
    with torch.no_grad():
        overshoot = main_t.generate(torch.tensor(ids), **kwargs)
    got = main_o.generate(ms_tensor(ids), **kwargs)
    assert overshoot.shape[1] > ids.shape[1] + 3
    assert got.asnumpy().tolist() == [cycle * 3 + cycle[:3]]


def test_min_length_with_an_assistant_is_refused_like_transformers(models):
    (main_t, main_o), (draft_t, draft_o) = models
    ids = random_ids(1, 4, seed=1)
    message = "Passing `MinLengthLogitsProcessor` when using `assisted_generation is disabled"
    with pytest.raises(ValueError, match=message), torch.no_grad():
        main_t.generate(torch.tensor(ids), assistant_model=draft_t, max_new_tokens=5, min_length=7, eos_token_id=2)
    with pytest.raises(ValueError, match=message):
        main_o.generate(ms_tensor(ids), assistant_model=draft_o, max_new_tokens=5, min_length=7, eos_token_id=2)


@pytest.mark.parametrize("seed", range(4))
def test_roc_curve_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    scores = np.round(rng.random(40), 1)  # ties, and collinear points to drop
    for mine, reference in zip(ours.roc_curve(labels, scores), sklearn.metrics.roc_curve(labels, scores)):
        np.testing.assert_array_equal(mine, reference)


def test_early_exit_is_refused_for_a_model_that_always_runs_every_layer(tmp_path):
    """transformers' GPT-2 fails inside its forward (head_mask has fewer entries than layers); here one line."""
    from mindone.transformers import GPT2LMHeadModel

    config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    model = GPT2LMHeadModel.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="GPT2LMHeadModel always runs all of them"):
        model.generate(ms_tensor(random_ids(1, 4)), max_new_tokens=4, assistant_early_exit=1, pad_token_id=0)


@pytest.mark.parametrize("name, value", [("num_assistant_tokens", 3), ("assistant_confidence_threshold", 0.9),
                                         ("num_assistant_tokens_schedule", "heuristic")])  # fmt: skip
def test_drafting_settings_given_to_generate_are_refused_instead_of_ignored(models, name, value):
    """transformers reads them from the drafting model's generation_config and ignores them as generate() arguments."""
    (_, main), (_, draft) = models
    ids = ms_tensor(random_ids(1, 4))
    with pytest.raises(ValueError, match=f"{name} is read from the drafting model's generation_config"):
        main.generate(ids, max_new_tokens=3, assistant_model=draft, **{name: value})
    with pytest.raises(ValueError, match=f"{name} applies to drafting with assistant_model or assistant_early_exit"):
        main.generate(ids, max_new_tokens=3, **{name: value})
    setattr(draft.generation_config, name, value)  # where it takes effect (restored by saved_settings) ...
    with pytest.raises(ValueError, match=f"{name} is read from the drafting model's generation_config"):
        main.generate(ids, max_new_tokens=3, assistant_model=draft, **{name: value})  # ... not here, even when equal
    main.generate(ids, max_new_tokens=3, assistant_model=draft)
    config = copy.deepcopy(main.generation_config)
    config.update(**{name: value})
    main.generate(ids, max_new_tokens=3, assistant_model=draft, generation_config=config)  # the drafter's value
    setattr(config, name, {"num_assistant_tokens": 7, "assistant_confidence_threshold": 0.2}.get(name, "heuristic_transient"))
    with pytest.raises(ValueError, match=f"{name} is read from the drafting model's generation_config"):
        main.generate(ids, max_new_tokens=3, assistant_model=draft, generation_config=config)


def test_legacy_cache_output_with_an_assistant(models):
    """The assistant's own cache stays a cache object between rounds (transformers 4.57 hands it legacy tuples
    and fails in the second round); the caller gets the legacy tuples it asked for."""
    (_, main), (_, draft) = models
    output = main.generate(ms_tensor(random_ids(1, 5, seed=2)), max_new_tokens=8, assistant_model=draft,
                           return_dict_in_generate=True, return_legacy_cache=True)  # fmt: skip
    assert isinstance(output.past_key_values, tuple) and len(output.past_key_values) == 3
    assert output.sequences.shape == (1, 13)
