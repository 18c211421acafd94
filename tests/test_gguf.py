"""GGUF reading: config, tokenizer and weights of the real SmolLM2 GGUF, against transformers' own GGUF loader."""

import os

import numpy as np
import pytest
import transformers

from mindone.transformers import AutoModelForCausalLM, AutoTokenizer
from mindone.transformers.convert_gguf import convert, main
from mindone.transformers.integrations.gguf import open_gguf

pytestmark = pytest.mark.slow


def test_config_from_metadata(smollm2_gguf):
    config = open_gguf("", smollm2_gguf).config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (576, 30, 9)
    assert (config.num_key_value_heads, config.head_dim, config.vocab_size) == (3, 64, 49152)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)
    assert config.tie_word_embeddings and config.rms_norm_eps == 1e-5 and config.rope_theta == 100000.0


def test_tokenizer_special_tokens_and_chat_template(smollm2_gguf):
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf), gguf_file=smollm2_gguf)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token) == (1, 2, "<|endoftext|>")
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2
    text = "Hello, world!  Ünïcödé 🤗 tabs\tand\nnewlines 1234"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_weights_equal_transformers_gguf_loader(smollm2_gguf):
    """transformers (torch) dequantizes and un-permutes independently; every tensor must agree exactly."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    reference_config = transformers.LlamaConfig(**load_gguf_checkpoint(smollm2_gguf)["config"])
    skeleton = transformers.LlamaForCausalLM(reference_config)
    expected = load_gguf_checkpoint(smollm2_gguf, return_tensors=True, model_to_load=skeleton)["tensors"]
    ours = dict(open_gguf("", smollm2_gguf).tensors(list(expected)))
    assert sorted(ours) == sorted(expected) and len(ours) == 272
    for name, tensor in expected.items():
        assert np.array_equal(ours[name], tensor.numpy()), name


def test_model_from_gguf_equals_converted_directory(smollm2_gguf, smollm2_dir):
    import mindspore as ms

    direct = AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf))
    converted = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    ids = ms.Tensor([[1, 4093, 198, 6004, 2]], ms.int32)
    assert np.array_equal(direct(input_ids=ids).logits.asnumpy(), converted(input_ids=ids).logits.asnumpy())
    for name in ("config.json", "generation_config.json", "tokenizer.json", "model.safetensors"):
        assert os.path.exists(os.path.join(smollm2_dir, name))


def test_convert_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path, smollm2_dir, capsys):
    with pytest.raises(FileExistsError, match="already exists"):
        convert("unused.gguf", smollm2_dir)
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\x00" * 64)
    assert main(["--gguf_file", str(bogus), "--output_dir", str(tmp_path / "out")]) == 1
    assert "not a readable GGUF file" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["bogus.gguf"]


def test_missing_gguf_file_error(tmp_path):
    with pytest.raises(OSError, match="GGUF file 'missing.gguf' not found"):
        AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="missing.gguf")


# ---------------------------------------------------------------- kept quantized (dequantize=False)
def _greedy(model, ids, mask, cache):
    import mindspore as ms

    out = model.generate(ms.Tensor(ids), attention_mask=ms.Tensor(mask), max_new_tokens=20, do_sample=False,
                         cache_implementation=cache)  # fmt: skip
    return out.asnumpy()


def test_smollm2_kept_quantized_generates_the_dequantized_tokens(smollm2_gguf):
    """SmolLM2's Q4_1 projections stay 4-bit and its Q8_0 embedding table (the tied LM head) int8: the same greedy
    tokens as the file dequantized to float32, for one chat prompt and for a left-padded batch, op by op and
    compiled; its parameters take at most 0.30x the memory (issue 14's target)."""
    from helpers import left_padded

    from mindone.transformers.quantization.linear import QuantizedEmbedding, QuantizedLinear

    directory, name = os.path.split(smollm2_gguf)
    kept = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dequantize=False)
    twin = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    assert sum(isinstance(cell, QuantizedLinear) for _, cell in kept.cells_and_names()) == 210 + 1  # and lm_head
    assert isinstance(kept.get_input_embeddings(), QuantizedEmbedding)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    single = np.array([tokenizer.apply_chat_template(chat, add_generation_prompt=True)], np.int64)
    batch, mask = left_padded([9, 14, 5], 14, pad=tokenizer.pad_token_id, vocab=30000, seed=2)
    for ids, attention in ((single, np.ones_like(single)), (batch, mask)):
        for cache in (None, "static"):
            assert np.array_equal(_greedy(kept, ids, attention, cache), _greedy(twin, ids, attention, cache)), cache
    assert kept.get_memory_footprint() <= 0.30 * twin.get_memory_footprint()


def test_quantized_models_refuse_to_save_and_dequantize_false_needs_a_gguf(smollm2_gguf, tmp_path):
    directory, name = os.path.split(smollm2_gguf)
    kept = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dequantize=False)
    with pytest.raises(NotImplementedError, match="does not write quantized layers"):
        kept.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="pass gguf_file"):
        AutoModelForCausalLM.from_pretrained(directory, dequantize=False)
