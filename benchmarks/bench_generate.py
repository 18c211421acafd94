"""Tokens per second of this project and of transformers + PyTorch, measured in one run on the same weights.

    python benchmarks/bench_generate.py --model models/SmolLM2-135M-Instruct --batch_sizes 1 4

Greedy decoding, fixed prompt length, `min_new_tokens = max_new_tokens` so every run generates the same count.
Prints prefill latency, decode tok/s and the ratio to PyTorch. Numbers on shared machines are noisy: compare
only figures from the same run."""

import argparse
import os
import platform
import time

import numpy as np

os.environ.setdefault("GLOG_v", "3")


def timed(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_mindspore(model_dir, ids, new_tokens, repeats):
    import mindspore as ms

    from mindone.transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    input_ids = ms.Tensor(ids)
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generate(input_ids, max_new_tokens=2, **kwargs)  # warm-up
    prefill = timed(lambda: model.generate(input_ids, max_new_tokens=1, **kwargs), repeats)
    total = timed(lambda: model.generate(input_ids, max_new_tokens=new_tokens, **kwargs), repeats)
    return prefill, total


def bench_torch(model_dir, ids, new_tokens, repeats):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    input_ids = torch.tensor(ids)
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        model.generate(input_ids, max_new_tokens=2, **kwargs)
        prefill = timed(lambda: model.generate(input_ids, max_new_tokens=1, **kwargs), repeats)
        total = timed(lambda: model.generate(input_ids, max_new_tokens=new_tokens, **kwargs), repeats)
    return prefill, total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--prompt_length", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import mindspore
    import torch
    import transformers

    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {os.cpu_count()} cores, mindspore "
          f"{mindspore.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")  # fmt: skip
    print("| batch | framework | prefill ms | decode tok/s | ratio to PyTorch |")
    print("|---|---|---|---|---|")
    for batch in args.batch_sizes:
        ids = np.random.default_rng(0).integers(100, 40000, size=(batch, args.prompt_length)).astype(np.int64)
        results = {
            "PyTorch eager": bench_torch(args.model, ids, args.new_tokens, args.repeats),
            "mindone PyNative": bench_mindspore(args.model, ids, args.new_tokens, args.repeats),
        }
        torch_rate = None
        for name, (prefill, total) in results.items():
            rate = batch * (args.new_tokens - 1) / max(total - prefill, 1e-9)
            torch_rate = torch_rate or rate
            print(f"| {batch} | {name} | {prefill * 1000:.0f} | {rate:.1f} | {rate / torch_rate:.2f} |")


if __name__ == "__main__":
    main()
