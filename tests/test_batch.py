"""The JSONL batch job: rows and error rows, batch results equal to generating each row alone, finish reasons,
resuming after torn writes and real kill -9s, sharding by rank, and fail-fast errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import transformers
from helpers import REPO, TINY, dequantized_twin, run_msrun

import mindspore as ms
from mindone.transformers import AutoModelForCausalLM
from mindone.transformers.batch.cli import main
from mindone.transformers.batch.store import part_path

PROMPTS = ["The capital of France is", "Once upon a time, in a land far away, there lived", "Water boils at",
           "List three colours:", "A long prompt " + "about many different things, " * 6, "Hi", "Numbers: 1, 2, 3,",
           "The quick brown fox"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smollm2_dir):
    """A tiny random Llama that speaks SmolLM2's tokenizer (real text in, deterministic tokens out)."""
    directory = tmp_path_factory.mktemp("tiny_batch")
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    config = transformers.LlamaConfig(**{**TINY, "vocab_size": len(tokenizer), "bos_token_id": 1, "eos_token_id": 2})
    transformers.set_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), transformers.AutoTokenizer.from_pretrained(tiny_model_dir)


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def run_job(model_dir, input_path, output_path, *extra):
    return main(["--model", model_dir, "--input", input_path, "--output", output_path, "--max_new_tokens", "8",
                 "--max_batch_size", "3", *extra])  # fmt: skip


def prompt_rows(n=len(PROMPTS)):
    return [{"id": f"row-{i}", "prompt": PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS))} for i in range(n)]


