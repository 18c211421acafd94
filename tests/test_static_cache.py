"""Compiled generation over a StaticCache: same tokens as the PyNative DynamicCache path and as PyTorch,
a bounded number of compiled graphs, clear errors, and the same API under a global GRAPH_MODE context."""

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers
from helpers import TINY, left_padded, ms_tensor, random_ids, save_tiny_llama, tiny_llama_pair, torch_generate

from mindone.transformers import LlamaForCausalLM, StaticCache, set_seed
from mindone.transformers.generation.decoders import compiled_graph_count

CONFIGS = {
    "gqa": dict(),
    "mqa_untied_bias": dict(num_key_value_heads=1, tie_word_embeddings=False, attention_bias=True),
    "rope_llama3": dict(
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},  # fmt: skip
    ),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return tiny_llama_pair(directory, seed=3, **CONFIGS[request.param])


@pytest.fixture
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("strategy", [dict(), dict(num_beams=3, num_return_sequences=2)], ids=["greedy", "beam"])
def test_static_equals_dynamic_and_pytorch(pair, strategy):
    reference, model = pair
    ids, mask = left_padded([9, 4], 9, seed=5)
    expected = torch_generate(reference, ids, mask, max_new_tokens=20, **strategy)
    dynamic = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=20, **strategy)
    static = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=20,
                            cache_implementation="static", **strategy)  # fmt: skip
    assert static.asnumpy().tolist() == dynamic.asnumpy().tolist() == expected


def test_compiled_gated_processors_give_pytorchs_scores(pair):
    """The compiled step's device head applies length-gated processors (min_new_tokens, begin suppression, a
    forced eos on the last step) when the host's flag says so: PyTorch's processed scores and tokens."""
    reference, model = pair
    ids, mask = left_padded([9, 4], 9, seed=7)
    kwargs = dict(max_new_tokens=6, min_new_tokens=3, begin_suppress_tokens=[5, 7], forced_eos_token_id=2,
                  suppress_tokens=[11], eos_token_id=[2, 9], do_sample=False, output_scores=True,
                  return_dict_in_generate=True)  # fmt: skip
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)
    ours = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), cache_implementation="static", **kwargs)
    assert ours.sequences.asnumpy().tolist() == expected.sequences.numpy().tolist()
    assert len(ours.scores) == len(expected.scores)
    for a, b in zip(ours.scores, expected.scores):
        a, b = a.asnumpy(), b.numpy()
        finite = np.isfinite(b)
        assert np.array_equal(np.isfinite(a), finite) and np.abs(a[finite] - b[finite]).max() <= 1e-5


def test_static_logits_match_dynamic(pair):
    _, model = pair
    ids = ms_tensor(random_ids(2, 7, seed=6))
    kwargs = dict(max_new_tokens=6, return_dict_in_generate=True, output_logits=True)
    dynamic = model.generate(ids, **kwargs)
    static = model.generate(ids, cache_implementation="static", **kwargs)
    for a, b in zip(dynamic.logits, static.logits):
        assert np.abs(a.asnumpy() - b.asnumpy()).max() <= 1e-5


def test_only_the_decode_step_is_compiled(tmp_path):
    """PyNative: prompts of any length run eagerly into the cache; one decode graph per batch and cache length."""
    save_tiny_llama(tmp_path, seed=4)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    for length in (3, 9, 14, 16, 20, 31):  # one cache length (256)
        model.generate(ms_tensor(random_ids(1, length, seed=length)), max_new_tokens=10, cache_implementation="static")
    assert compiled_graph_count(model) == 1
    model.generate(ms_tensor(random_ids(2, 12)), max_new_tokens=10, cache_implementation="static")
    assert compiled_graph_count(model) == 2  # a new batch size compiles its own decode step


def test_graph_mode_compiles_prefill_per_bucket(tmp_path, graph_mode):
    save_tiny_llama(tmp_path, seed=4)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    for length in (3, 9, 14, 16, 20, 31):  # buckets 16 and 32, one cache length (256)
        model.generate(ms_tensor(random_ids(1, length, seed=length)), max_new_tokens=10)
    assert compiled_graph_count(model) == 3  # prefill 16, prefill 32, decode
    model.generate(ms_tensor(random_ids(1, 12)), max_new_tokens=10)
    assert compiled_graph_count(model) == 3  # nothing new for a length seen before


