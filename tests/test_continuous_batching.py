"""Continuous batching (generation/continuous.py, model.generate_batch): every row gives the tokens of generating
it alone, with transformers + PyTorch as the reference; rows stop on their own (eos, stop strings, their own
max_new_tokens) and their slots are refilled in order; long prompts prefill in chunks; sampled rows follow the
model's distribution and depend only on their seed."""

import numpy as np
import pytest
import torch
import transformers
from helpers import TINY, random_ids, tiny_llama_pair, torch_generate

import mindspore as ms
from mindone.transformers import AutoModelForCausalLM, set_seed
from mindone.transformers.generation import continuous
from mindone.transformers.generation.continuous import BatchRequest, ContinuousBatcher, RequestStatus
from mindone.transformers.generation.decoders import compiled_graph_count

LENGTHS = (5, 17, 3, 9, 12, 1, 7)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_llama_cb")
    return tiny_llama_pair(directory, seed=5)


def prompts(lengths=LENGTHS, seed=0):
    return [random_ids(1, n, seed=seed + i)[0].tolist() for i, n in enumerate(lengths)]


def alone(model, ids, **options):
    output = model.generate(ms.Tensor(np.array([ids])), cache_implementation="static", **options)
    return output.asnumpy()[0, len(ids) :].tolist()


def cut_at_eos(tokens, eos=TINY["eos_token_id"]):
    ends = [i for i, token in enumerate(tokens) if token in np.atleast_1d(eos)]
    return tokens[: ends[0] + 1] if ends else tokens


def test_greedy_rows_equal_pytorch_generating_each_alone(pair):
    reference, model = pair
    inputs = prompts()
    results = model.generate_batch(inputs, max_new_tokens=10, do_sample=False, max_batch_size=3, progress_bar=False)
    assert list(results) == [f"req_{i}" for i in range(len(inputs))]
    for i, ids in enumerate(inputs):
        output = results[f"req_{i}"]
        expected = torch_generate(reference, np.array([ids]), max_new_tokens=10, do_sample=False)[0][len(ids) :]
        assert output.status == RequestStatus.FINISHED and output.error is None
        assert output.prompt_ids == ids and output.generated_tokens == cut_at_eos(expected)
    assert compiled_graph_count(model) >= 1


@pytest.mark.parametrize(
    "options",
    [dict(repetition_penalty=1.3, min_new_tokens=4), dict(no_repeat_ngram_size=2), dict(suppress_tokens=[5, 7])],
    ids=["device_head_per_row_flags", "host_processors", "suppress"],
)
def test_processors_see_only_their_own_row(pair, options):
    """Length-gated processors and the repetition penalty act on each row's own length and tokens (the device
    head takes per-row flags and token rows); processors the head lacks run on the host per row."""
    reference, model = pair
    inputs = prompts()
    results = model.generate_batch(inputs, max_new_tokens=9, max_batch_size=4, progress_bar=False, **options)
    for i, ids in enumerate(inputs):
        expected = torch_generate(reference, np.array([ids]), max_new_tokens=9, do_sample=False, **options)[0][len(ids) :]
        assert results[f"req_{i}"].generated_tokens == cut_at_eos(expected)


def test_rows_stop_on_their_own_and_slots_refill_in_order(pair):
    """eos, stop strings and per-row max_new_tokens in one run; a freed slot takes the next request at once,
    lowest slot first, while the other slots keep decoding."""
    _, model = pair
    tokenizer = FakeTokenizer()
    inputs = prompts()
    free = [alone(model, ids, max_new_tokens=12, eos_token_id=None) for ids in inputs]
    budgets = [3, 12, 1, 6, 2, 8, 4]
    configs = [model.generation_config.__class__(max_new_tokens=n) for n in budgets]
    configs[1].eos_token_id = free[1][5]  # row 1 ends at its own eos token
    configs[3].stop_strings = [tokenizer.decode(free[3][:2])[-3:]]  # row 3 ends at a stop string
    admitted = []

    class Recording(ContinuousBatcher):
        steps = 0

        def _prefill(self, row, slot):
            admitted.append((row.request.request_id, slot, self.steps))
            return super()._prefill(row, slot)

        def _decode(self, rows):
            self.steps += 1
            return super()._decode(rows)

    requests = [BatchRequest(str(i), ids, config) for i, (ids, config) in enumerate(zip(inputs, configs))]
    engine = Recording(model, 3, 64, tokenizer)
    with model._generation_scope():
        outputs = {o.request_id: o.generated_tokens for o in engine.run(requests)}
    eos_at = free[1].index(free[1][5]) + 1
    stop_at = next(n for n in range(1, 13) if tokenizer.decode(free[3][:n]).endswith(configs[3].stop_strings[0]))
    expected = {"0": free[0][:3], "1": free[1][:eos_at], "2": free[2][:1], "3": free[3][:stop_at], "4": free[4][:2],
                "5": free[5][:8], "6": free[6][:4]}  # fmt: skip
    assert outputs == expected
    # the schedule: rows 0-2 fill slots 0-2; row 2 (1 token) finishes at its prefill, so row 3 takes slot 2 at once
    lengths = {key: len(tokens) for key, tokens in expected.items()}
    assert admitted == _schedule(lengths, slots=3)


