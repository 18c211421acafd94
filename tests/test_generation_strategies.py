"""Decoding strategies on tiny random Llamas, token for token against transformers + PyTorch."""

import copy
import threading

import numpy as np
import pytest
import torch
import transformers
from helpers import TINY, left_padded, ms_tensor, random_ids, tiny_llama_pair

from mindone.transformers import TextIteratorStreamer, TextStreamer, set_seed


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("strategies")
    return tiny_llama_pair(directory, seed=2)


@pytest.fixture(scope="module")
def draft(tmp_path_factory):
    """A second, smaller random model with the same vocabulary, as the assistant."""
    directory = tmp_path_factory.mktemp("draft")
    return tiny_llama_pair(directory, seed=7, num_hidden_layers=1)


def _run_both(pair, ids, mask=None, **kwargs):
    reference, model = pair
    with torch.no_grad():
        extra = {"attention_mask": torch.tensor(mask)} if mask is not None else {}
        expected = reference.generate(torch.tensor(ids), **extra, **kwargs)
    extra = {"attention_mask": ms_tensor(mask)} if mask is not None else {}
    return model.generate(ms_tensor(ids), **extra, **kwargs), expected


BEAM_CASES = {
    "beam3": dict(num_beams=3),
    "beam4_return2": dict(num_beams=4, num_return_sequences=2),
    "beam3_length_penalty": dict(num_beams=3, length_penalty=-0.5, num_return_sequences=3),
    "beam3_early_stopping": dict(num_beams=3, early_stopping=True),
    "beam3_never": dict(num_beams=3, early_stopping="never", length_penalty=2.0),
    "beam3_eos_list": dict(num_beams=3, eos_token_id=[2, 17, 31]),
    "beam2_no_repeat_ngram": dict(num_beams=2, no_repeat_ngram_size=2, repetition_penalty=1.2),
}


@pytest.mark.parametrize("name", sorted(BEAM_CASES))
def test_beam_search_identical(pair, name):
    ids, mask = left_padded([7, 4], 7, seed=3)
    ours, expected = _run_both(pair, ids, mask, max_new_tokens=12, **BEAM_CASES[name])
    assert ours.asnumpy().tolist() == expected.numpy().tolist()


def test_beam_search_outputs_and_transition_scores(pair):
    reference, model = pair
    ids = random_ids(2, 5, seed=4)
    kwargs = dict(num_beams=3, num_return_sequences=2, max_new_tokens=8, return_dict_in_generate=True,
                  output_scores=True, output_logits=True, eos_token_id=[5, 9])  # fmt: skip
    ours, theirs = _run_both(pair, ids, **kwargs)
    assert ours.sequences.asnumpy().tolist() == theirs.sequences.numpy().tolist()
    assert np.abs(ours.sequences_scores.asnumpy() - theirs.sequences_scores.numpy()).max() <= 1e-5
    assert ours.beam_indices.asnumpy().tolist() == theirs.beam_indices.numpy().tolist()
    assert len(ours.scores) == len(theirs.scores) and len(ours.logits) == len(theirs.logits)
    for mine, ref in zip(ours.scores, theirs.scores):
        np.testing.assert_allclose(mine.asnumpy(), ref.numpy(), atol=1e-4)
    expected = reference.compute_transition_scores(theirs.sequences, theirs.scores, theirs.beam_indices).numpy()
    got = model.compute_transition_scores(ours.sequences, ours.scores, ours.beam_indices).asnumpy()
    assert np.abs(got - expected).max() <= 1e-5


def test_greedy_outputs_and_transition_scores(pair):
    reference, model = pair
    ids, mask = left_padded([6, 3], 6, seed=6)
    kwargs = dict(max_new_tokens=6, return_dict_in_generate=True, output_scores=True, output_logits=True,
                  repetition_penalty=1.5, eos_token_id=[4])  # fmt: skip
    ours, theirs = _run_both(pair, ids, mask, **kwargs)
    assert ours.sequences.asnumpy().tolist() == theirs.sequences.numpy().tolist()
    for mine, ref in zip(ours.scores + ours.logits, theirs.scores + theirs.logits):
        assert np.abs(mine.asnumpy() - ref.numpy()).max() <= 1e-4
    for normalize in (False, True):
        expected = reference.compute_transition_scores(theirs.sequences, theirs.scores, normalize_logits=normalize)
        got = model.compute_transition_scores(ours.sequences, ours.scores, normalize_logits=normalize)
        assert np.abs(got.asnumpy() - expected.numpy()).max() <= 1e-5
    assert ours.past_key_values.get_seq_length() == ours.sequences.shape[1] - 1


