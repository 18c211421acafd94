"""Every GenerationConfig field, walked: the field list is transformers' own (so a field added by a new transformers
fails `test_every_field_is_classified` until it has a row here), and each field, set to a value transformers
honours, either gives transformers' output (and that output differs from the call without it, so the row cannot
pass vacuously) or is refused here with one line. Fields whose effect does not show in the tokens (caches, compile
settings, assistant settings read only with another tokenizer) are in their own table with the reason, and must
leave both libraries' tokens unchanged.

Both libraries run the same tiny random Llama checkpoint (tests/helpers.py)."""

import copy
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pytest
import torch
import transformers
from helpers import ms_tensor, save_tiny_llama
from transformers.utils import ModelOutput

from mindone.transformers import LlamaForCausalLM

PROMPT = ((84, 64, 52, 28, 32, 6),)  # greedy continues 47 92 76 41 67 12 0 36 52 63 41 67
REPEATING_PROMPT = ((48, 52, 75, 94, 6, 16),)  # greedy continues 29 94 48 24 24 24 24 24 24 24 2 (eos)
TWO_PROMPTS = PROMPT + ((23, 30, 52, 78, 48, 51),)
BOS_ONLY = ((1,),)
NEW_TOKENS = dict(max_new_tokens=12)
TWIN, TOKENIZER = "<the checkpoint itself, as the assistant>", "<the word-level tokenizer>"  # stand-ins in options

BOOKKEEPING = {
    "_from_model_config": "marks a config derived from the model config (transformers' own bookkeeping)",
    "_commit_hash": "the Hub revision a config was loaded from",
    "transformers_version": "the version that wrote the config; it only decides whether model defaults are merged "
    "into a passed config, tested in test_generation.py::test_model_defaults_merge_like_transformers",
}


@dataclass(frozen=True)
class Case:
    """`field`=`value` on top of the options `base`, which the comparison call (without the field) also gets."""

    field: str
    value: Any
    base: dict = dataclasses.field(default_factory=lambda: dict(NEW_TOKENS))
    prompt: Optional[tuple] = PROMPT
    on_assistant: bool = False  # transformers reads this field from the assistant model's generation_config
    assistant_settings: dict = dataclasses.field(default_factory=dict)  # on the assistant, with or without the field
    reason: str = ""

    @property
    def id(self) -> str:
        value = self.value
        if isinstance(value, list) and value and hasattr(value[0], "__dict__"):
            return f"{self.field}=[{type(value[0]).__name__}]"
        return f"{self.field}={type(value).__name__ if hasattr(value, '__dict__') else repr(value)}"


def _beams(**extra) -> dict:
    return {"num_beams": 3, "max_new_tokens": 12, **extra}


def _assisted(assistant: str) -> dict:
    return dict(max_new_tokens=12, assistant_model=assistant)


# greedy or beam-search tokens identical to transformers', and different from the call without the field
TOKENS = [
    Case("max_length", 9, base={}),
    Case("max_new_tokens", 3, base={}),
    Case("min_length", 12, base=dict(max_new_tokens=12, eos_token_id=47)),
    Case("min_new_tokens", 4, base=dict(max_new_tokens=12, eos_token_id=47)),
    Case("early_stopping", True, base=_beams(eos_token_id=[36, 70])),
    Case("max_time", 1e-6),  # the first step alone outlasts a microsecond: both stop after one new token
    Case("stop_strings", ["w76"], base=dict(max_new_tokens=12, tokenizer=TOKENIZER)),
    Case("num_beams", 3),
    Case("repetition_penalty", 1.5),
    Case("encoder_repetition_penalty", 2.0),
    Case("length_penalty", -2.0, base=_beams(eos_token_id=[36, 70])),
    Case("no_repeat_ngram_size", 2),
    Case("bad_words_ids", [[76]]),
    Case("forced_bos_token_id", 5, prompt=BOS_ONLY),
    Case("forced_eos_token_id", 9),
    Case("exponential_decay_length_penalty", (2, 1.5)),
    Case("suppress_tokens", [47, 76]),
    Case("begin_suppress_tokens", [47]),
    Case("sequence_bias", {(92,): 10.0}),
    Case("token_healing", True, base=dict(max_new_tokens=12, tokenizer=TOKENIZER)),  # heals "w6" into "w65"
    Case("guidance_scale", 1.5),
    Case("watermarking_config", transformers.WatermarkingConfig(bias=4.0)),
    Case("watermarking_config", transformers.SynthIDTextWatermarkingConfig(keys=[5, 9, 14, 20], ngram_len=2)),
    Case("num_return_sequences", 2, base=_beams()),
    Case("pad_token_id", 7, base=dict(max_new_tokens=12, eos_token_id=76), prompt=TWO_PROMPTS),
    Case("bos_token_id", 5, prompt=None),  # no input_ids: generation starts from [[bos_token_id]]
    Case("eos_token_id", 76),
    Case("encoder_no_repeat_ngram_size", 1),
    # transformers adds the assistant's ConfidenceCriteria to a call with is_assistant=True (it reads step scores)
    Case("is_assistant", True, base=dict(max_new_tokens=12, return_dict_in_generate=True, output_scores=True)),
]

