"""Tensor parallel under msrun (from_pretrained(tp_plan="auto")): every architecture with a plan at 2 ranks and
SmolLM2 at 3 ranks against the same checkpoint in one process (logits, greedy tokens in PyNative and over the
compiled static cache, memory per rank), the batch job with --tensor_parallel 2, and each refused input."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from helpers import REPO, TINY, run_msrun, worker_logs
from transformers import QuantoConfig

from mindone.transformers import AutoModelForCausalLM
from mindone.transformers.batch.store import read_rows

WORKER = os.path.join(REPO, "tests", "tensor_parallel_worker.py")
SHARDABLE = {**TINY, "intermediate_size": 40, "vocab_size": 100, "max_position_embeddings": 64}
CASES = {  # every architecture whose transformers config has a base_model_tp_plan
    "llama_gqa": ("llama", {}),
    "llama_biases": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "mistral_sliding_window": ("mistral", dict(sliding_window=5)),
    "qwen2_qkv_bias": ("qwen2", {}),
    "qwen3_tied_qk_norm": ("qwen3", dict(head_dim=16, tie_word_embeddings=True)),
    "gemma": ("gemma", dict(head_dim=16)),
    "gemma2_softcap_sliding": ("gemma2", dict(head_dim=16, sliding_window=5, attn_logit_softcapping=2.0,
                                              final_logit_softcapping=3.0)),  # fmt: skip
    "gemma3_local_rope": ("gemma3_text", dict(head_dim=16, sliding_window=4, rope_local_base_freq=100.0,
                                              layer_types=["sliding_attention", "full_attention"])),  # fmt: skip
    "phi3_packed_partial_rotary": ("phi3", dict(partial_rotary_factor=0.5)),
}
PROMPTS = [[5, 17, 33, 8, 41, 62], [9, 71, 12], [44, 3, 90, 27, 18, 6, 52, 13]]


def save_config_with_bad_weights(directory, model_type: str, **overrides) -> str:
    """A config and a model.safetensors that is not a safetensors file: loading it fails only if weights are read."""
    os.makedirs(directory, exist_ok=True)
    transformers.AutoConfig.for_model(model_type, **{**SHARDABLE, **overrides}).save_pretrained(directory)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(b"not a safetensors file")
    return str(directory)


def error_cases(root) -> dict:
    def bad(name, **overrides):
        return save_config_with_bad_weights(root / name, "llama", **overrides)

    unknown_style = bad("unknown_style")
    config_path = os.path.join(unknown_style, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["base_model_tp_plan"] = {"layers.*.self_attn.q_proj": "colwise", "layers.*.mlp.down_proj": "sequence_parallel"}
    with open(config_path, "w") as f:
        json.dump(config, f)
    gpt2 = save_config_with_bad_weights(root / "gpt2", "gpt2", num_key_value_heads=None)
    auto = {"tp_plan": "auto"}
    return {
        "heads": [bad("heads", num_attention_heads=3, num_key_value_heads=3, head_dim=8), auto],
        "kv_heads": [bad("kv_heads", num_key_value_heads=1), auto],
        "intermediate": [bad("intermediate", intermediate_size=37), auto],
        "vocabulary": [bad("vocabulary", vocab_size=99), auto],
        "unknown_style": [unknown_style, auto],
        "no_plan": [gpt2, auto],
        "tp_size_not_dividing_world": [bad("fine"), {"tp_plan": "auto", "tp_size": 3}],
        "cpu_sub_groups": [bad("fine"), {"tp_plan": "auto", "tp_size": 1}],
    }


EXPECTED_ERRORS = {
    "heads": "tp_size=2 does not divide num_attention_heads=3",
    "kv_heads": "tp_size=2 does not divide num_key_value_heads=1",
    "intermediate": "tp_size=2 does not divide intermediate_size=37",
    "vocabulary": "tp_size=2 does not divide vocab_size=99",
    "unknown_style": "'sequence_parallel' is not a style this library shards",
    "no_plan": "GPT2LMHeadModel has no tensor-parallel plan",
    "tp_size_not_dividing_world": "tp_size=3 does not divide the 2 msrun workers",
    "cpu_sub_groups": "CPU collectives lack (world group only); on CPU use tp_size=2",
}


def run_worker(workers: int, root, job: dict) -> list:
    output = root / "results"
    output.mkdir()
    job_path = root / "job.json"
    job_path.write_text(json.dumps({**job, "output": str(output)}))
    result = run_msrun(workers, root / "logs", WORKER, job_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:] + worker_logs(root / "logs")
    return [json.loads((output / f"rank{rank}.json").read_text()) for rank in range(workers)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The tiny checkpoints and the refused loads, all through one msrun launch of 2 workers."""
    root = tmp_path_factory.mktemp("tensor_parallel")
    cases = {}
    for name, (model_type, overrides) in CASES.items():
        config = transformers.AutoConfig.for_model(model_type, **{**SHARDABLE, **overrides})
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root / name)
        cases[name] = str(root / name)
    job = {"cases": cases, "errors": error_cases(root), "prompts": PROMPTS, "max_new_tokens": 6}
    return run_worker(2, root, job)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_match_one_process(two_ranks, case):
    for report in two_ranks:
        seen = report["cases"][case]
        assert seen["prefill_logits_max_abs"] <= 1e-5
        assert seen["pynative_step_logits_max_abs"] <= 1e-5
        assert seen["static_step_logits_max_abs"] <= 1e-5
        assert all(seen["tokens_equal_one_process"].values()), seen["tokens_equal_one_process"]
        assert seen["tokens"] == two_ranks[0]["cases"][case]["tokens"]
        # the projections are halved on each rank; the embeddings and norms are not (unless tied to the lm_head)
        assert seen["memory_bytes"] < 0.75 * seen["one_process_memory_bytes"]


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_bad_input_is_refused_on_every_rank_before_any_weight_is_read(two_ranks, name):
    for report in two_ranks:
        message = report["errors"][name]
        assert message is not None and message.startswith("ValueError"), message
        assert EXPECTED_ERRORS[name] in message
        assert "\n" not in message


