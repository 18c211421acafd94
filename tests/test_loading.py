"""from_pretrained / save_pretrained: formats, dtypes, tying, sharding, and one-line actionable errors."""

import json
import os
import shutil

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers
from helpers import TINY, ms_tensor, random_ids, save_tiny_llama, torch_logits

from mindone.transformers import AutoModelForCausalLM, LlamaForCausalLM, LlamaModel
from mindone.transformers.safetensors_io import CheckpointError
from mindone.transformers.models.auto import supported_model_types


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    save_tiny_llama(directory)
    return str(directory)


def _copy(tiny_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_dir, target)
    return target


def test_auto_class_dispatches_on_model_type(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.generation_config.eos_token_id == 2


def test_save_pretrained_round_trips_into_transformers(tiny_dir, tmp_path):
    ours = LlamaForCausalLM.from_pretrained(tiny_dir)
    ours.save_pretrained(tmp_path / "saved")
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = random_ids(1, 6)
    assert np.abs(ours(input_ids=ms_tensor(ids)).logits.asnumpy() - torch_logits(reference, ids)).max() <= 1e-5
    assert os.path.exists(tmp_path / "saved" / "generation_config.json")


def test_sharded_save_and_load(tiny_dir, tmp_path):
    ours = LlamaForCausalLM.from_pretrained(tiny_dir)
    ours.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    files = os.listdir(tmp_path / "sharded")
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "sharded")
    ids = ms_tensor(random_ids(1, 5))
    assert np.array_equal(reloaded(input_ids=ids).logits.asnumpy(), ours(input_ids=ids).logits.asnumpy())
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "sharded")
    assert reference.config.num_hidden_layers == TINY["num_hidden_layers"]


def test_tied_embeddings_share_one_parameter(tmp_path):
    save_tiny_llama(tmp_path, tie_word_embeddings=True)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in model.state_dict()


def test_dtype_arguments(tiny_dir, tmp_path):
    assert LlamaForCausalLM.from_pretrained(tiny_dir).dtype == ms.float32
    assert LlamaForCausalLM.from_pretrained(tiny_dir, dtype="float16").dtype == ms.float16
    assert LlamaForCausalLM.from_pretrained(tiny_dir, mindspore_dtype=ms.float16).dtype == ms.float16
    target = _copy(tiny_dir, tmp_path)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "dtype": "float16"}))
    assert LlamaForCausalLM.from_pretrained(target, dtype="auto").dtype == ms.float16
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        LlamaForCausalLM.from_pretrained(tiny_dir, dtype="int8")
    with pytest.raises(ValueError, match="bfloat16 .* CPU backend"):
        LlamaForCausalLM.from_pretrained(tiny_dir, dtype="bfloat16")


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
    config = transformers.LlamaConfig(**TINY)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    reference.save_pretrained(tmp_path)
    ours = LlamaForCausalLM.from_pretrained(tmp_path)
    expected = reference.model.embed_tokens.weight.detach().float().numpy()
    assert np.array_equal(ours.model.embed_tokens.weight.asnumpy(), expected)


def test_base_model_loads_from_causal_lm_checkpoint(tiny_dir):
    base = LlamaModel.from_pretrained(tiny_dir)
    full = LlamaForCausalLM.from_pretrained(tiny_dir)
    ids = ms_tensor(random_ids(1, 4))
    assert np.array_equal(base(input_ids=ids).last_hidden_state.asnumpy(), full.model(input_ids=ids).last_hidden_state.asnumpy())


def test_missing_and_unexpected_keys_are_reported(tiny_dir, tmp_path, caplog):
    from safetensors.numpy import load_file, save_file

    target = _copy(tiny_dir, tmp_path)
    tensors = load_file(target / "model.safetensors")
    tensors["extra.weight"] = np.zeros(3, np.float32)
    del tensors["model.norm.weight"]
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    model, info = LlamaForCausalLM.from_pretrained(target, output_loading_info=True)
    assert info["missing_keys"] == ["model.norm.weight"] and info["unexpected_keys"] == ["extra.weight"]
    assert np.array_equal(model.model.norm.weight.asnumpy(), np.ones(TINY["hidden_size"], np.float32))
    assert "were not used" in caplog.text and "newly initialized" in caplog.text