# sampling: the first step's processed scores match within 1e-5 (tokens cannot match PyTorch's generator)
SCORES = [
    Case("do_sample", True),
    Case("temperature", 0.7, base=dict(do_sample=True)),
    Case("top_k", 10, base=dict(do_sample=True)),
    Case("top_p", 0.8, base=dict(do_sample=True)),
    Case("min_p", 0.2, base=dict(do_sample=True)),
    Case("typical_p", 0.8, base=dict(do_sample=True)),
    Case("epsilon_cutoff", 0.03, base=dict(do_sample=True)),
    Case("eta_cutoff", 0.5, base=dict(do_sample=True)),
    Case("renormalize_logits", True),
    Case("remove_invalid_values", True, base=dict(bad_words_ids=[[47]])),  # -inf becomes the float32 minimum
]

# the output object: which attributes are set, their shapes and values, the cache's form
STRUCTURE = [
    Case("return_dict_in_generate", True),
    Case("output_scores", True, base=dict(max_new_tokens=12, return_dict_in_generate=True)),
    Case("output_logits", True, base=dict(max_new_tokens=12, return_dict_in_generate=True)),
    Case("return_legacy_cache", True, base=dict(max_new_tokens=12, return_dict_in_generate=True)),
]

# assisted decoding, greedy: the tokens are greedy's whatever the field, so compare the number of forward passes
# of the main model too (the rounds of drafting and verification)
ROUNDS = [
    Case("prompt_lookup_num_tokens", 3, prompt=REPEATING_PROMPT),
    Case("max_matching_ngram_size", 1, base=dict(max_new_tokens=12, prompt_lookup_num_tokens=3),
         prompt=REPEATING_PROMPT),  # fmt: skip
    Case("num_assistant_tokens", 3, base=_assisted(TWIN), on_assistant=True),
    Case("num_assistant_tokens_schedule", "heuristic", base=_assisted(TWIN), on_assistant=True,
         assistant_settings=dict(num_assistant_tokens=2)),  # 2, 4, 6 drafted tokens, all accepted, instead of 2, 2, 2
    Case("assistant_confidence_threshold", 0.5, base=_assisted(TWIN), on_assistant=True),  # the twin is never that sure
    Case("assistant_early_exit", 1),
]

# no visible effect: both libraries give the tokens of the call without the field
UNCHANGED = [
    Case("use_cache", False, reason="the cache only saves recomputation"),
    Case("cache_implementation", "static", reason="the cache's layout; its compiled steps give the same tokens"),
    Case("cache_config", {"nbits": 4}, reason="read only for cache_implementation='quantized', refused here"),
    Case("prefill_chunk_size", 2, reason="splits the prompt's forward into chunks (test_prefill_and_compile_options)"),
    Case("disable_compile", True, reason="runs a static cache op by op (test_prefill_and_compile_options)"),
    Case("compile_config", transformers.CompileConfig(fullgraph=False), reason="torch.compile's settings"),
    Case("low_memory", True, reason="it served only contrastive search, which transformers 4.57 moved to the Hub; "
         "beam search refuses it (REFUSED)"),
    Case("decoder_start_token_id", 5, reason="starts an encoder-decoder's decoder; a decoder-only model has none"),
    Case("assistant_lookbehind", 2, base=_assisted(TWIN), on_assistant=True,
         reason="read only for an assistant with another tokenizer (assistant_tokenizer, refused here)"),
    Case("target_lookbehind", 2, base=_assisted(TWIN), on_assistant=True,
         reason="read only for an assistant with another tokenizer (assistant_tokenizer, refused here)"),
]

