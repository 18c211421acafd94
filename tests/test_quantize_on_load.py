"""Quantizing a float checkpoint while loading (QuantoConfig int8 / int4, load_in_8bit / load_in_4bit): the
round-to-nearest quantizers, every architecture against its dequantized twin, the refusals, the command lines and
SmolLM2's perplexity, footprint and loading-memory targets."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from helpers import TINY, dequantized_twin, left_padded, random_ids
from transformers import BitsAndBytesConfig, QuantoConfig

import mindspore as ms
from mindone.transformers import AutoModelForCausalLM, LlamaForCausalLM
from mindone.transformers.quantization import rtn
from mindone.transformers.quantization.linear import QuantizedCell, QuantizedEmbedding, QuantizedLinear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {**TINY, "intermediate_size": 64, "max_position_embeddings": 64}
ARCHITECTURES = {  # one tiny config per model type, with the features that change where the projections sit
    "llama": ("llama", dict()),
    "mistral": ("mistral", dict(sliding_window=5)),
    "qwen2": ("qwen2", dict()),
    "qwen3": ("qwen3", dict(head_dim=16, tie_word_embeddings=True)),
    "gemma": ("gemma", dict(head_dim=16)),
    "gemma2": ("gemma2", dict(head_dim=16, sliding_window=5, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
    "gemma3": ("gemma3_text", dict(head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"])),
    "phi3": ("phi3", dict(partial_rotary_factor=0.5)),
    "gpt2": ("gpt2", dict(num_key_value_heads=None)),
}


# ---------------------------------------------------------------- the quantizers
def test_int8_rounds_every_weight_to_the_nearest_step_of_its_group():
    weight = np.random.default_rng(0).normal(size=(33, 96)).astype(np.float32)
    weight[3, :32] = 0  # an all-zero group
    quantized = rtn.quantize_int8(weight)
    assert quantized.values.dtype == np.int8 and quantized.scales.shape == (33, 3)
    step = np.repeat(quantized.scales, 32, axis=-1)
    assert np.all(np.abs(quantized.dequantize() - weight) <= step / 2 * (1 + 1e-6))
    assert np.abs(quantized.values).max() == 127 and not quantized.dequantize()[3, :32].any()


def test_int4_fit_beats_min_max_rounding_and_is_exact_on_a_4_bit_grid():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(40, 64)).astype(np.float32)
    fitted = rtn.quantize_int4(weight).dequantize()
    low, high = weight.reshape(40, 2, 32).min(-1, keepdims=True), weight.reshape(40, 2, 32).max(-1, keepdims=True)
    step = (high - low) / 15
    min_max = (np.rint((weight.reshape(40, 2, 32) - low) / step) * step + low).reshape(40, 64)
    assert np.square(fitted - weight).sum() < 0.9 * np.square(min_max - weight).sum()
    # weights that are already scale * q + offset with q spanning 0..15 come back exactly (to float32 rounding)
    q = rng.integers(0, 16, size=(8, 32)).astype(np.float32)
    q[:, 0], q[:, 1] = 0, 15
    grid = q * np.float32(0.125) - np.float32(0.5)
    assert np.abs(rtn.quantize_int4(grid).dequantize() - grid).max() < 1e-6
    constant = np.full((2, 32), 0.3, np.float32)
    assert np.array_equal(rtn.quantize_int4(constant).dequantize(), constant)


# ---------------------------------------------------------------- every architecture vs its dequantized twin
@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def checkpoint(request, tmp_path_factory):
    model_type, overrides = ARCHITECTURES[request.param]
    config = transformers.AutoConfig.for_model(model_type, **{**SMALL, **overrides})
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp(request.param)
    transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_model_equals_its_dequantized_twin(checkpoint, bits):
    """Logits to float32 rounding and identical greedy tokens (one prompt, a left-padded batch, the dynamic and
    the static cache) between the model quantized while loading and the float model holding the same weights."""
    quantized = AutoModelForCausalLM.from_pretrained(checkpoint, **{f"load_in_{bits}bit": True})
    linears = [cell for _, cell in quantized.cells_and_names() if isinstance(cell, QuantizedLinear)]
    assert linears and {cell.bits for cell in linears if cell is not quantized.lm_head} == {bits}
    assert isinstance(quantized.get_input_embeddings(), QuantizedEmbedding)
    assert quantized.get_input_embeddings().bits == 8  # embeddings and the LM head stay int8 under int4
    assert isinstance(quantized.config.quantization_config, QuantoConfig)
    twin = dequantized_twin(checkpoint, quantized)
    ids = ms.Tensor(random_ids(2, 10, seed=5))
    assert np.abs(quantized(input_ids=ids).logits.asnumpy() - twin(input_ids=ids).logits.asnumpy()).max() < 1e-4
    padded, mask = left_padded([9, 5], 9, seed=6)
    for cache in (None, "static"):
        kwargs = dict(attention_mask=ms.Tensor(mask), max_new_tokens=8, do_sample=False, cache_implementation=cache)
        tokens = [m.generate(ms.Tensor(padded), **kwargs).asnumpy() for m in (quantized, twin)]
        assert np.array_equal(*tokens), cache


def test_footprint_counts_the_quantized_weights(checkpoint):
    float_model = AutoModelForCausalLM.from_pretrained(checkpoint)
    footprints = [AutoModelForCausalLM.from_pretrained(checkpoint, load_in_8bit=bits == 8, load_in_4bit=bits == 4)
                  .get_memory_footprint() for bits in (8, 4)]  # fmt: skip
    assert footprints[1] < footprints[0] < float_model.get_memory_footprint()


# ---------------------------------------------------------------- options and refusals
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    config = transformers.LlamaConfig(**{**SMALL, "tie_word_embeddings": True})
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("llama_tied")
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return str(directory)


def test_quanto_config_and_shorthand_give_the_same_model(llama_dir):
    ids = ms.Tensor(random_ids(1, 6))
    by_config = LlamaForCausalLM.from_pretrained(llama_dir, quantization_config=QuantoConfig(weights="int4"))
    by_dict = LlamaForCausalLM.from_pretrained(llama_dir, quantization_config={"quant_method": "quanto", "weights": "int4"})
    shorthand = LlamaForCausalLM.from_pretrained(llama_dir, load_in_4bit=True)
    logits = [m(input_ids=ids).logits.asnumpy() for m in (by_config, by_dict, shorthand)]
    assert np.array_equal(logits[0], logits[1]) and np.array_equal(logits[0], logits[2])


def test_modules_to_not_convert_keep_float_layers_and_a_tied_table_whole(llama_dir):
    config = QuantoConfig(weights="int8", modules_to_not_convert=["mlp", "lm_head"])
    model = LlamaForCausalLM.from_pretrained(llama_dir, quantization_config=config)
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, QuantizedLinear) and not isinstance(layer.mlp.down_proj, QuantizedCell)
    # the LM head shares the embedding table: keeping the head float keeps the table float
    assert not isinstance(model.get_input_embeddings(), QuantizedCell) and not isinstance(model.lm_head, QuantizedCell)
    assert model.lm_head.weight is model.get_input_embeddings().weight


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(quantization_config=QuantoConfig(weights="int8", activations="int8")), "activation quantization"),
        (dict(quantization_config=QuantoConfig(weights="float8")), "weights='float8'"),
        (dict(quantization_config=QuantoConfig(weights="int2")), "weights='int2'"),
        (dict(quantization_config=BitsAndBytesConfig(load_in_8bit=True)), "BitsAndBytesConfig"),
        (dict(quantization_config={"quant_method": "gptq", "bits": 4}), "quant_method 'gptq'"),
        (dict(load_in_8bit=True, load_in_4bit=True), "pass only one"),
        (dict(load_in_8bit=True, quantization_config=QuantoConfig()), "not both"),
    ],
)
def test_unsupported_quantization_is_one_line_naming_what_is_supported(llama_dir, kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        AutoModelForCausalLM.from_pretrained(llama_dir, **kwargs)
    assert "\n" not in str(error.value)


def test_a_group_that_does_not_divide_the_input_is_refused_before_loading(tmp_path, monkeypatch):
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(tmp_path)  # intermediate 37
    read = []
    monkeypatch.setattr(LlamaForCausalLM, "_load_tensors", lambda *args: read.append(args))
    with pytest.raises(ValueError, match=r"groups of 32 input features, but 'model.layers.0.mlp.down_proj.weight' has 37"):
        LlamaForCausalLM.from_pretrained(str(tmp_path), load_in_8bit=True)
    assert not read  # refused before any tensor was read


def test_a_gguf_file_takes_dequantize_false_not_a_quantization_config(smollm2_gguf):
    directory, name = os.path.split(smollm2_gguf)
    with pytest.raises(ValueError, match="a GGUF file is quantized already: pass dequantize=False"):
        AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, load_in_4bit=True)


def test_a_checkpoint_saved_quantized_is_refused(llama_dir, tmp_path):
    for file in os.listdir(llama_dir):
        os.symlink(os.path.join(llama_dir, file), tmp_path / file) if file != "config.json" else None
    with open(os.path.join(llama_dir, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="already quantized with 'awq'"):
        AutoModelForCausalLM.from_pretrained(str(tmp_path))


def test_save_pretrained_refuses_quantized_layers(llama_dir, tmp_path):
    model = LlamaForCausalLM.from_pretrained(llama_dir, load_in_8bit=True)
    with pytest.raises(NotImplementedError, match="does not write quantized layers"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- command lines and the real checkpoint
@pytest.mark.slow
def test_generate_py_quantization_flag(smollm2_dir, tmp_path):
    """generate.py --quantization int4 generates what from_pretrained(load_in_4bit=True).generate() does; the
    PyTorch script refuses the flag."""
    script = os.path.join(ROOT, "examples", "transformers", "llama")
    args = ["--model_name_or_path", smollm2_dir, "--prompt", "The capital of France is", "--max_new_tokens", "12"]
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, os.path.join(script, "generate.py"), *args, "--quantization", "int4",
                             "--output_json", str(out)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(out.read_text())["rows"][0]
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, load_in_4bit=True)
    expected = model.generate(ms.Tensor([row["input_ids"]], ms.int32), max_new_tokens=12, do_sample=False).asnumpy()
    assert row["output_ids"] == expected[0].tolist()
    refused = subprocess.run([sys.executable, os.path.join(script, "generate_pt.py"), *args, "--quantization", "int8"],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert refused.returncode == 2 and "--quantization is for generate.py" in refused.stderr


@pytest.mark.slow
def test_smollm2_perplexity_footprint_and_loading_memory_targets(smollm2_dir):
    """Issue 14's targets on SmolLM2-135M fp32 and a page of English: int8 perplexity within +2% and parameters
    <= 0.40x; int4 within +8% and <= 0.30x; loading a quantized model peaks below the float model's size plus the
    runtime."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from bench_quantization import run

    rows = {row["setting"]: row for row in run(smollm2_dir)}
    base = rows["float32"]
    for setting, ppl_limit, size_limit in (("int8", 1.02, 0.40), ("int4", 1.08, 0.30)):
        row = rows[setting]
        assert row["perplexity"] <= base["perplexity"] * ppl_limit, (setting, row, base)
        assert row["footprint_mb"] <= base["footprint_mb"] * size_limit, (setting, row, base)
        assert row["load_peak_mb"] < base["footprint_mb"] + base["runtime_mb"], (setting, row, base)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantized_layer_runs_as_one_kernel_over_one_buffer(llama_dir, bits):
    """Decode steps over a static cache run each quantized layer as one kernel (QUANT_WEIGHTS_LAYER) reading one
    byte buffer that the layer's parameters now point into; its tokens and step logits equal the per-projection
    kernels', and replacing a weight drops the buffer."""
    from mindone.transformers.quantization.linear import QuantizedLayerWeights

    model = LlamaForCausalLM.from_pretrained(llama_dir, **{f"load_in_{bits}bit": True})
    layer = model.model.layers[0]
    assert isinstance(layer.packed, QuantizedLayerWeights)
    start = layer.packed.weights.data_ptr()
    end = start + layer.packed.weights.size
    for cell in (layer.self_attn.q_proj, layer.mlp.down_proj):
        held = cell.weight_values if bits == 8 else cell.weight_packed
        assert start <= held.data_ptr() < end and start <= cell.weight_scales.data_ptr() < end
    padded, mask = left_padded([9, 5], 9, seed=7)
    kwargs = dict(attention_mask=ms.Tensor(mask), max_new_tokens=8, do_sample=False, cache_implementation="static",
                  output_scores=True, return_dict_in_generate=True)  # fmt: skip
    packed = model.generate(ms.Tensor(padded), **kwargs)
    for decoder_layer in model.model.layers:
        object.__setattr__(decoder_layer, "packed", None)
    model.__dict__.pop("_compiled_steps", None)
    separate = model.generate(ms.Tensor(padded), **kwargs)
    assert np.array_equal(packed.sequences.asnumpy(), separate.sequences.asnumpy())
    for a, b in zip(packed.scores, separate.scores):
        assert np.abs(a.asnumpy() - b.asnumpy()).max() < 1e-5

    fresh = LlamaForCausalLM.from_pretrained(llama_dir, **{f"load_in_{bits}bit": True})
    scales = fresh.model.layers[1].mlp.up_proj.weight_scales
    scales.set_data(ms.Tensor(scales.asnumpy() * 2))
    fresh.check_weights()
    assert fresh.model.layers[1].packed is None


def test_layers_with_float_or_mixed_width_projections_keep_separate_kernels(llama_dir):
    """The layer kernel needs every projection quantized, and gate and up in one format (one tile reads both);
    other layers keep their per-projection kernels."""
    from mindone.transformers.quantization.linear import QuantizedLayerWeights

    config = QuantoConfig(weights="int4", modules_to_not_convert=["gate_proj"])
    model = LlamaForCausalLM.from_pretrained(llama_dir, quantization_config=config)
    assert model.model.layers[0].packed is None
    int8 = LlamaForCausalLM.from_pretrained(llama_dir, load_in_8bit=True).model.layers[0]
    int4 = LlamaForCausalLM.from_pretrained(llama_dir, load_in_4bit=True).model.layers[0]
    sources = [None, *int8.self_attn.block_weights()[:4], *[None] * 7, int8.mlp.gate_proj, int4.mlp.up_proj, int8.mlp.down_proj]
    assert QuantizedLayerWeights.of(tuple(sources), "mixed") is None
