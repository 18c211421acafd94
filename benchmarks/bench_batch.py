"""Throughput of the JSONL batch job against generate() one prompt at a time and against transformers + PyTorch
batched generate, in one run on the same prompts and weights.

    python benchmarks/bench_batch.py --model models/SmolLM2-135M-Instruct --rows 200

Prompts are `--rows` chat questions of mixed length (5 to ~120 tokens after the template), greedy, up to
`--max_new_tokens` tokens each (rows stop at eos as in real jobs, so every framework is credited with the tokens it
really generated). Each part runs in its own subprocess, back to back:
  batch-job     python -m mindone.transformers.batch, graph mode, --max_batch_size
  one-at-a-time generate() per prompt on the same compiled static path (batch 1)
  pytorch       transformers + PyTorch eager, the same length-sorted batches, left padded
Prints rows/s, generated tok/s and wall time (including model load and compile) and the ratios. Shared machines are
noisy: compare only figures from the same run."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TOPICS = ["the sea", "volcanoes", "the history of bread", "how bees communicate", "prime numbers", "the moon",
          "why the sky is blue", "photosynthesis", "a good night's sleep", "learning a language", "rain", "chess"]  # fmt: skip
DETAIL = " Please consider where it comes from, what it is made of, who studies it, and why people care about it."


def make_rows(count: int) -> list:
    rows = []
    for i in range(count):
        question = f"Tell me one fact about {TOPICS[i % len(TOPICS)]}." + DETAIL * ((i % 7) ** 2 // 4)
        rows.append({"id": i, "messages": [{"role": "user", "content": question}]})
    return rows


def encoded_prompts(model_dir: str, rows: list) -> list:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) for r in rows]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts], tokenizer


def part_batch_job(args, input_path) -> dict:
    output = os.path.join(args.workdir, "out.jsonl")
    command = [sys.executable, "-m", "mindone.transformers.batch", "--model", args.model, "--input", input_path,
               "--output", output, "--max_new_tokens", str(args.max_new_tokens), "--max_batch_size",
               str(args.batch_size), "--mode", "graph"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in open(output)]
    return {"wall_s": wall, "rows": len(rows), "tokens": sum(r.get("generated_tokens", 0) for r in rows)}


def part_one_at_a_time(args, rows) -> dict:
    start = time.perf_counter()
    import mindspore as ms
    import numpy as np

    from mindone.transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model)
    prompts, tokenizer = encoded_prompts(args.model, rows)
    tokens = 0
    for ids in prompts:
        output = model.generate(ms.Tensor(np.array([ids], np.int64)), max_new_tokens=args.max_new_tokens,
                                cache_implementation="static", pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        tokens += _generated(output.asnumpy()[0, len(ids) :].tolist(), model.generation_config.eos_token_id)
    return {"wall_s": time.perf_counter() - start, "rows": len(prompts), "tokens": tokens}


def part_pytorch(args, rows) -> dict:
    start = time.perf_counter()
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    prompts, tokenizer = encoded_prompts(args.model, rows)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    tokens, pad = 0, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start_row in range(0, len(order), args.batch_size):
        batch = [prompts[i] for i in order[start_row : start_row + args.batch_size]]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            output = model.generate(ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=pad)  # fmt: skip
        tokens += sum(_generated(row[width:].tolist(), model.generation_config.eos_token_id) for row in output)
    return {"wall_s": time.perf_counter() - start, "rows": len(prompts), "tokens": tokens}


def _generated(ids: list, eos) -> int:
    eos = set(eos if isinstance(eos, list) else [eos])
    return next((i + 1 for i, token in enumerate(ids) if token in eos), len(ids))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--parts", nargs="+", default=["batch-job", "one-at-a-time", "pytorch"])
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = make_rows(args.rows)
    if args.part:  # child process: run one part, print its figures as JSON
        input_path = os.path.join(args.workdir, "in.jsonl")
        run = {"batch-job": lambda: part_batch_job(args, input_path), "one-at-a-time": lambda: part_one_at_a_time(args, rows),
               "pytorch": lambda: part_pytorch(args, rows)}[args.part]  # fmt: skip
        print(json.dumps(run()))
        return
    with tempfile.TemporaryDirectory() as workdir:
        with open(os.path.join(workdir, "in.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        results = {}
        for part in args.parts:
            child = [sys.executable, __file__, "--part", part, "--workdir", workdir, "--model", args.model, "--rows",
                     str(args.rows), "--max_new_tokens", str(args.max_new_tokens), "--batch_size", str(args.batch_size)]  # fmt: skip
            out = subprocess.run(child, check=True, capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"})
            results[part] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{part}: {results[part]}", file=sys.stderr)
    print(f"{args.rows} prompts, greedy, up to {args.max_new_tokens} new tokens, batch size {args.batch_size}")
    print(f"{'part':<15}{'wall s':>9}{'rows/s':>9}{'tok/s':>9}{'tokens':>8}")
    for part, r in results.items():
        print(f"{part:<15}{r['wall_s']:>9.1f}{r['rows'] / r['wall_s']:>9.2f}{r['tokens'] / r['wall_s']:>9.1f}{r['tokens']:>8}")
    if "batch-job" in results:
        job = results["batch-job"]
        for part in set(results) - {"batch-job"}:
            ratio = (job["rows"] / job["wall_s"]) / (results[part]["rows"] / results[part]["wall_s"])
            print(f"batch job vs {part}: {ratio:.2f}x rows/s")


if __name__ == "__main__":
    main()