# refused here with one line; the call without the field runs
REFUSED = [
    Case("output_attentions", True, base=dict(max_new_tokens=3, return_dict_in_generate=True),
         reason="the fused attention kernels never form the attention weights"),
    Case("output_hidden_states", True, base=dict(max_new_tokens=3, return_dict_in_generate=True),
         reason="not yet collected during generation"),
    Case("low_memory", True, base=_beams(), reason="transformers 4.57 itself raises for it in beam search"),
    Case("penalty_alpha", 0.6, reason="contrastive search: moved to the Hub (custom_generate) by transformers 4.57"),
    Case("dola_layers", "low", reason="DoLa: moved to the Hub by transformers 4.57"),
    Case("num_beam_groups", 2, base=_beams(num_beams=4), reason="group beam search: moved to the Hub"),
    Case("diversity_penalty", 0.5, base=_beams(num_beams=4), reason="group beam search: moved to the Hub"),
    Case("constraints", [transformers.PhrasalConstraint([5, 6])], base=_beams(),
         reason="constrained beam search: moved to the Hub"),
    Case("force_words_ids", [[5]], base=_beams(), reason="constrained beam search: moved to the Hub"),
]

TABLES = dict(tokens=TOKENS, scores=SCORES, structure=STRUCTURE, rounds=ROUNDS, unchanged=UNCHANGED, refused=REFUSED)


def _params(cases):
    return [pytest.param(case, id=case.id) for case in cases]


def _transformers_fields() -> set:
    config = transformers.GenerationConfig()
    return set(config.to_dict()) | set(vars(config))


def test_every_field_is_classified():
    covered = {case.field for cases in TABLES.values() for case in cases} | set(BOOKKEEPING)
    assert sorted(_transformers_fields() - covered) == [], "new GenerationConfig fields: add a row for each"
    assert sorted(covered - _transformers_fields()) == [], "rows for fields transformers no longer has"


def test_unchanged_and_refused_rows_say_why():
    assert all(case.reason for case in UNCHANGED + REFUSED)


# ------------------------------------------------------------------ the two libraries, on the same checkpoints
@dataclass
class Side:
    """One library's model, a second copy of it as the assistant, and how to turn inputs into its tensors."""

    model: Any
    twin: Any
    tensor: Any

    def generate(self, prompt, options: dict):
        resolved = {key: self._resolve(value) for key, value in options.items()}
        return self.model.generate(None if prompt is None else self.tensor(np.array(prompt)), **resolved)

    def _resolve(self, value):
        if not isinstance(value, str):
            return value
        return {TWIN: self.twin, TOKENIZER: _tokenizer()}.get(value, value)


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    reference = save_tiny_llama(directory, seed=2)
    theirs = Side(reference, transformers.LlamaForCausalLM.from_pretrained(directory).eval(), torch.tensor)
    ours = Side(*(LlamaForCausalLM.from_pretrained(str(directory)) for _ in range(2)), ms_tensor)
    return theirs, ours


@functools.lru_cache(maxsize=1)
def _tokenizer():
    """A word-level tokenizer over the tiny vocabulary: token i is 'w<i>' except the special tokens (whose text must
    not start other tokens' text: 'w2' would be split out of 'w28'); 'abcdef' (never generated) is the prefix
    transformers' stop strings decode tokens after."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    special = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab = {**special, **{f"w{i}": i for i in range(3, 99)}, "abcdef": 99}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")  # fmt: skip


ASSISTANT_BASE = dict(assistant_confidence_threshold=0.0)  # no early stop of drafting unless the row sets one


def _run(side: Side, case: Case, with_field: bool, **extra):
    """`side`'s generate() for the case, with or without its field; on_assistant fields go to the assistant."""
    options = {**case.base, **extra}
    settings = {**ASSISTANT_BASE, **case.assistant_settings}
    if with_field:
        (settings if case.on_assistant else options)[case.field] = case.value
    saved = copy.deepcopy(side.twin.generation_config)
    side.twin.generation_config.update(**settings)
    try:
        with torch.no_grad():
            return side.generate(case.prompt, options)
    finally:
        side.twin.generation_config = saved


def _numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else x.asnumpy()


def _tokens(output) -> list:
    return _numpy(output.sequences if isinstance(output, ModelOutput) else output).tolist()