@pytest.mark.parametrize("lookup", [2, 6])
def test_prompt_lookup_equals_greedy(pair, lookup):
    ids = np.array([[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]])
    greedy, expected = _run_both(pair, ids, max_new_tokens=15, eos_token_id=97, pad_token_id=0)
    ours, _ = _run_both(pair, ids, max_new_tokens=15, eos_token_id=97, pad_token_id=0, prompt_lookup_num_tokens=lookup)
    assert ours.asnumpy().tolist() == greedy.asnumpy().tolist() == expected.numpy().tolist()


@pytest.mark.parametrize(
    "ids, settings, expected",
    [
        ([5, 6, 7, 8, 9, 5, 6], dict(num_output_tokens=3, max_length=40), [7, 8, 9]),  # latest bigram (5, 6)
        ([5, 6, 7, 8, 9, 4, 6], dict(num_output_tokens=3, max_length=40), [7, 8, 9]),  # falls back to unigram (6,)
        ([5, 6, 7, 2, 9, 5, 6], dict(num_output_tokens=5, max_length=40, eos_token_id=[2]), [7]),  # stops before eos
        ([1, 2, 3, 4], dict(num_output_tokens=5, max_length=40), []),  # nothing repeats
    ],
)
def test_prompt_lookup_candidates(ids, settings, expected):
    from transformers.generation import PromptLookupCandidateGenerator as Theirs

    from mindone.transformers.generation import PromptLookupCandidateGenerator

    theirs = Theirs(**{**settings, "eos_token_id": torch.tensor(settings.get("eos_token_id", [-1]))})
    reference, _ = theirs.get_candidates(torch.tensor([ids]))
    candidates, scores = PromptLookupCandidateGenerator(**settings).get_candidates(ms_tensor(np.array([ids])))
    assert candidates.asnumpy().tolist() == reference.numpy().tolist() == [ids + expected] and scores is None


def test_prompt_lookup_leaves_room_for_the_models_own_token():
    """transformers 4.57 proposes up to max_length candidates here (and can then return more than max_new_tokens);
    this library stops one short of max_length, as its draft-model candidates do."""
    from mindone.transformers.generation import PromptLookupCandidateGenerator

    generator = PromptLookupCandidateGenerator(num_output_tokens=5, max_length=10)
    candidates, _ = generator.get_candidates(ms_tensor(np.array([[5, 6, 7, 8, 9, 5, 6]])))
    assert candidates.asnumpy().tolist() == [[5, 6, 7, 8, 9, 5, 6, 7, 8]]


def test_assisted_decoding_equals_greedy(pair, draft):
    ids = random_ids(1, 6, seed=9)
    reference, model = pair
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), max_new_tokens=14, assistant_model=draft[0]).numpy().tolist()
    greedy = model.generate(ms_tensor(ids), max_new_tokens=14)
    ours = model.generate(ms_tensor(ids), max_new_tokens=14, assistant_model=draft[1])
    assert ours.asnumpy().tolist() == greedy.asnumpy().tolist() == expected


def test_assisted_decoding_with_itself_accepts_everything(pair, monkeypatch):
    from mindone.transformers.generation.decoders import DynamicDecoder

    _, model = pair
    ids = ms_tensor(random_ids(1, 5, seed=10))
    greedy = model.generate(ids, max_new_tokens=12, eos_token_id=None)
    calls, original = [], DynamicDecoder.logits
    monkeypatch.setattr(DynamicDecoder, "logits", lambda self, *a, **k: calls.append(k.get("logits_to_keep", 1)) or original(self, *a, **k))
    monkeypatch.setattr(model.generation_config, "assistant_confidence_threshold", 0.0)  # a random model is unsure
    assisted = model.generate(ids, max_new_tokens=12, eos_token_id=None, assistant_model=model)
    assert assisted.asnumpy().tolist() == greedy.asnumpy().tolist()
    assert max(calls) > 2  # the verification pass scored several candidates at once


def test_assisted_sampling_is_reproducible(pair, draft):
    """Reproducible from the same seed and the same assistant settings (a call adapts the assistant's confidence
    threshold for the next one, as in transformers)."""
    _, model = pair
    ids = ms_tensor(random_ids(1, 5, seed=11))
    settings, runs = copy.deepcopy(draft[1].generation_config), []
    for _ in range(2):
        draft[1].generation_config = copy.deepcopy(settings)
        set_seed(5)
        runs.append(model.generate(ids, max_new_tokens=10, do_sample=True, assistant_model=draft[1]).asnumpy().tolist())
    assert runs[0] == runs[1] and len(runs[0][0]) == 15