def generate_alone(model, tokenizer, prompt, mode, chat=False, **options):
    ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
    options = {"max_new_tokens": 8, **options, **({"cache_implementation": "static"} if mode == "graph" else {})}
    output = model.generate(ms.Tensor(np.array([ids])), **options)
    return output.asnumpy()[0, len(ids) :].tolist()


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_batched_rows_equal_generating_each_alone(tiny_model_dir, model_and_tokenizer, tmp_path, mode):
    rows = prompt_rows() + [{"id": "chat", "messages": [{"role": "user", "content": "What is 2+2?"}]},
                            {"id": "short", "prompt": "Hello there", "generation": {"max_new_tokens": 3}}]  # fmt: skip
    output = str(tmp_path / "out.jsonl")
    assert run_job(tiny_model_dir, write_jsonl(tmp_path / "in.jsonl", rows), output, "--mode", mode) == 0
    results = read_jsonl(output)
    assert [r["id"] for r in results] == [row["id"] for row in rows]  # one row per id, in input order
    model, tokenizer = model_and_tokenizer
    chat_text = tokenizer.apply_chat_template(rows[-2]["messages"], tokenize=False, add_generation_prompt=True)
    for row, result in zip(rows, results):
        prompt = row.get("prompt", chat_text)
        expected = generate_alone(model, tokenizer, prompt, mode, "messages" in row, **row.get("generation", {}))
        assert result["token_ids"] == expected and result["finish_reason"] == "length"
        assert result["text"] == tokenizer.decode(expected, skip_special_tokens=True)
        assert result["generated_tokens"] == len(expected)
        assert result["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens="messages" not in row)["input_ids"])


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_finish_reasons(tiny_model_dir, model_and_tokenizer, tmp_path, mode):
    """Rows that stop at an eos token, a stop string or their own max_new_tokens, in one job (in graph mode they
    share the slots of one continuous batch)."""
    model, tokenizer = model_and_tokenizer
    prompt = PROMPTS[0]
    free_run = generate_alone(model, tokenizer, prompt, "pynative")
    stop = tokenizer.decode(free_run[:3])[-3:]
    rows = [{"id": "eos", "prompt": prompt, "generation": {"eos_token_id": free_run[4]}},
            {"id": "stop", "prompt": prompt, "generation": {"stop_strings": [stop]}},
            {"id": "length", "prompt": prompt}, {"id": "short", "prompt": prompt, "generation": {"max_new_tokens": 2}},
            {"id": "long", "prompt": prompt, "generation": {"max_new_tokens": 11}}]  # fmt: skip
    output = str(tmp_path / "out.jsonl")
    run_job(tiny_model_dir, write_jsonl(tmp_path / "in.jsonl", rows), output, "--mode", mode, "--max_batch_size", "2")
    by_id = {r["id"]: r for r in read_jsonl(output)}
    assert (by_id["short"]["finish_reason"], by_id["short"]["token_ids"]) == ("length", free_run[:2])
    long_run = generate_alone(model, tokenizer, prompt, "pynative", max_new_tokens=11)
    assert (by_id["long"]["finish_reason"], by_id["long"]["token_ids"]) == ("length", long_run)
    first_eos = free_run.index(free_run[4]) + 1
    assert (by_id["eos"]["finish_reason"], by_id["eos"]["token_ids"]) == ("eos", free_run[:first_eos])
    stop_at = next(i for i in range(1, 9) if tokenizer.decode(free_run[:i]).endswith(stop))
    assert (by_id["stop"]["finish_reason"], by_id["stop"]["token_ids"]) == ("stop_string", free_run[:stop_at])
    assert (by_id["length"]["finish_reason"], by_id["length"]["token_ids"]) == ("length", free_run)


def test_bad_rows_become_error_rows(tiny_model_dir, tmp_path):
    rows = ['{"id": "broken", "prompt": ', {"id": "a", "prompt": "fine"}, {"id": "a", "prompt": "again"},
            {"id": "no prompt"}, {"prompt": "no id"}, {"id": "opt", "prompt": "x", "generation": {"nucleus": 0.5}},
            {"id": "many", "prompt": "x", "generation": {"num_return_sequences": 2}},
            {"id": "long", "prompt": "word " * 200}, {"id": "bad value", "prompt": "x", "generation": {"do_sample": True, "top_p": -0.5}},
            {"id": "extra", "prompt": "x", "colour": "red"}, [1, 2]]  # fmt: skip
    output = str(tmp_path / "out.jsonl")
    assert run_job(tiny_model_dir, write_jsonl(tmp_path / "in.jsonl", rows), output, "--mode", "pynative") == 0
    results = read_jsonl(output)
    assert [r["line"] for r in results] == list(range(1, len(rows) + 1))
    errors = {r["line"]: r.get("error", "") for r in results}
    assert "invalid JSON" in errors[1] and errors[2] == ""
    assert "duplicate id" in errors[3] and results[2]["duplicate_of_line"] == 2
    assert "exactly one of prompt" in errors[4] and "missing id" in errors[5]
    assert "unknown generation option(s) nucleus" in errors[6] and "num_return_sequences" in errors[7]
    assert "exceeds the model's 128 positions" in errors[8] and "top_p" in errors[9]
    assert "unknown field(s) colour" in errors[10] and "JSON object" in errors[11]
    os.remove(output)
    assert run_job(tiny_model_dir, str(tmp_path / "in.jsonl"), output, "--mode", "pynative", "--fail_on_error") == 1


def test_resume_repairs_a_torn_line_and_skips_done_rows(tiny_model_dir, tmp_path):
    input_path = write_jsonl(tmp_path / "in.jsonl", prompt_rows(12) + ["{oops"])
    complete = str(tmp_path / "complete.jsonl")
    run_job(tiny_model_dir, input_path, complete, "--mode", "pynative")
    lines = open(complete).read().splitlines(keepends=True)
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text("".join(lines[3:7]) + lines[9][:25])  # four rows done, then a write cut by a kill
    run_job(tiny_model_dir, input_path, str(resumed), "--mode", "pynative")
    assert resumed.read_text() == open(complete).read()


def test_fails_fast_without_output(tiny_model_dir, tmp_path):
    input_path = write_jsonl(tmp_path / "in.jsonl", prompt_rows(2))
    output = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit, match="cannot load model"):
        run_job(str(tmp_path / "no_model"), input_path, str(output))
    with pytest.raises(SystemExit, match="cannot read --input"):
        run_job(tiny_model_dir, str(tmp_path / "missing.jsonl"), str(output))
    with pytest.raises(SystemExit, match="output directory .* does not exist"):
        run_job(tiny_model_dir, input_path, str(tmp_path / "nowhere" / "out.jsonl"))
    assert not output.exists()
    output.write_text('{"not": "ours"}\n')
    with pytest.raises(SystemExit, match="not a row written by a batch job"):
        run_job(tiny_model_dir, input_path, str(output))


