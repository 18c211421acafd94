"""Every supported architecture on tiny random configs (one per special feature), against transformers + PyTorch:
prefill and cached-decode logits, greedy tokens (single, left-padded batch) and the static-cache path."""

import numpy as np
import pytest
import torch
import transformers
from helpers import TINY, left_padded, ms_tensor, random_ids, torch_generate, torch_logits

from mindone.transformers import AutoModelForCausalLM, DynamicCache
from mindone.transformers.modeling_rope_utils import HOST_UPDATED_ROPE, rope_type_of

SMALL = {**TINY, "max_position_embeddings": 64}
GPT2 = dict(num_key_value_heads=None)  # GPT2Config would keep TINY's GQA key, which the static cache reads
LONGROPE = {"type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3], "long_factor": [2.0, 2.5, 3.0, 4.0]}

CASES = {
    "gpt2_tied": ("gpt2", GPT2),
    "gpt2_layer_scaled_upcast_untied": ("gpt2", dict(GPT2, scale_attn_by_inverse_layer_idx=True,
                                                     reorder_and_upcast_attn=True, n_inner=40, activation_function="gelu",
                                                     layer_norm_epsilon=1e-3, tie_word_embeddings=False)),  # fmt: skip
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
    "phi3_longrope": ("phi3", dict(max_position_embeddings=64, original_max_position_embeddings=16,
                                   rope_scaling=LONGROPE)),  # fmt: skip
    "phi3_partial_rotary_sliding": ("phi3", dict(partial_rotary_factor=0.5, sliding_window=5)),
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


def test_logits_under_graph_mode(pair):
    """A whole-model forward compiled as one graph (GRAPH_MODE) gives transformers' logits too."""
    import mindspore as ms

    reference, model = pair
    ids, mask = left_padded([9, 6], 9, seed=9)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        if rope_type_of(model.config) in HOST_UPDATED_ROPE:
            with pytest.raises(ValueError, match="rope scaling recomputes frequencies"):
                model(input_ids=ms_tensor(ids), attention_mask=ms_tensor(mask))
            return
        logits = model(input_ids=ms_tensor(ids), attention_mask=ms_tensor(mask)).logits.asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    expected = torch_logits(reference, ids, mask)
    assert np.abs((logits - expected) * mask[..., None]).max() <= 1e-4  # padded positions are not compared


def test_output_hidden_states(pair):
    """Embeddings, each layer's output and the final norm's, as transformers returns them."""
    reference, model = pair
    ids = random_ids(1, 7, seed=8)
    with torch.no_grad():
        expected = reference(torch.tensor(ids), output_hidden_states=True).hidden_states
    ours = model(input_ids=ms_tensor(ids), output_hidden_states=True).hidden_states
    assert len(ours) == len(expected) == model.config.num_hidden_layers + 1
    for mine, theirs in zip(ours, expected):
        assert np.abs(mine.asnumpy() - theirs.numpy()).max() <= 1e-4


def reference_generate(reference, ids, mask=None, **kwargs):
    """transformers' greedy tokens. Past the LongRoPE switch its Phi-3 recomputes the cache in one forward whose
    mask is not causal (4.57: the mask is sized from a one-element cache_position), so for LongRoPE the reference
    is generation without a cache: every step recomputes all keys with the current factors, which is what
    recomputing the cache at the switch means."""
    if rope_type_of(reference.config) == "longrope":
        kwargs["use_cache"] = False
    return torch_generate(reference, ids, mask, **kwargs)


def test_greedy_and_left_padded_batch(pair):
    reference, model = pair
    ids = random_ids(1, 9, seed=2)
    assert model.generate(ms_tensor(ids), max_new_tokens=20).asnumpy().tolist() == reference_generate(reference, ids, max_new_tokens=20)
    ids, mask = left_padded([11, 6], 11, seed=3)
    expected = reference_generate(reference, ids, mask, max_new_tokens=20)
    ours = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=20)
    assert ours.asnumpy().tolist() == expected


def test_static_cache_path(pair):
    reference, model = pair
    ids, mask = left_padded([11, 6], 11, seed=4)
    if rope_type_of(model.config) in HOST_UPDATED_ROPE:
        with pytest.raises(ValueError, match="rope scaling recomputes frequencies"):
            model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=12, cache_implementation="static")
        return
    expected = torch_generate(reference, ids, mask, max_new_tokens=12)
    ours = model.generate(ms_tensor(ids), attention_mask=ms_tensor(mask), max_new_tokens=12, cache_implementation="static")
    assert ours.asnumpy().tolist() == expected


def test_generate_batch_rows_equal_pytorch_alone(pair):
    """Continuous batching: rows at their own positions in shared slots (sliding windows, soft-capping and learned
    positions included) give PyTorch's greedy tokens for each prompt alone."""
    reference, model = pair
    prompts = [random_ids(1, n, seed=20 + n)[0].tolist() for n in (9, 3, 14, 6)]
    if rope_type_of(model.config) in HOST_UPDATED_ROPE:
        with pytest.raises(ValueError, match="rope scaling"):
            model.generate_batch(prompts, max_new_tokens=8, progress_bar=False)
        return
    results = model.generate_batch(prompts, max_new_tokens=8, do_sample=False, max_batch_size=2, progress_bar=False)
    eos = reference.generation_config.eos_token_id
    for i, ids in enumerate(prompts):
        expected = torch_generate(reference, np.array([ids]), max_new_tokens=8, do_sample=False)[0][len(ids) :]
        ends = [j for j, token in enumerate(expected) if token == eos]
        assert results[f"req_{i}"].generated_tokens == (expected[: ends[0] + 1] if ends else expected)


def test_loss_with_labels(pair):
    reference, model = pair
    ids = random_ids(2, 10, seed=5)
    labels = ids.copy()
    labels[0, :3] = -100
    with torch.no_grad():
        expected = reference(torch.tensor(ids), labels=torch.tensor(labels)).loss.item()
    assert abs(model(input_ids=ms_tensor(ids), labels=ms_tensor(labels)).loss.item() - expected) <= 1e-5


def test_save_pretrained_loads_in_transformers(pair, tmp_path):
    """Our checkpoint keys are Hugging Face's: transformers loads what save_pretrained writes, with nothing missing."""
    reference, model = pair
    model.save_pretrained(tmp_path)
    reloaded, info = type(reference).from_pretrained(tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = random_ids(1, 8, seed=6)
    assert np.abs(torch_logits(reloaded.eval(), ids) - torch_logits(reference, ids)).max() <= 1e-6