def test_user_static_cache_and_overflow_error(pair):
    _, model = pair
    ids = ms_tensor(random_ids(1, 10, seed=7))
    expected = model.generate(ids, max_new_tokens=8).asnumpy().tolist()
    cache = StaticCache(model.config, max_cache_len=24, max_batch_size=1)
    assert model.generate(ids, max_new_tokens=8, past_key_values=cache).asnumpy().tolist() == expected
    small = StaticCache(model.config, max_cache_len=16, max_batch_size=1)
    before = compiled_graph_count(model)
    with pytest.raises(ValueError, match=r"prompt length 10 \+ 8 new tokens = 18 exceeds the StaticCache's max_cache_len 16"):
        model.generate(ids, max_new_tokens=8, past_key_values=small)
    assert compiled_graph_count(model) == before and not small.keys[0].asnumpy().any()


def test_dynamic_rope_is_refused_on_the_static_path(tmp_path):
    save_tiny_llama(tmp_path, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dynamic rope scaling"):
        model.generate(ms_tensor(random_ids(1, 4)), max_new_tokens=3, cache_implementation="static")


def test_global_graph_mode_uses_the_same_api(pair, graph_mode):
    _, model = pair
    ids, mask = left_padded([8, 5], 8, seed=8)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    expected = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=12).asnumpy().tolist()
    set_seed(11)
    sampled = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=12, do_sample=True,
                             cache_implementation="static").asnumpy().tolist()  # fmt: skip
    ms.set_context(mode=ms.GRAPH_MODE)
    assert model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=12).asnumpy().tolist() == expected
    set_seed(11)
    again = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=12, do_sample=True)
    assert again.asnumpy().tolist() == sampled  # same seed, same tokens, PyNative context or GRAPH_MODE
    logits = model(input_ids=ms_tensor(ids), attention_mask=ms_tensor(mask)).logits
    assert logits.shape == (2, 8, 99)


def test_assisted_decoding_refuses_static_cache(pair):
    _, model = pair
    with pytest.raises(ValueError, match="not supported with Static cache"):
        model.generate(ms_tensor(random_ids(1, 4)), max_new_tokens=3, prompt_lookup_num_tokens=2, cache_implementation="static")


def test_same_seed_same_samples_dynamic_and_static(pair):
    _, model = pair
    ids = ms_tensor(random_ids(2, 6, seed=12))
    runs = []
    for cache_implementation in (None, "static"):
        set_seed(21)
        runs.append(model.generate(ids, do_sample=True, max_new_tokens=10, top_k=0,
                                   cache_implementation=cache_implementation).asnumpy().tolist())  # fmt: skip
    assert runs[0] == runs[1]


def test_float16_weights_on_cpu(tmp_path):
    """fp16 runs on the CPU backend (bf16 does not: no bf16 matmul kernel); logits are handed out in fp16 and
    the processors see float32, as in transformers."""
    from helpers import torch_logits

    reference = save_tiny_llama(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path, dtype="float16")
    ids = random_ids(1, 6)
    logits = model(input_ids=ms_tensor(ids)).logits
    assert logits.dtype == ms.float16
    assert np.abs(logits.astype(ms.float32).asnumpy() - torch_logits(reference, ids)).max() <= 2e-2
    dynamic = model.generate(ms_tensor(ids), max_new_tokens=10)
    static = model.generate(ms_tensor(ids), max_new_tokens=10, cache_implementation="static")
    assert dynamic.asnumpy().tolist() == static.asnumpy().tolist()


@pytest.mark.parametrize("quantization", [{}, {"load_in_4bit": True}])
def test_all_layers_in_one_kernel_equal_one_kernel_per_layer(tmp_path, quantization):
    """Decode steps over a static cache run every layer in one launch (DECODER_STACK) when all layers are packed
    alike: the same tokens and step scores as one kernel per layer, for float and for quantized layers."""
    config = transformers.LlamaConfig(**{**TINY, "intermediate_size": 64})
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(str(tmp_path), **quantization)
    assert model.model._layers_stack()
    ids, mask = left_padded([9, 5], 9, seed=8)
    kwargs = dict(attention_mask=ms.Tensor(mask), max_new_tokens=8, do_sample=False, cache_implementation="static",
                  output_scores=True, return_dict_in_generate=True)  # fmt: skip
    stacked = model.generate(ms.Tensor(ids), **kwargs)
    model.model.uniform_layers = False
    model.__dict__.pop("_compiled_steps", None)
    assert not model.model._layers_stack()
    layered = model.generate(ms.Tensor(ids), **kwargs)
    assert np.array_equal(stacked.sequences.asnumpy(), layered.sequences.asnumpy())
    for a, b in zip(stacked.scores, layered.scores):
        assert np.array_equal(a.asnumpy(), b.asnumpy())