def test_rank_shards_merge_to_the_single_process_output(tiny_model_dir, tmp_path, monkeypatch):
    input_path = write_jsonl(tmp_path / "in.jsonl", prompt_rows(10))
    single = str(tmp_path / "single.jsonl")
    run_job(tiny_model_dir, input_path, single, "--mode", "pynative")
    sharded = str(tmp_path / "sharded.jsonl")
    monkeypatch.setenv("RANK_SIZE", "2")
    for rank in (1, 0):  # rank 0 merges once every rank has marked its part done
        monkeypatch.setenv("RANK_ID", str(rank))
        run_job(tiny_model_dir, input_path, sharded, "--mode", "pynative")
    assert [r["line"] for r in read_jsonl(part_path(sharded, 1, 2))] == [2, 4, 6, 8, 10]
    assert open(sharded).read() == open(single).read()
    os.remove(sharded)
    assert main(["--output", sharded, "--merge"]) == 0 and open(sharded).read() == open(single).read()
    part = part_path(sharded, 1, 2)
    os.remove(part + ".done")
    with pytest.raises(SystemExit, match="1 shard\\(s\\) not finished"):
        main(["--output", sharded, "--merge"])
    lines = open(part).read().splitlines(keepends=True)
    open(part, "w").write("".join(lines[:2]) + lines[2][:10])  # rank 1 killed mid-write: resumes its own shard
    for rank in (1, 0):
        monkeypatch.setenv("RANK_ID", str(rank))
        run_job(tiny_model_dir, input_path, sharded, "--mode", "pynative")
    assert open(sharded).read() == open(single).read()


def _job_command(model_dir, input_path, output_path):
    return [sys.executable, "-m", "mindone.transformers.batch", "--model", model_dir, "--input", input_path,
            "--output", output_path, "--max_new_tokens", "8", "--max_batch_size", "2"]  # fmt: skip


def _line_count(path):
    return open(path).read().count("\n") if os.path.exists(path) else 0


