"""Weight-only quantization while loading a float checkpoint (QuantoConfig int8 / int4): perplexity on a page of
English, parameter memory and the peak RSS of the loading process, each setting in a process of its own.

    python benchmarks/bench_quantization.py                       # SmolLM2-135M (make model)
    python benchmarks/bench_quantization.py --gguf_file FILE.gguf  # any GGUF, converted to float32 first

Prints one table row per setting with the perplexity change and the footprint against float32, and the RSS of the
MindSpore runtime alone, against which loading is judged (issue 14: peak RSS while loading a quantized model stays
below the float32 model's size plus the runtime)."""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAGE = os.path.join(HERE, "data", "english_page.txt")
SETTINGS = {"float32": {}, "int8": {"load_in_8bit": True}, "int4": {"load_in_4bit": True}}


def perplexity(model, tokenizer, text: str) -> float:
    import mindspore as ms
    import numpy as np

    ids = tokenizer(text, return_tensors="np")["input_ids"]
    logits = model(input_ids=ms.Tensor(ids, ms.int32)).logits.asnumpy()[0, :-1].astype(np.float64)
    top = logits.max(-1)
    log_norm = np.log(np.exp(logits - top[:, None]).sum(-1)) + top
    return float(np.exp((log_norm - logits[np.arange(len(logits)), ids[0, 1:]]).mean()))


def worker(path: str, setting: str) -> dict:
    import mindspore as ms

    from mindone.transformers import AutoModelForCausalLM, AutoTokenizer

    ms.Tensor([1.0]) + 1  # the runtime up and running before measuring it
    runtime = _peak_rss_mb()
    model = AutoModelForCausalLM.from_pretrained(path, **SETTINGS[setting])
    loaded = _peak_rss_mb()
    with open(PAGE) as f:
        ppl = perplexity(model, AutoTokenizer.from_pretrained(path), f.read())
    return dict(setting=setting, runtime_mb=runtime, load_peak_mb=loaded, footprint_mb=model.get_memory_footprint() / 2**20,
                perplexity=ppl)  # fmt: skip


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: unlike getrusage's maxrss, not inherited from the parent)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run(path: str) -> list[dict]:
    rows = []
    for setting in SETTINGS:
        out = subprocess.run([sys.executable, __file__, "--worker", setting, "--model", path], check=True,
                             capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"})  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def report(rows: list[dict]) -> None:
    base = rows[0]
    print(f"runtime alone: {base['runtime_mb']:.0f} MB RSS; float32 parameters: {base['footprint_mb']:.0f} MB")
    print("| weights | perplexity | vs float32 | parameters MB | vs float32 | peak RSS after loading MB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['perplexity']:.3f} | {row['perplexity'] / base['perplexity'] - 1:+.2%} | "
              f"{row['footprint_mb']:.0f} | {row['footprint_mb'] / base['footprint_mb']:.2f}x | {row['load_peak_mb']:.0f} |")  # fmt: skip
    limit = base["footprint_mb"] + base["runtime_mb"]
    for row in rows[1:]:
        verdict = "below" if row["load_peak_mb"] < limit else "ABOVE"
        print(f"{row['setting']}: loading peaked at {row['load_peak_mb']:.0f} MB, {verdict} float32 size + runtime ({limit:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct"))
    parser.add_argument("--gguf_file", help="a GGUF file, converted to a float32 checkpoint first")
    parser.add_argument("--worker", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.worker)))
        return
    if args.gguf_file:
        from mindone.transformers.convert_gguf import convert

        with tempfile.TemporaryDirectory() as directory:
            report(run(convert(args.gguf_file, os.path.join(directory, "float32"))))
        return
    report(run(args.model))


if __name__ == "__main__":
    main()
