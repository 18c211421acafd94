"""Decode speed of this project and of transformers + PyTorch, measured in one run on the same weights and prompts.

    python benchmarks/bench_generate.py --model models/SmolLM2-135M-Instruct --batch_sizes 1 4 8

Each (framework, batch) runs in its own subprocess so peak RSS is its own; all of them run back to back in this one
invocation. Greedy decoding of `--new_tokens` tokens after a `--prompt_length`-token prompt, eos disabled so every
run generates the same count. Prints prefill ms, decode tok/s, first-call compile seconds, peak RSS, the ratio to
PyTorch eager, and the memory-bandwidth ceiling measured on the spot. Shared machines are noisy: compare only
figures from the same run."""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

FRAMEWORKS = ("pytorch", "mindone-pynative", "mindone-graph")


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _measure(generate, new_tokens: int, repeats: int) -> dict:
    start = time.perf_counter()
    generate(1)  # first call: compiles the prefill graph on the static path
    generate(2)  # ... and the decode graph
    compile_seconds = time.perf_counter() - start
    prefill = _best(lambda: generate(1), repeats)
    total = _best(lambda: generate(new_tokens), repeats)
    return {"prefill_ms": prefill * 1000, "decode_s": total - prefill, "compile_s": compile_seconds}


def worker(framework: str, model_dir: str, batch: int, prompt_length: int, new_tokens: int, repeats: int) -> dict:
    ids = np.random.default_rng(0).integers(100, 40000, size=(batch, prompt_length)).astype(np.int64)
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    if framework == "pytorch":
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        input_ids = torch.tensor(ids)

        def generate(n):
            with torch.no_grad():
                model.generate(input_ids, max_new_tokens=n, min_new_tokens=n, **kwargs)

    else:
        import mindspore as ms

        from mindone.transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        input_ids = ms.Tensor(ids)
        if framework == "mindone-graph":
            kwargs["cache_implementation"] = "static"

        def generate(n):
            model.generate(input_ids, max_new_tokens=n, min_new_tokens=n, **kwargs)

    result = _measure(generate, new_tokens, repeats)
    result["decode_tok_s"] = batch * (new_tokens - 1) / result.pop("decode_s")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def bandwidth_ceiling(weight_bytes: int) -> tuple:
    """Read bandwidth of this machine now (numpy sum over 512 MB) and the tokens/s it allows at batch 1."""
    data = np.ones(128 * 1024 * 1024, np.float32)
    seconds = _best(lambda: data.sum(), 5)
    bandwidth = data.nbytes / seconds
    return bandwidth / 1e9, bandwidth / weight_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--prompt_length", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, batch = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(framework, args.model, batch, args.prompt_length, args.new_tokens, args.repeats)))
        return

    import mindspore
    import torch
    import transformers

    weight_bytes = os.path.getsize(os.path.join(args.model, "model.safetensors"))
    gbps, ceiling = bandwidth_ceiling(weight_bytes)
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} cores, mindspore {mindspore.__version__}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; prompt {args.prompt_length}, "
          f"{args.new_tokens} new tokens, greedy, fp32")  # fmt: skip
    print(f"# read bandwidth {gbps:.1f} GB/s; {weight_bytes / 1e6:.0f} MB of weights per token -> "
          f"batch-1 ceiling {ceiling:.1f} tok/s")  # fmt: skip
    print("| batch | framework | prefill ms | decode tok/s | vs PyTorch | % of ceiling | compile s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        reference = None
        for framework in args.frameworks:
            command = [sys.executable, __file__, "--model", args.model, "--prompt_length", str(args.prompt_length),
                       "--new_tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                       "--worker", framework, str(batch)]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            r = json.loads(output.strip().splitlines()[-1])
            reference = reference or (r["decode_tok_s"] if framework == "pytorch" else None)
            ratio = f"{r['decode_tok_s'] / reference:.2f}" if reference else "-"
            share = f"{100 * r['decode_tok_s'] / batch / ceiling:.0f}%" if batch == 1 else "-"
            print(f"| {batch} | {framework} | {r['prefill_ms']:.0f} | {r['decode_tok_s']:.1f} | {ratio} | {share} | "
                  f"{r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