def _schedule(lengths: dict, slots: int) -> list:
    """(request, slot, decode steps before its prefill) that a first-free-slot-first refill gives: a row's prefill
    yields its first token, each decode step one more."""
    pending, rows, steps, admitted = list(lengths), [None] * slots, 0, []
    while pending or any(rows):
        for slot in range(slots):
            while rows[slot] is None and pending:
                key = pending.pop(0)
                admitted.append((key, slot, steps))
                rows[slot] = [key, lengths[key] - 1] if lengths[key] > 1 else None
        if not any(rows):
            break
        steps += 1
        for slot, row in enumerate(rows):
            if row is not None:
                row[1] -= 1
                if row[1] == 0:
                    rows[slot] = None
    return admitted


class FakeTokenizer:
    """Decodes ids as letters, enough for stop strings."""

    def decode(self, ids, **kwargs):
        return "".join(chr(97 + int(i) % 26) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [self.decode([i]) for i in ids] if isinstance(ids, list) else self.decode([ids])

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - 97 for c in text]}


def test_long_prompts_prefill_in_chunks(pair, monkeypatch):
    _, model = pair
    inputs = prompts((40, 23, 6))
    monkeypatch.setattr(continuous, "PREFILL_CHUNK", 8)
    results = model.generate_batch(inputs, max_new_tokens=6, max_batch_size=2, progress_bar=False)
    for i, ids in enumerate(inputs):
        assert results[f"req_{i}"].generated_tokens == cut_at_eos(alone(model, ids, max_new_tokens=6))


def test_sampled_rows_depend_on_their_seed_only(pair):
    _, model = pair
    inputs = prompts()
    options = dict(do_sample=True, temperature=1.5, top_k=20, max_new_tokens=8, progress_bar=False)
    runs = []
    for slots in (2, 5):
        set_seed(11)
        runs.append({k: v.generated_tokens for k, v in model.generate_batch(inputs, max_batch_size=slots, **options).items()})
    assert runs[0] == runs[1]
    set_seed(12)
    assert {k: v.generated_tokens for k, v in model.generate_batch(inputs, max_batch_size=2, **options).items()} != runs[0]


def test_sampled_first_tokens_follow_pytorchs_distribution(pair):
    """The first sampled token of 600 requests with the same prompt against PyTorch's softmax of the processed
    scores: the total variation distance must be within what 600 draws from PyTorch's distribution give."""
    reference, model = pair
    ids, draws = prompts((6,))[0], 600
    set_seed(0)
    results = model.generate_batch([ids] * draws, do_sample=True, temperature=0.5, top_k=0, max_new_tokens=1,
                                   max_batch_size=4, progress_bar=False)  # fmt: skip
    vocab = TINY["vocab_size"]
    observed = np.bincount([r.generated_tokens[0] for r in results.values()], minlength=vocab) / draws
    with torch.no_grad():
        expected = torch.softmax(reference(torch.tensor([ids])).logits[0, -1].double() / 0.5, -1).numpy()
    rng = np.random.default_rng(0)
    null = [0.5 * np.abs(rng.multinomial(draws, expected) / draws - expected).sum() for _ in range(400)]
    assert 0.5 * np.abs(observed - expected).sum() <= max(null)


def test_requests_that_cannot_run(pair):
    _, model = pair
    too_long = prompts((120,))[0]
    results = model.generate_batch([too_long, [4, 5]], max_new_tokens=20, progress_bar=False)
    assert results["req_0"].status == RequestStatus.FAILED and "positions" in results["req_0"].error
    assert results["req_1"].status == RequestStatus.FINISHED
    with pytest.raises(ValueError, match="greedy decoding and sampling"):
        model.generate_batch([[4, 5]], num_beams=2, progress_bar=False)
    with pytest.raises(ValueError, match="GenerationConfig fields"):
        model.generate_batch([[4, 5]], attention_mask=[[1, 1]], progress_bar=False)


@pytest.mark.slow
def test_smollm2_chat_rows_equal_generate_alone(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    questions = ["What is the capital of France?", "Name three colours.", "Write one sentence about the sea.",
                 "What is 2 + 2?", "Say hello in Spanish.", "Why is the sky blue? " * 12]  # fmt: skip
    inputs = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True) for q in questions]
    results = model.generate_batch(inputs, max_new_tokens=24, max_batch_size=4, progress_bar=False)
    eos = model.generation_config.eos_token_id
    for i, ids in enumerate(inputs):
        assert results[f"req_{i}"].generated_tokens == cut_at_eos(alone(model, ids, max_new_tokens=24), eos)
