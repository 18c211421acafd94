"""`prefill_chunk_size` and `disable_compile` do what they say (the prompt runs in chunks; nothing is compiled)
and change no result: tokens as transformers + PyTorch, scores within 1e-5."""

import mindspore as ms
import numpy as np
import pytest
import torch
from helpers import left_padded, ms_tensor, random_ids, save_tiny_llama, tiny_llama_pair

from mindone.transformers import LlamaForCausalLM
from mindone.transformers.generation.decoders import DynamicDecoder, compiled_graph_count


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prefill")
    return tiny_llama_pair(directory, seed=4)


def forward_spans(monkeypatch) -> list:
    """Records the (start, end) token span of every forward the PyNative decoder runs."""
    spans, original = [], DynamicDecoder._run
    monkeypatch.setattr(DynamicDecoder, "_run", lambda self, ids, mask, start, end, keep: spans.append((start, end))
                        or original(self, ids, mask, start, end, keep))  # fmt: skip
    return spans


@pytest.mark.parametrize("cache", [None, "static"])
def test_chunked_prefill_gives_transformers_tokens_and_scores(pair, monkeypatch, cache):
    reference, model = pair
    ids = random_ids(1, 11, seed=6)
    options = dict(max_new_tokens=4, prefill_chunk_size=4, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), **options)
    spans = forward_spans(monkeypatch)
    got = model.generate(ms_tensor(ids), cache_implementation=cache, **options)
    assert got.sequences.asnumpy().tolist() == expected.sequences.numpy().tolist()
    assert max(np.abs(a.numpy() - b.asnumpy()).max() for a, b in zip(expected.scores, got.scores)) < 1e-5
    assert spans[:4] == [(0, 4), (4, 8), (8, 10), (10, 11)]  # as transformers: all but the last token in chunks


def test_chunked_prefill_keeps_left_padded_rows_as_unchunked(pair):
    """Positions follow the attention mask in every chunk, so a padded row is unchanged (transformers 4.57 uses the
    cache positions in chunks, which shifts a left-padded row's positions)."""
    _, model = pair
    ids, mask = left_padded([9, 5], 9, seed=2)
    plain = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=5)
    chunked = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=5, prefill_chunk_size=2)
    assert chunked.asnumpy().tolist() == plain.asnumpy().tolist()


def test_generate_batch_prefills_in_the_given_chunks(pair, monkeypatch):
    from mindone.transformers.generation import continuous

    _, model = pair
    chunks = []
    original = continuous.ContinuousBatcher.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        chunks.append(self.prefill_chunk)

    monkeypatch.setattr(continuous.ContinuousBatcher, "__init__", recording)
    prompt = random_ids(1, 9, seed=1)[0].tolist()
    chunked = model.generate_batch([prompt], max_new_tokens=4, prefill_chunk_size=3, progress_bar=False)
    alone = model.generate(ms_tensor(np.array([prompt])), max_new_tokens=4).asnumpy()[0, 9:].tolist()
    assert chunks == [3] and chunked["req_0"].generated_tokens == alone


def test_disable_compile_runs_the_static_cache_op_by_op(tmp_path):
    save_tiny_llama(tmp_path, seed=4)
    model = LlamaForCausalLM.from_pretrained(str(tmp_path))
    ids = ms_tensor(random_ids(2, 6, seed=3))
    eager = model.generate(ids, max_new_tokens=5, cache_implementation="static", disable_compile=True)
    assert compiled_graph_count(model) == 0
    compiled = model.generate(ids, max_new_tokens=5, cache_implementation="static")
    assert compiled_graph_count(model) == 1 and eager.asnumpy().tolist() == compiled.asnumpy().tolist()


@pytest.mark.parametrize("option", [dict(disable_compile=True), dict(prefill_chunk_size=4)])
def test_options_that_need_pynative_are_refused_under_graph_mode(pair, option):
    _, model = pair
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        with pytest.raises(ValueError, match=f"{next(iter(option))}.* the global context is GRAPH_MODE"):
            model.generate(ms_tensor(random_ids(1, 4)), max_new_tokens=2, **option)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def test_chunked_prefill_without_a_cache_raises_like_transformers(pair):
    reference, model = pair
    ids = random_ids(1, 6)
    with pytest.raises(ValueError, match="Cannot use prefill chunking without a cache"), torch.no_grad():
        reference.generate(torch.tensor(ids), max_new_tokens=2, prefill_chunk_size=2, use_cache=False)
    with pytest.raises(ValueError, match="Cannot use prefill chunking without a cache"):
        model.generate(ms_tensor(ids), max_new_tokens=2, prefill_chunk_size=2, use_cache=False)


def test_chunked_prefill_across_a_longrope_switch_is_refused(tmp_path):
    """Past the switch every position takes the long factors, which a chunk before it cannot know yet."""
    import transformers
    from helpers import TINY

    from mindone.transformers import AutoModelForCausalLM

    rope = {"type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3], "long_factor": [2.0, 2.5, 3.0, 4.0]}
    config = transformers.Phi3Config(**{**TINY, "max_position_embeddings": 64}, original_max_position_embeddings=16,
                                     rope_scaling=rope)  # fmt: skip
    transformers.Phi3ForCausalLM(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    short = ms_tensor(random_ids(1, 12, seed=1))  # generation passes the switch, recomputing the cache whole
    chunked = model.generate(short, max_new_tokens=8, prefill_chunk_size=4)
    assert chunked.asnumpy().tolist() == model.generate(short, max_new_tokens=8).asnumpy().tolist()
    with pytest.raises(ValueError, match="cannot split a prompt that passes the model's LongRoPE switch at 16"):
        model.generate(ms_tensor(random_ids(1, 20, seed=1)), max_new_tokens=3, prefill_chunk_size=4)
