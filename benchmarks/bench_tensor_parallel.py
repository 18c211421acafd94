"""Tensor parallel on this machine: memory per rank and decode speed at tp = 1, 2, 3, measured in one run.

    python benchmarks/bench_tensor_parallel.py --model models/SmolLM2-135M-Instruct
    python benchmarks/bench_tensor_parallel.py --model models/SmolLM2-135M-Instruct --tp 1 3 --new_tokens 16

Two models: the real checkpoint at every tp that divides its counts (SmolLM2: 9 heads and 3 kv heads split 1 or 3
ways, not 2), and a random Llama of the same size whose counts split 1, 2 and 3 ways (12 heads of 48, 6 kv heads,
intermediate 1536, vocabulary 49152, 30 layers, tied embeddings; written to --workdir, no download). tp=1 is one
plain process without tp_plan; tp=N is msrun with N workers and from_pretrained(tp_plan="auto").

Each run loads the model, generates greedily over the compiled static cache once to compile, then times
`--repeats` generations of `--new_tokens` tokens from one chat prompt (batch 1) and reports tokens/s, the model's
parameter bytes on a rank (get_memory_footprint) and the rank's peak RSS. Under msrun every rank of a step waits for
the slowest one at each all-reduce (two per layer and one gather per step); the ranks share this machine's cores,
so expect memory, not speed, to improve. Figures of one run only are comparable: the machine is shared."""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(REPO, "models", "SmolLM2-135M-Instruct"))
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the random same-size Llama is written (default: a temp dir)")
    parser.add_argument("--job_json", default=None, help=argparse.SUPPRESS)  # internal: run one measurement
    return parser.parse_args(argv)


# ---------------------------------------------------------------- one measurement (a rank, or the single process)
def measure(args) -> None:
    import mindspore as ms
    import numpy as np

    ms.set_device("CPU")
    from mindone.transformers import AutoModelForCausalLM, AutoTokenizer

    job = json.loads(args.job_json)
    rank = 0
    parallel = {}
    if job["tp"] > 1:
        from mindspore.communication import get_rank, init

        init()
        rank, parallel = get_rank(), {"tp_plan": "auto"}
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(job["model"], **parallel)
    load_seconds = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}], add_generation_prompt=True)
    ids = ms.Tensor(np.array([prompt], np.int32))
    options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   cache_implementation="static")  # fmt: skip
    model.generate(input_ids=ids, **options)  # compiles
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.generate(input_ids=ids, **options).asnumpy()
        seconds.append(time.perf_counter() - start)
    if rank == 0:
        result = {"tokens_per_second": args.new_tokens / min(seconds), "load_seconds": load_seconds,
                  "parameter_bytes": model.get_memory_footprint(),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # fmt: skip
        with open(job["output"], "w") as f:
            json.dump(result, f)


# ---------------------------------------------------------------- the runs
def same_size_llama(directory: str) -> str:
    """A random Llama of SmolLM2-135M's size whose heads, kv heads, intermediate size and vocabulary divide by 2 and 3."""
    if os.path.exists(os.path.join(directory, "model.safetensors")):
        return directory
    import mindspore as ms
    from transformers import LlamaConfig

    from mindone.transformers import LlamaForCausalLM

    ms.set_device("CPU")
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=12, num_key_value_heads=6, tie_word_embeddings=True,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)  # fmt: skip
    ms.set_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def run(args, model: str, tp: int, workdir: str) -> dict:
    output = os.path.join(workdir, f"result-{os.path.basename(model)}-{tp}.json")
    job = json.dumps({"model": model, "tp": tp, "output": output})
    script = [os.path.abspath(__file__), "--model", args.model, "--new_tokens", str(args.new_tokens),
              "--repeats", str(args.repeats), "--job_json", job]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO, "GLOG_v": "3", "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    if tp == 1:
        command = [sys.executable] + script
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
        command = [msrun, f"--worker_num={tp}", f"--local_worker_num={tp}", f"--master_port={port}",
                   f"--log_dir={os.path.join(workdir, f'logs-{tp}')}", "--join=True"] + script  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.exists(output):
        raise SystemExit(f"tp={tp} on {model} failed:\n{done.stderr[-2000:]}")
    with open(output) as f:
        return json.load(f)


def divides(model: str, tp: int) -> bool:
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    counts = [config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"],
              config["intermediate_size"], config["vocab_size"]]  # fmt: skip
    return all(count % tp == 0 for count in counts)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.job_json:
        return measure(args)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_tp_")
    os.makedirs(workdir, exist_ok=True)
    models = {"real": os.path.abspath(args.model), "same-size Llama": same_size_llama(os.path.join(workdir, "llama"))}
    print(f"{'model':<18} {'tp':>3} {'tok/s':>8} {'vs tp=1':>8} {'params/rank MB':>15} {'vs tp=1':>8} {'peak RSS MB':>12} {'load s':>7}")
    for label, model in models.items():
        base = None
        for tp in args.tp:
            if not divides(model, tp):
                print(f"{label:<18} {tp:>3}   (its heads / kv heads / intermediate / vocabulary do not split {tp} ways)")
                continue
            result = run(args, model, tp, workdir)
            base = base or (result if tp == 1 else None)
            speed = f"{result['tokens_per_second'] / base['tokens_per_second']:.2f}x" if base else "-"
            memory = f"{result['parameter_bytes'] / base['parameter_bytes']:.2f}x" if base else "-"
            print(f"{label:<18} {tp:>3} {result['tokens_per_second']:>8.1f} {speed:>8} "
                  f"{result['parameter_bytes'] / 2**20:>15.1f} {memory:>8} {result['peak_rss_bytes'] / 2**20:>12.0f} "
                  f"{result['load_seconds']:>7.1f}", flush=True)  # fmt: skip
    print(f"{args.new_tokens} new tokens, batch 1, greedy over the compiled static cache; best of {args.repeats}; "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
