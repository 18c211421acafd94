"""Every supported architecture on tiny random configs (one per special feature), against transformers + PyTorch:
prefill and cached-decode logits, greedy tokens (single, left-padded batch) and the static-cache path."""

import numpy as np
import pytest
import torch
import transformers
from helpers import TINY, left_padded, ms_tensor, random_ids, torch_generate, torch_logits

from mindone.transformers import AutoModelForCausalLM, DynamicCache

SMALL = {**TINY, "max_position_embeddings": 64}

CASES = {
    "mistral_sliding_window": ("mistral", dict(sliding_window=5)),
    "qwen2": ("qwen2", dict()),
    "qwen2_yarn": ("qwen2", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})),
    "mistral_yarn_mscale": ("mistral", dict(head_dim=8, rope_scaling={"rope_type": "yarn", "factor": 2.0, "mscale": 0.8,
                                                          "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2})),  # fmt: skip
    "qwen2_mixed_sliding_layers": ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "qwen3": ("qwen3", dict(head_dim=16)),
    "qwen3_bias_sliding": ("qwen3", dict(attention_bias=True, use_sliding_window=True, sliding_window=6, max_window_layers=0)),
    "qwen3_tied": ("qwen3", dict(tie_word_embeddings=True)),
    "gemma": ("gemma", dict(head_dim=16)),
    "gemma2_softcap_sliding": ("gemma2", dict(head_dim=16, query_pre_attn_scalar=12, sliding_window=5,
                                              attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),  # fmt: skip
    "gemma3_local_rope": ("gemma3_text", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                                              rope_local_base_freq=100.0, rope_theta=1e6,
                                              layer_types=["sliding_attention", "full_attention"])),  # fmt: skip
    "gemma3_linear_rope_softcap": ("gemma3_text", dict(head_dim=16, sliding_window=6, final_logit_softcapping=5.0,
                                                       rope_scaling={"rope_type": "linear", "factor": 2.0})),  # fmt: skip
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    model_type, overrides = CASES[request.param]
    config = transformers.AutoConfig.for_model(model_type, **{**SMALL, **overrides})
    torch.manual_seed(0)
    # eager is transformers' reference math; its sdpa path silently skips Gemma 2's attention soft-capping
    reference = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    directory = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(str(directory))
    assert type(model).__name__ == type(reference).__name__
    return reference, model


def test_prefill_logits(pair):
    reference, model = pair
    ids = random_ids(2, 12)
    assert np.abs(model(input_ids=ms_tensor(ids)).logits.asnumpy() - torch_logits(reference, ids)).max() <= 1e-4


def test_cached_decode_logits(pair):
    reference, model = pair
    ids = random_ids(2, 12, seed=1)
    cache = DynamicCache()
    model(input_ids=ms_tensor(ids[:, :7]), past_key_values=cache)
    steps = [model(input_ids=ms_tensor(ids[:, i : i + 1]), past_key_values=cache).logits.asnumpy() for i in range(7, 12)]
    assert np.abs(np.concatenate(steps, 1) - torch_logits(reference, ids)[:, 7:]).max() <= 1e-4


def test_greedy_and_left_padded_batch(pair):
    reference, model = pair
    ids = random_ids(1, 9, seed=2)
    assert model.generate(ms_tensor(ids), max_new_tokens=20).asnumpy().tolist() == torch_generate(reference, ids, max_new_tokens=20)
    ids, mask = left_padded([11, 6], 11, seed=3)
    expected = torch_generate(reference, ids, mask, max_new_tokens=20)
    ours = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=20)
    assert ours.asnumpy().tolist() == expected


def test_static_cache_path(pair):
    reference, model = pair
    ids, mask = left_padded([11, 6], 11, seed=4)
    expected = torch_generate(reference, ids, mask, max_new_tokens=12)
    ours = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=12, cache_implementation="static")
    assert ours.asnumpy().tolist() == expected