# ------------------------------------------------------------------ the checks
@pytest.mark.parametrize("case", _params(TOKENS))
def test_field_changes_the_tokens_like_transformers(sides, case):
    theirs, ours = sides
    expected = _tokens(_run(theirs, case, with_field=True))
    assert _tokens(_run(ours, case, with_field=True)) == expected
    assert expected != _tokens(_run(theirs, case, with_field=False)), "the value changes nothing: choose another"


SCORING = dict(max_new_tokens=1, output_scores=True, return_dict_in_generate=True)


def _first_scores(side, case, with_field) -> np.ndarray:
    return _numpy(_run(side, case, with_field, **SCORING).scores[0])


@pytest.mark.parametrize("case", _params(SCORES))
def test_field_changes_the_scores_like_transformers(sides, case):
    theirs, ours = sides
    expected = _first_scores(theirs, case, with_field=True)
    np.testing.assert_allclose(_first_scores(ours, case, with_field=True), expected, rtol=0, atol=1e-5)
    assert not np.array_equal(expected, _first_scores(theirs, case, with_field=False)), "the value changes nothing"


def _structure(output) -> dict:
    """Which attributes are set, with the sequences, the shapes of score-like tuples and the cache's form."""
    if not isinstance(output, ModelOutput):
        return {"tensor": _numpy(output).tolist()}
    described = {}
    for key, value in output.items():
        if key == "past_key_values":
            legacy = isinstance(value, tuple)
            described[key] = ("legacy tuples", value[0][0].shape[2]) if legacy else ("Cache", value.get_seq_length())
        elif isinstance(value, tuple):
            described[key] = [tuple(step.shape) for step in value]
        else:
            described[key] = _numpy(value).tolist()
    return described


def _score_tuples(output) -> list:
    return [(key, value) for key, value in output.items() if key in ("scores", "logits")]


@pytest.mark.parametrize("case", _params(STRUCTURE))
def test_field_changes_the_output_object_like_transformers(sides, case):
    theirs, ours = sides
    expected, got = _run(theirs, case, with_field=True), _run(ours, case, with_field=True)
    assert _structure(got) == _structure(expected)
    for (_, mine), (_, reference) in zip(_score_tuples(got), _score_tuples(expected)):
        for step, reference_step in zip(mine, reference):
            np.testing.assert_allclose(_numpy(step), _numpy(reference_step), rtol=0, atol=1e-4)
    assert _structure(expected) != _structure(_run(theirs, case, with_field=False)), "the value changes nothing"


def _count_forwards(side, case, with_field, monkeypatch) -> tuple:
    """(tokens, forward passes of the main model object) of the case's call: the verification rounds, not the
    assistant's drafting (except for assistant_early_exit, where the main model drafts with its first layers)."""
    model, calls = side.model, []
    if isinstance(model, torch.nn.Module):
        hook = model.register_forward_hook(lambda *_: calls.append(1))
        try:
            return _tokens(_run(side, case, with_field)), len(calls)
        finally:
            hook.remove()
    forward = type(model).construct

    def counted(cell, *args, **kwargs):
        calls.extend([1] if cell is model else [])
        return forward(cell, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(type(model), "construct", counted)
        return _tokens(_run(side, case, with_field)), len(calls)


@pytest.mark.parametrize("case", _params(ROUNDS))
def test_assisted_decoding_field_changes_the_rounds_like_transformers(sides, case, monkeypatch):
    theirs, ours = sides
    expected = _count_forwards(theirs, case, True, monkeypatch)
    assert _count_forwards(ours, case, True, monkeypatch) == expected
    plain = _count_forwards(theirs, case, False, monkeypatch)
    assert expected[0] == plain[0] and expected[1] != plain[1], "greedy tokens, in another number of forward passes"


@pytest.mark.parametrize("case", _params(UNCHANGED))
def test_field_without_a_visible_effect_leaves_the_tokens(sides, case):
    theirs, ours = sides
    expected = _tokens(_run(theirs, case, with_field=True))
    assert _tokens(_run(ours, case, with_field=True)) == expected == _tokens(_run(theirs, case, with_field=False))


@pytest.mark.parametrize("case", _params(REFUSED))
def test_field_is_refused_with_one_line(sides, case):
    _, ours = sides
    _run(ours, case, with_field=False)  # the options around it are fine
    with pytest.raises((NotImplementedError, ValueError)) as refused:
        _run(ours, case, with_field=True)
    assert case.field in str(refused.value) and "\n" not in str(refused.value)