def test_num_return_sequences_with_sampling(pair):
    _, model = pair
    set_seed(0)
    out = model.generate(ms_tensor(random_ids(2, 4)), do_sample=True, num_return_sequences=3, max_new_tokens=5)
    assert out.shape == (6, 9)


def test_beam_sampling_reproducible_and_shaped(pair):
    _, model = pair
    ids = ms_tensor(random_ids(2, 4, seed=12))
    runs = []
    for _ in range(2):
        set_seed(3)
        runs.append(model.generate(ids, do_sample=True, num_beams=3, num_return_sequences=2, max_new_tokens=6).asnumpy().tolist())
    assert runs[0] == runs[1] and np.array(runs[0]).shape == (4, 10)


def test_text_streamer_prints_the_generation(pair, capsys):
    _, model = pair
    tokenizer = _tokenizer()
    ids = random_ids(1, 4, seed=13)
    out = model.generate(ms_tensor(ids), max_new_tokens=6, streamer=TextStreamer(tokenizer, skip_prompt=True))
    printed = capsys.readouterr().out
    assert printed.strip() == tokenizer.decode(out.asnumpy()[0, 4:]).strip() and printed.strip()


def test_text_iterator_streamer_in_a_thread(pair):
    _, model = pair
    tokenizer = _tokenizer()
    ids = ms_tensor(random_ids(1, 4, seed=14))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=model.generate(ids, max_new_tokens=6, streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == tokenizer.decode(result["out"].asnumpy()[0, 4:], skip_special_tokens=True)


def _tokenizer():
    """A word-level tokenizer over the tiny vocabulary (token i prints as 'w<i> ')."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(TINY["vocab_size"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w2", pad_token="w0")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(num_return_sequences=3), "num_return_sequences"),
        (dict(num_beams=2, num_return_sequences=3), "has to be smaller or equal to `num_beams`"),
        (dict(do_sample=True, temperature=-1.0), "`temperature` (=-1.0) has to be a strictly positive float"),
        (dict(do_sample=True, top_p=-0.5), "`top_p` has to be a float > 0 and < 1"),
        (dict(num_beams=2, streamer=object()), "`streamer` cannot be used with beam search"),
        (dict(typo_argument=3), "not used by the model: ['typo_argument']"),
        (dict(stop_strings=["x"]), "you must pass the model's tokenizer"),
    ],
)
def test_bad_options_raise_like_transformers(pair, kwargs, error):
    reference, model = pair
    ids = random_ids(1, 4)
    with pytest.raises(ValueError) as theirs, torch.no_grad():
        reference.generate(torch.tensor(ids), max_new_tokens=3, **kwargs)
    with pytest.raises(ValueError) as mine:
        model.generate(ms_tensor(ids), max_new_tokens=3, **kwargs)
    assert error in str(theirs.value) and error in str(mine.value)


PROMPT_OPTIONS = {  # transformers applies the encoder_* processors of a decoder-only model to its prompt
    "encoder_repetition_penalty_2": dict(encoder_repetition_penalty=2.0),
    "encoder_repetition_penalty_0.5": dict(encoder_repetition_penalty=0.5),
    "encoder_no_repeat_ngram_1": dict(encoder_no_repeat_ngram_size=1),
    "encoder_no_repeat_ngram_2_with_penalty": dict(encoder_no_repeat_ngram_size=2, encoder_repetition_penalty=1.5),
}


@pytest.mark.parametrize("cache", [None, "static"])
@pytest.mark.parametrize("name", sorted(PROMPT_OPTIONS))
def test_prompt_options_change_the_tokens_like_transformers(pair, name, cache):
    ids, mask = left_padded([7, 4], 7, seed=12)
    plain, _ = _run_both(pair, ids, mask, max_new_tokens=10, cache_implementation=cache)
    ours, expected = _run_both(pair, ids, mask, max_new_tokens=10, cache_implementation=cache, **PROMPT_OPTIONS[name])
    assert ours.asnumpy().tolist() == expected.numpy().tolist()
    assert ours.asnumpy().tolist() != plain.asnumpy().tolist()  # the option did something


def test_prompt_options_in_generate_batch_equal_each_prompt_alone(pair):
    reference, model = pair
    prompts = [random_ids(1, length, seed=20 + length)[0].tolist() for length in (5, 8, 3)]
    options = dict(encoder_no_repeat_ngram_size=2, encoder_repetition_penalty=1.5, max_new_tokens=8)
    outputs = model.generate_batch(prompts, max_batch_size=2, **options)
    for number, prompt in enumerate(prompts):
        with torch.no_grad():
            alone = reference.generate(torch.tensor([prompt]), **options)[0, len(prompt) :].tolist()
        assert outputs[f"req_{number}"].generated_tokens == alone


GUIDANCE = {
    "last_prompt_token": dict(guidance_scale=1.5),
    "negative_prompt": dict(guidance_scale=3.0, negative_prompt_ids=[[5, 9, 14]]),
    "negative_prompt_no_cache": dict(guidance_scale=2.0, negative_prompt_ids=[[7, 8]], use_cache=False),
}


# use_cache=False runs without any cache, so not over the static one
GUIDANCE_RUNS = [(name, cache) for name in sorted(GUIDANCE) for cache in (None, "static")
                 if cache is None or GUIDANCE[name].get("use_cache", True)]  # fmt: skip


@pytest.mark.parametrize("name, cache", GUIDANCE_RUNS)
def test_classifier_free_guidance_gives_transformers_tokens_and_scores(pair, name, cache):
    reference, model = pair
    ids = random_ids(1, 6, seed=31)
    options = dict(GUIDANCE[name])
    negative = options.pop("negative_prompt_ids", None)
    common = dict(max_new_tokens=8, return_dict_in_generate=True, output_scores=True, **options)
    with torch.no_grad():
        theirs = reference.generate(torch.tensor(ids), negative_prompt_ids=None if negative is None else torch.tensor(negative),
                                    **common)  # fmt: skip
    mine = model.generate(ms_tensor(ids), negative_prompt_ids=None if negative is None else ms_tensor(np.array(negative)),
                          cache_implementation=cache, **common)  # fmt: skip
    assert mine.sequences.asnumpy().tolist() == theirs.sequences.numpy().tolist()
    for ours_step, their_step in zip(mine.scores, theirs.scores):
        finite = np.isfinite(their_step.numpy())
        assert np.abs(ours_step.asnumpy()[finite] - their_step.numpy()[finite]).max() <= 1e-4
    plain = model.generate(ms_tensor(ids), max_new_tokens=8)
    assert plain.asnumpy().tolist() != mine.sequences.asnumpy().tolist()  # guidance changed the tokens


def test_generate_batch_refuses_guidance(pair):
    _, model = pair
    with pytest.raises(ValueError, match="generate_batch does not run classifier-free guidance"):
        model.generate_batch([[5, 6, 7]], max_new_tokens=2, guidance_scale=2.0)


@pytest.mark.parametrize("cache", [None, "static"])
@pytest.mark.parametrize("scheme", ["lefthash", "selfhash"])
def test_watermarked_generation_and_detection_match_transformers(pair, scheme, cache):
    from transformers.generation import WatermarkDetector as TheirDetector

    from mindone.transformers.generation import WatermarkDetector

    reference, model = pair
    ids = random_ids(2, 5, seed=41)
    config = transformers.WatermarkingConfig(bias=4.0, seeding_scheme=scheme)
    ours, expected = _run_both(pair, ids, max_new_tokens=24, watermarking_config=config, cache_implementation=cache)
    assert ours.asnumpy().tolist() == expected.numpy().tolist()
    plain, _ = _run_both(pair, ids, max_new_tokens=24)
    assert plain.asnumpy().tolist() != ours.asnumpy().tolist()
    mine = WatermarkDetector(model.config, None, config)(ours.asnumpy()[:, 5:], return_dict=True)
    theirs = TheirDetector(reference.config, "cpu", config)(expected[:, 5:], return_dict=True)
    for field in ("num_tokens_scored", "num_green_tokens", "z_score", "p_value", "prediction"):
        np.testing.assert_allclose(getattr(mine, field), getattr(theirs, field), rtol=1e-12)
    assert mine.prediction.all()  # bias 4 makes the text green enough to be told
    plain_text = plain.asnumpy()[:, 5:]
    distinct = WatermarkDetector(model.config, None, config, ignore_repeated_ngrams=True)(plain_text, return_dict=True)
    n = 2 if scheme == "lefthash" else 1  # the prefix and the token, or the token alone (selfhash)
    ngrams = [len({tuple(row[i : i + n]) for i in range(len(row) - n + 1)}) for row in plain_text.tolist()]
    assert distinct.num_tokens_scored.tolist() == ngrams  # each distinct n-gram once (the tiny model repeats itself)