@pytest.mark.slow
def test_kill_9_at_several_points_then_resume(tiny_model_dir, tmp_path):
    input_path = write_jsonl(tmp_path / "in.jsonl", prompt_rows(30) + ["not json"])
    reference = str(tmp_path / "reference.jsonl")
    run_job(tiny_model_dir, input_path, reference, "--max_batch_size", "2")
    output = str(tmp_path / "out.jsonl")
    env = {**os.environ, "PYTHONPATH": REPO}
    kills = 0
    for lines_before_kill in (None, 2, 9, 20):  # None: killed 3 s in, while it imports and loads
        process = subprocess.Popen(_job_command(tiny_model_dir, input_path, output), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        if lines_before_kill is None:
            time.sleep(3)
        deadline = time.monotonic() + 300
        while lines_before_kill is not None and _line_count(output) <= lines_before_kill and process.poll() is None:
            assert time.monotonic() < deadline, "the job wrote nothing for 5 minutes"
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 3, "the job finished before it could be killed; give it more rows"
    assert _line_count(output) < 31
    subprocess.run(_job_command(tiny_model_dir, input_path, output), env=env, check=True, capture_output=True)
    assert open(output).read() == open(reference).read()


def test_a_second_job_loads_its_graphs_from_the_compile_cache(tiny_model_dir, tmp_path):
    """Separate processes over one cache directory: the first compiles the decode graph and stores it, the second
    loads it (same rows); --no_compile_cache compiles and stores nothing."""
    input_path = write_jsonl(tmp_path / "in.jsonl", prompt_rows(5))
    env = {**os.environ, "PYTHONPATH": REPO, "MINDONE_CACHE": str(tmp_path / "cache"), "MINDONE_COMPILE_CACHE": "1"}
    for name in ("cache", "cache-off"):
        _seed_kernel_library(tmp_path / name)
    summaries, outputs = [], []
    for run, extra in enumerate([[], [], ["--no_compile_cache"]]):
        outputs.append(str(tmp_path / f"out{run}.jsonl"))
        if run == 2:
            env["MINDONE_CACHE"] = str(tmp_path / "cache-off")
        done = subprocess.run(_job_command(tiny_model_dir, input_path, outputs[-1]) + extra, env=env, check=True,
                              capture_output=True, text=True)  # fmt: skip
        summaries.append(done.stderr.strip().splitlines()[-1])
    assert "1 graph compiled, 0 loaded" in summaries[0]
    assert "0 graphs compiled, 1 loaded" in summaries[1]
    assert "1 graph compiled, 0 loaded" in summaries[2] and not (tmp_path / "cache-off" / "graphs").exists()
    assert open(outputs[0]).read() == open(outputs[1]).read() == open(outputs[2]).read()


def _seed_kernel_library(root):
    """A fresh cache directory holding this machine's built kernel library, so that a job does not build it again."""
    import shutil

    from mindone.transformers.kernels import builder, library

    built = library()
    if built is None:
        return
    relative = os.path.relpath(built, builder.cache_root())
    os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
    for path in [built] + [built + suffix for suffix in (".sha256",) if os.path.exists(built + suffix)]:
        shutil.copy2(path, os.path.join(root, os.path.relpath(path, builder.cache_root())))


@pytest.mark.slow
def test_msrun_two_workers_merge_to_the_single_process_output(tiny_model_dir, tmp_path):
    input_path = write_jsonl(tmp_path / "in.jsonl", prompt_rows(10))
    single = str(tmp_path / "single.jsonl")
    run_job(tiny_model_dir, input_path, single, "--mode", "pynative")
    output = str(tmp_path / "msrun.jsonl")
    script = os.path.join(REPO, "mindone", "transformers", "batch", "__main__.py")
    result = run_msrun(2, tmp_path / "logs", script, "--model", tiny_model_dir, "--input", input_path, "--output", output,
                       "--max_new_tokens", "8", "--max_batch_size", "3", "--mode", "pynative", timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert [r["line"] for r in read_jsonl(part_path(output, 1, 2))] == [2, 4, 6, 8, 10]
    assert open(output).read() == open(single).read()


def test_graph_mode_falls_back_for_longrope(smollm2_dir, tmp_path, capsys):
    """LongRoPE frequencies follow the sequence length on the host, which compiled steps cannot do: graph mode says
    so and runs PyNative, with the same rows as --mode pynative."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    rope = {"type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3], "long_factor": [2.0, 2.5, 3.0, 4.0]}
    config = transformers.Phi3Config(**{**TINY, "vocab_size": len(tokenizer), "original_max_position_embeddings": 16,
                                        "rope_scaling": rope})  # fmt: skip
    transformers.set_seed(0)
    model_dir = tmp_path / "phi3"
    transformers.Phi3ForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    input_path = write_jsonl(tmp_path / "in.jsonl", prompt_rows(4))
    outputs = {mode: str(tmp_path / f"{mode}.jsonl") for mode in ("graph", "pynative")}
    for mode, output in outputs.items():
        assert run_job(str(model_dir), input_path, output, "--mode", mode, "--max_new_tokens", "12") == 0
    assert "longrope rope scaling recomputes frequencies on the host" in capsys.readouterr().err
    rows = read_jsonl(outputs["graph"])
    assert rows == read_jsonl(outputs["pynative"]) and all("error" not in row for row in rows)


@pytest.mark.slow
def test_a_gguf_kept_quantized_gives_the_dequantized_rows(smollm2_gguf, tmp_path, capsys):
    """--keep_quantized runs SmolLM2's GGUF with its Q4_1 / Q8_0 weights: the rows of the same file dequantized."""
    directory, name = os.path.split(smollm2_gguf)
    input_path = write_jsonl(tmp_path / "in.jsonl", prompt_rows(5))
    outputs = {flag: str(tmp_path / f"out{len(flag)}.jsonl") for flag in ((), ("--keep_quantized",))}
    for flags, output in outputs.items():
        assert run_job(directory, input_path, output, "--gguf_file", name, "--max_new_tokens", "12", *flags) == 0
    rows = [read_jsonl(path) for path in outputs.values()]
    assert rows[0] == rows[1] and all("error" not in row for row in rows[0])
    with pytest.raises(SystemExit):
        run_job(directory, input_path, str(tmp_path / "bad.jsonl"), "--keep_quantized")
    assert "pass --gguf_file as well" in capsys.readouterr().err


def test_quantization_flag_gives_the_rows_of_the_dequantized_weights(smollm2_dir, tmp_path, capsys):
    """--quantization int4 quantizes the float checkpoint while loading: the rows of a float checkpoint holding
    the same weights dequantized. With --gguf_file it is refused (the file is quantized already)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    config = transformers.LlamaConfig(**{**TINY, "intermediate_size": 64, "vocab_size": len(tokenizer),
                                         "bos_token_id": 1, "eos_token_id": 2})  # fmt: skip
    transformers.set_seed(0)
    source, twin_dir = tmp_path / "float", tmp_path / "twin"
    transformers.LlamaForCausalLM(config).save_pretrained(source)
    quantized = AutoModelForCausalLM.from_pretrained(str(source), load_in_4bit=True)
    dequantized_twin(str(source), quantized).save_pretrained(twin_dir)
    for directory in (source, twin_dir):
        tokenizer.save_pretrained(directory)
    input_path = write_jsonl(tmp_path / "in.jsonl", prompt_rows(5))
    outputs = [str(tmp_path / "quantized.jsonl"), str(tmp_path / "twin.jsonl")]
    assert run_job(str(source), input_path, outputs[0], "--quantization", "int4") == 0
    assert run_job(str(twin_dir), input_path, outputs[1]) == 0
    rows = [read_jsonl(path) for path in outputs]
    assert rows[0] == rows[1] and all("error" not in row for row in rows[0])
    with pytest.raises(SystemExit):
        run_job(str(source), input_path, str(tmp_path / "bad.jsonl"), "--gguf_file", "x.gguf", "--quantization", "int8")
    assert "a GGUF file is quantized already" in capsys.readouterr().err