def test_config_kwargs_override(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, rms_norm_eps=1e-3)
    assert model.config.rms_norm_eps == 1e-3


# ---------------------------------------------------------------- errors: one line, naming the problem
def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_error_missing_path(tmp_path):
    with pytest.raises(OSError) as excinfo:
        LlamaForCausalLM.from_pretrained(str(tmp_path / "nope"))
    assert "does not exist" in _one_line(excinfo)


def test_error_uncached_repo_id_offline():
    with pytest.raises(OSError) as excinfo:
        AutoModelForCausalLM.from_pretrained("someone/not-a-cached-model")
    message = _one_line(excinfo)
    assert "someone/not-a-cached-model" in message and "cache" in message


def test_error_no_config(tiny_dir, tmp_path):
    target = _copy(tiny_dir, tmp_path)
    os.remove(target / "config.json")
    with pytest.raises(OSError) as excinfo:
        LlamaForCausalLM.from_pretrained(target)
    assert "has no config.json" in _one_line(excinfo)


def test_error_no_weights(tiny_dir, tmp_path):
    target = _copy(tiny_dir, tmp_path)
    os.remove(target / "model.safetensors")
    with pytest.raises(CheckpointError) as excinfo:
        LlamaForCausalLM.from_pretrained(target)
    assert "has no model.safetensors" in _one_line(excinfo)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_error_corrupt_safetensors(tiny_dir, tmp_path, damage):
    target = _copy(tiny_dir, tmp_path)
    path = target / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x10\x00" + data[2:])
    with pytest.raises(CheckpointError) as excinfo:
        LlamaForCausalLM.from_pretrained(target)
    assert "not a readable safetensors file" in _one_line(excinfo)


def test_error_shape_mismatch(tiny_dir, tmp_path):
    target = _copy(tiny_dir, tmp_path)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(CheckpointError) as excinfo:
        LlamaForCausalLM.from_pretrained(target)
    message = _one_line(excinfo)
    assert "model.layers.0.mlp.down_proj.weight" in message and "(32, 37)" in message and "(32, 40)" in message


def test_error_unknown_model_type(tiny_dir, tmp_path):
    target = _copy(tiny_dir, tmp_path)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "model_type": "no_such_arch"}))
    with pytest.raises(ValueError) as excinfo:
        AutoModelForCausalLM.from_pretrained(target)
    message = _one_line(excinfo)
    assert "'no_such_arch'" in message and f"supported: {', '.join(supported_model_types())}" in message
    assert {"llama", "mistral", "phi3", "qwen2", "qwen3", "gemma3_text"} <= set(supported_model_types())


def test_error_known_but_unsupported_model_type(tmp_path):
    transformers.GPTNeoXConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as excinfo:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert f"'gpt_neox' is not supported; supported: {', '.join(supported_model_types())}" in _one_line(excinfo)


def test_error_pickle_weights_refused(tiny_dir, tmp_path):
    target = _copy(tiny_dir, tmp_path)
    os.remove(target / "model.safetensors")
    (target / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(CheckpointError) as excinfo:
        LlamaForCausalLM.from_pretrained(target)
    message = _one_line(excinfo)
    assert "pickled PyTorch weights" in message and "safetensors" in message


def test_repo_id_resolves_from_the_hub_cache_offline(tiny_dir, tmp_path):
    """A repo id is looked up in huggingface_hub's cache layout (models--org--name/snapshots/<rev>) like transformers."""
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    model = AutoModelForCausalLM.from_pretrained("someone/tiny-llama", cache_dir=str(tmp_path / "hub"))
    reference = LlamaForCausalLM.from_pretrained(tiny_dir)
    ids = ms_tensor(random_ids(1, 4))
    assert np.array_equal(model(input_ids=ids).logits.asnumpy(), reference(input_ids=ids).logits.asnumpy())


def test_auto_class_keeps_loading_arguments(tiny_dir):
    model, info = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype="float16", output_loading_info=True)
    assert model.dtype == ms.float16 and info["missing_keys"] == []
    assert AutoModelForCausalLM.from_pretrained(tiny_dir, torch_dtype="float16").dtype == ms.float16
    assert LlamaForCausalLM.from_pretrained(tiny_dir, torch_dtype="float16").dtype == ms.float16