@pytest.mark.slow
def test_smollm2_on_three_ranks_matches_one_process(smollm2_dir, tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    questions = ["What is the capital of France?", "Name a colour.", "Write one sentence about the sea and the sky."]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in questions]  # fmt: skip
    job = {"cases": {"smollm2": smollm2_dir}, "prompts": prompts, "max_new_tokens": 12, "reference_ranks": [0]}
    reports = run_worker(3, tmp_path, job)
    seen = reports[0]["cases"]["smollm2"]
    assert all(seen["tokens_equal_one_process"].values()), seen["tokens_equal_one_process"]
    # the split sums of o_proj/down_proj add in another order over 30 layers: 1.5e-4 measured on logits of ~20
    assert seen["prefill_logits_max_abs"] <= 5e-4
    for report in reports[1:]:
        assert report["cases"]["smollm2"]["tokens"] == seen["tokens"]
        assert report["cases"]["smollm2"]["memory_bytes"] == seen["memory_bytes"]
    assert seen["memory_bytes"] <= 0.5 * seen["one_process_memory_bytes"]
    assert "Paris" in tokenizer.decode(seen["tokens"]["static_alone"][0][len(prompts[0]) :])


@pytest.mark.slow
def test_batch_job_with_tensor_parallel_2_equals_one_process_and_resumes(smollm2_dir, tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    model_dir = tmp_path / "model"
    config = transformers.LlamaConfig(**{**SHARDABLE, "vocab_size": len(tokenizer), "bos_token_id": 1, "eos_token_id": 2})
    transformers.set_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    prompts = ["The capital of France is", "Hi", "Once upon a time", "Numbers: 1, 2, 3,", "Water boils at", "A"]
    lines = [json.dumps({"id": f"r{i}", "prompt": p}) for i, p in enumerate(prompts)] + ["not json"]
    input_path = tmp_path / "in.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    common = ["--model", model_dir, "--input", input_path, "--max_new_tokens", "8", "--max_batch_size", "3"]
    from mindone.transformers.batch.cli import main

    single = tmp_path / "single.jsonl"
    assert main(list(map(str, common + ["--output", single]))) == 0
    output = tmp_path / "tp.jsonl"
    finished = read_rows(str(single))
    with open(output, "w") as f:  # a killed earlier run: two rows done and a torn third
        f.write("".join(json.dumps(row) + "\n" for row in finished[:2]) + json.dumps(finished[2])[:20])
    script = os.path.join(REPO, "mindone", "transformers", "batch", "__main__.py")
    result = run_msrun(2, tmp_path / "logs", script, *common, "--output", output, "--tensor_parallel", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:] + worker_logs(tmp_path / "logs")
    assert output.read_bytes() == single.read_bytes()
    assert "rows ok 4, failed 1, skipped 2" in worker_logs(tmp_path / "logs")


def test_tp_plan_outside_msrun_says_how_to_start_it(tmp_path, monkeypatch):
    for name in ("MS_ROLE", "RANK_SIZE", "MS_SCHED_HOST", "MS_WORKER_NUM"):
        monkeypatch.delenv(name, raising=False)
    path = save_config_with_bad_weights(tmp_path / "m", "llama")
    with pytest.raises(ValueError, match="needs one process per rank started by msrun, e.g. `msrun --worker_num=2"):
        AutoModelForCausalLM.from_pretrained(path, tp_plan="auto")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tp_size": 2}, "tp_size is set but tp_plan is not; pass tp_plan='auto'"),
        ({"tp_plan": "colwise"}, "tp_plan='colwise' is not supported; pass tp_plan='auto'"),
        ({"tp_plan": "auto", "tp_size": 0}, "tp_size=0 must be a positive integer"),
        ({"tp_plan": "auto", "quantization_config": QuantoConfig(weights="int8")}, "does not shard quantized weights yet"),
    ],
)
def test_tensor_parallel_arguments_are_checked_first(tmp_path, kwargs, message):
    path = save_config_with_bad_weights(tmp_path / "m", "llama")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AutoModelForCausalLM.from_pretrained(path, **kwargs)


def test_tensor_parallel_refuses_gguf_files(smollm2_gguf):
    with pytest.raises(ValueError, match="tp_plan does not shard GGUF files yet; convert the file to safetensors"):
        AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm2_gguf), gguf_file=smollm2_gguf, tp_plan="auto")


def test_slices_read_from_safetensors_equal_slices_of_the_whole_tensor(tmp_path):
    from mindone.transformers.safetensors_io import iter_safetensors, write_safetensors

    arrays = {"rows": np.arange(24, dtype=np.float32).reshape(6, 4), "bf16": np.linspace(-2, 2, 30, dtype=np.float32).reshape(5, 6)}
    path = str(tmp_path / "t.safetensors")
    write_safetensors(path, arrays, bf16_names={"bf16"})
    whole = dict(iter_safetensors(path))
    parts = {"rows": (0, 2, 4), "bf16": (1, 3, 6)}
    sliced = dict(iter_safetensors(path, parts.get))
    np.testing.assert_array_equal(sliced["rows"], whole["rows"][2:4])
    np.testing.assert_array_equal(sliced["bf16"], whole["bf16"][:, 3:6])
    with pytest.raises(OSError, match=r"has no slice \[4:8\] on axis 1"):
        dict(iter_safetensors(path, {"rows": (1, 4, 8)}.get))
    shutil.rmtree(tmp_path)
