"""Tiny random Llama configs: logits, cached decoding and greedy generation against transformers + PyTorch."""

import numpy as np
import pytest
from helpers import left_padded, ms_tensor, random_ids, tiny_llama_pair, torch_generate, torch_logits

from mindone.transformers import DynamicCache

CONFIGS = {
    "mha": dict(num_key_value_heads=4),
    "gqa": dict(num_key_value_heads=2),
    "mqa_untied_bias": dict(num_key_value_heads=1, tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    "tied": dict(tie_word_embeddings=True),
    "head_dim": dict(head_dim=16),
    "rope_linear": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "rope_dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=16),
    "rope_longrope": dict(
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.3, 1.7, 2.0], "long_factor": [2.0, 3.0, 5.0, 7.0]},
        max_position_embeddings=32, original_max_position_embeddings=16, head_dim=8,
    ),
    "rope_llama3": dict(
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        rope_theta=500.0,
    ),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return tiny_llama_pair(directory, **CONFIGS[request.param])


def test_prefill_logits_match(pair):
    reference, model = pair
    ids = random_ids(2, 12)
    ours = model(input_ids=ms_tensor(ids)).logits.asnumpy()
    assert np.abs(ours - torch_logits(reference, ids)).max() <= 1e-4


def test_left_padded_logits_match_on_real_tokens(pair):
    reference, model = pair
    ids, mask = left_padded([12, 7, 3], 12)
    ours = model(input_ids=ms_tensor(ids), attention_mask=ms_tensor(mask)).logits.asnumpy()
    real = mask.astype(bool)
    assert np.abs(ours[real] - torch_logits(reference, ids, mask)[real]).max() <= 1e-4


def test_cached_decode_equals_full_recompute(pair):
    _, model = pair
    ids = random_ids(2, 10)
    full = model(input_ids=ms_tensor(ids), use_cache=False).logits.asnumpy()
    cache = DynamicCache()
    model(input_ids=ms_tensor(ids[:, :6]), past_key_values=cache, use_cache=True)
    steps = [model(input_ids=ms_tensor(ids[:, i : i + 1]), past_key_values=cache).logits.asnumpy() for i in range(6, 10)]
    assert cache.get_seq_length() == 10
    assert np.abs(np.concatenate(steps, axis=1) - full[:, 6:]).max() <= 1e-4


def test_greedy_20_tokens_identical(pair):
    reference, model = pair
    ids = random_ids(1, 7, seed=3)
    expected = torch_generate(reference, ids, max_new_tokens=20, do_sample=False)
    assert model.generate(ms_tensor(ids), max_new_tokens=20, do_sample=False).asnumpy().tolist() == expected


def test_greedy_left_padded_batch_identical(pair):
    reference, model = pair
    ids, mask = left_padded([9, 4], 9, seed=5)
    expected = torch_generate(reference, ids, mask, max_new_tokens=20, do_sample=False)
    ours = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=20, do_sample=False)
    assert ours.asnumpy().tolist() == expected


def test_greedy_without_cache_identical(pair):
    reference, model = pair
    ids = random_ids(1, 5, seed=4)
    expected = torch_generate(reference, ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert model.generate(ms_tensor(ids), max_new_tokens=8, use_cache=False).asnumpy().tolist() == expected


def test_loss_matches(pair):
    import torch

    reference, model = pair
    ids = random_ids(2, 8)
    labels = ids.copy()
    labels[0, :3] = -100
    with torch.no_grad():
        expected = reference(torch.tensor(ids), labels=torch.tensor(labels)).loss.item()
    ours = model(input_ids=ms_tensor(ids), labels=ms_tensor(labels)).loss.asnumpy()
    assert abs(float(ours) - expected) <= 1e-5
