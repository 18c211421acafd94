"""The JSONL batch job against transformers + PyTorch batched generate() on a mixed set of chat prompts, each part
timed as a whole process (python start, imports, model load, compiles, generation, writing the output).

    python benchmarks/bench_batch.py --model models/SmolLM2-135M-Instruct                 # 96 rows, 48 new tokens
    python benchmarks/bench_batch.py --rows 16 --max_new_tokens 8 --parts pytorch,job-cold  # a quick check
    python benchmarks/bench_batch.py --workdir /tmp/bb --parts pytorch     # PyTorch once (it is the slow part) ...
    python benchmarks/bench_batch.py --workdir /tmp/bb --parts job-cold,job-warm,job-half  # ... then the job, again
                         # and again: with --workdir, PyTorch's figures and tokens from an earlier run on the same
                         # rows and options are reused (the table says so); same-run figures are the fair comparison

Prompts: `--rows` chat `messages` rows built deterministically (nothing generated is stored in the repo): half are
short questions (~30-60 tokens after the chat template, whose default system prompt alone is ~30), the rest are
"pasted documents" of ~100-800 tokens (an instruction, a slice of benchmarks/data/english_page.txt and
benchmarks/data/documents.txt, sometimes a question after it), shuffled with a fixed seed so long and short rows
interleave. Greedy, up to `--max_new_tokens` new tokens, a row ends at its first eos (kept, as the job keeps it).

Parts (`--parts`, comma separated; each runs in its own subprocess, back to back):
  pytorch   transformers + PyTorch eager (torch's default thread count, printed), rows sorted by prompt length, cut
            into batches of `--batch_size`, left padded, model.generate(do_sample=False); ids cut at the first eos
  job-cold  python -m mindone.transformers.batch --mode graph --max_batch_size `--batch_size`, with MINDONE_CACHE a
            fresh directory (MINDONE_COMPILE_CACHE=1) that holds only a copy of the fused kernels' compiled library,
            so the one-time C++ build is not counted but every graph compile is
  job-warm  the same job again on the same MINDONE_CACHE (graphs cached by job-cold), into a new output file
  job-half  job-warm's run on the first `--rss_rows` rows (default half): its peak RSS against job-warm's shows
            whether memory grows with the number of rows
The job parts run with USE_TORCH=0, as a MindSpore install without PyTorch would (transformers would otherwise import
torch into the job: this dev environment has it for the parity tests).

Wall time and peak RSS are the child's own: os.wait4() returns its rusage (ru_maxrss = peak resident set of the
process, or of its largest waited-for descendant). Each job's token_ids are compared row by row with PyTorch's; for
rows that differ the first differing position is printed with PyTorch's top-2 logit margin there (an unpadded
forward over the prompt and the common prefix), which tells a near tie from a real bug. Shared machines are noisy:
compare only figures from the same run."""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
PARTS = ("pytorch", "job-cold", "job-warm", "job-half")
SEED = 15

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "What is photosynthesis, in one sentence?",
    "Give me three tips for sleeping better.",
    "What is the difference between weather and climate?",
    "Translate 'good morning' into Spanish and German.",
    "Who wrote Romeo and Juliet, and when?",
    "Is a tomato a fruit or a vegetable? Explain briefly.",
    "What does a bee do when it finds flowers full of nectar?",
    "Write a haiku about the sea.",
    "How do I boil an egg so that the yolk stays soft?",
    "What is a prime number? Give two examples.",
    "Why do leaves change colour in the autumn?",
    "Suggest a name for a small bakery in a river town.",
    "What causes the tides?",
    "How far away is the moon from the Earth, roughly?",
    "Explain what a volcano is to a seven year old.",
    "What are the three states of water?",
    "I have flour, water, salt and yeast. What can I make with them?",
    "Can you explain the rules of chess in a few sentences? I have never played before and want to start.",
    "My friend says that lightning never strikes the same place twice. Is that true? Please explain why or why not.",
    "I am learning French and keep forgetting new words after a few days. What is a good way to remember vocabulary?",
    "What is the boiling point of water at the top of a high mountain, and why is it different from sea level?",
    "Write a short, friendly message to a neighbour asking them to water my plants while I am away for a week.",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "What is the largest ocean on Earth?",
    "Name three animals that live in the desert.",
    "How does a rainbow form?",
    "What is the past tense of 'swim'?",
    "My bread did not rise. What could have gone wrong? I used dried yeast and let it rest for one hour in a cold kitchen.",
    "List the planets of the solar system in order from the sun.",
    "What is 17 times 23?",
    "Why do cats purr?",
    "Recommend a good habit for someone who wants to read more books.",
    "How do bees make honey?",
    "What is the main job of the heart?",
    "Explain in two sentences why regular exercise is good for health.",
    "We are planning a walk along a cliff path with children aged six and nine. What should we bring and what should we watch out for?",
    "What is a lighthouse for?",
]

TASKS = [
    ("Summarise this text:\n\n", "\n\nWhat is its main point?"),
    ("Summarise this text in two sentences:\n\n", ""),
    ("Here is a passage I copied from a guidebook:\n\n", "\n\nWhat is it mainly about?"),
    ("Read the following text and list three facts it mentions.\n\n", ""),
    ("", "\n\nGive this text a short title."),
    ("Summarise this text:\n\n", "\n\nWho would find it useful?"),
]


def make_rows(count: int) -> list:
    """`count` chat rows: count // 2 short questions, the rest pasted documents of spread lengths, shuffled."""
    rng = random.Random(SEED)
    corpus = (DATA / "english_page.txt").read_text().strip() + "\n\n" + (DATA / "documents.txt").read_text().strip()
    starts = [0] + [m.end() for m in re.finditer(r"(?<=[.!?])\s+", corpus)]  # every sentence start
    ends = [m.start() + 1 for m in re.finditer(r"[.!?](?=\s|$)", corpus)]  # every sentence end
    doubled = corpus + "\n\n" + corpus  # a slice may wrap around the end
    shorts, docs = count // 2, count - count // 2
    contents = [QUESTIONS[i % len(QUESTIONS)] for i in range(shorts)]
    # ~4.5 characters per token; from ~300 to ~3300 characters of text, which with the template, the system prompt
    # and the instruction gives ~100 to ~800 tokens
    targets = [300 + round(3000 * k / max(docs - 1, 1)) for k in range(docs)]
    rng.shuffle(targets)
    for k, target in enumerate(targets):
        start = rng.choice(starts)
        end = start + target
        wrapped = [e for e in ends if e >= end - len(corpus) - 2] if end > len(corpus) else [e for e in ends if e >= end]
        cut = (wrapped[0] + len(corpus) + 2 if end > len(corpus) else wrapped[0]) if wrapped else end
        before, after = TASKS[k % len(TASKS)]
        contents.append(before + doubled[start:cut].strip() + after)
    rng.shuffle(contents)
    return [{"id": f"r{i:03d}", "messages": [{"role": "user", "content": c}]} for i, c in enumerate(contents)]


def prompt_lengths(model_dir: str, rows: list) -> dict:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return {r["id"]: len(_encode(tokenizer, r)) for r in rows}


def _encode(tokenizer, row) -> list:
    text = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _cut_at_eos(ids: list, eos: set) -> list:
    return next((ids[: i + 1] for i, token in enumerate(ids) if token in eos), ids)


def _eos_set(config) -> set:
    eos = config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos])


# ---------------------------------------------------------------- children: run inside their own process


def child_pytorch(args) -> None:
    """Batches of `--batch_size` rows sorted by prompt length, left padded; writes pytorch.jsonl like the job's."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    rows = [json.loads(line) for line in open(os.path.join(args.workdir, "in.jsonl"))]
    prompts = [_encode(tokenizer, r) for r in rows]
    eos = _eos_set(model.generation_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    results = {}
    for first in range(0, len(order), args.batch_size):
        batch = order[first : first + args.batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch])
        with torch.no_grad():
            output = model.generate(ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=pad)  # fmt: skip
        for i, sequence in zip(batch, output):
            token_ids = _cut_at_eos(sequence[width:].tolist(), eos)
            results[i] = {"id": rows[i]["id"], "token_ids": token_ids, "prompt_tokens": len(prompts[i]),
                          "generated_tokens": len(token_ids), "torch_threads": torch.get_num_threads()}  # fmt: skip
    with open(os.path.join(args.workdir, "pytorch.jsonl"), "w") as f:
        f.writelines(json.dumps(results[i]) + "\n" for i in range(len(rows)))


def child_margins(args) -> None:
    """For each differing row: PyTorch's logits after the prompt and the common prefix, unpadded, batch 1."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    rows = {r["id"]: r for r in map(json.loads, open(os.path.join(args.workdir, "in.jsonl")))}
    diffs = json.load(open(os.path.join(args.workdir, "diffs.json")))
    for diff in diffs:
        prefix = _encode(tokenizer, rows[diff["id"]]) + diff["common"]
        with torch.no_grad():
            logits = model(torch.tensor([prefix])).logits[0, -1]
        top = torch.topk(logits, 2)
        diff["top2_margin"] = float(top.values[0] - top.values[1])
        diff["unpadded_argmax"] = int(top.indices[0])
        diff["pytorch_minus_job_logit"] = float(logits[diff["pytorch_token"]] - logits[diff["job_token"]])
    json.dump(diffs, open(os.path.join(args.workdir, "margins.json"), "w"))


# ---------------------------------------------------------------- the parent


def run_child(command: list, env: dict, log_prefix: str) -> dict:
    """Runs `command` to completion; its wall time, exit code and peak RSS (from wait4, the child's own rusage)."""
    with open(log_prefix + ".stdout", "w") as out, open(log_prefix + ".stderr", "w") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "exit_code": process.returncode, "peak_rss_mb": usage.ru_maxrss / 1024}


def tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def seed_kernel_library(cache: Path, env: dict) -> str:
    """Copies the fused kernels' compiled library (built in the usual cache if needed, not timed) into `cache`."""
    probe = ("from mindone.transformers.kernels import library\nfrom mindone.transformers.kernels.builder import "
             "cache_root\nprint(library() or '')\nprint(cache_root())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    library, root = out.stdout.strip().splitlines()[-2:]
    if not library:
        return "kernels unavailable or disabled: nothing copied"
    relative = Path(library).relative_to(root)
    for source in (Path(library), Path(library).with_suffix(".sha256")):
        target = cache / source.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.exists():
            shutil.copy2(source, target)
    return f"copied {relative} (+ .sha256)"


def directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run_part(part: str, args, workdir: Path, base_env: dict) -> dict:
    log = str(workdir / part)
    if part == "pytorch":
        (workdir / "pytorch.jsonl").unlink(missing_ok=True)
        command = [sys.executable, os.path.abspath(__file__), "--child", "pytorch", "--workdir", str(workdir),
                   "--model", args.model, "--max_new_tokens", str(args.max_new_tokens), "--batch_size",
                   str(args.batch_size)]  # fmt: skip
        result = run_child(command, base_env, log)
        output = workdir / "pytorch.jsonl"
    else:
        cache = workdir / "cache"
        notes = {}
        if part == "job-cold":
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            notes["kernels"] = seed_kernel_library(cache, base_env)
            notes["cache_mb_before"] = round(directory_mb(cache), 1)
        elif not cache.exists():
            print(f"warning: {part} without a job-cold run before it: its cache starts empty", file=sys.stderr)
            cache.mkdir(parents=True)
            notes["kernels"] = seed_kernel_library(cache, base_env)
        input_path = workdir / ("in-half.jsonl" if part == "job-half" else "in.jsonl")
        output = workdir / f"{part}.jsonl"
        output.unlink(missing_ok=True)  # an existing output would be resumed
        command = [sys.executable, "-m", "mindone.transformers.batch", "--model", args.model, "--input",
                   str(input_path), "--output", str(output), "--max_batch_size", str(args.batch_size),
                   "--max_new_tokens", str(args.max_new_tokens), "--mode", "graph"]  # fmt: skip
        env = {**base_env, "MINDONE_CACHE": str(cache), "MINDONE_COMPILE_CACHE": "1", "USE_TORCH": "0"}
        result = run_child(command, env, log)
        result.update(notes, cache_mb_after=round(directory_mb(cache), 1))
        result["kernel_libraries"] = sorted(p.name for p in (cache / "kernels").glob("*.so"))  # >1: the job built one
        summary = [line for line in tail(log + ".stderr", 40).splitlines() + tail(log + ".stdout").splitlines()
                   if "rows" in line and ("ok" in line or "tok/s" in line) and "it/s" not in line]  # fmt: skip
        if summary:
            result["job_summary"] = summary[-1].strip()
    if result["exit_code"] != 0 or not output.exists():
        print(f"{part} FAILED (exit {result['exit_code']}); end of its stderr:\n{tail(log + '.stderr')}", file=sys.stderr)
        result["failed"] = True
        return result
    out_rows = [json.loads(line) for line in open(output)]
    result["rows_out"] = {r["id"]: r for r in out_rows if "id" in r}
    result["rows"] = sum("error" not in r for r in out_rows)  # only rows that got an answer count for rows/s
    result["errors"] = sum("error" in r for r in out_rows)
    result["tokens"] = sum(len(r.get("token_ids", [])) for r in out_rows)
    result["rows_per_s"] = result["rows"] / result["wall_s"]
    result["tok_per_s"] = result["tokens"] / result["wall_s"]
    if part == "pytorch" and out_rows:
        result["torch_threads"] = out_rows[0]["torch_threads"]
    return result


def compare(reference: dict, job: dict, lengths: dict) -> tuple:
    """(identical count, compared count, diffs) of job rows against the reference rows, by id."""
    same, diffs = 0, []
    for row_id, ref in reference.items():
        if row_id not in job:
            continue
        row = job[row_id]
        if "error" in row:
            diffs.append({"id": row_id, "prompt_tokens": lengths.get(row_id), "error": row["error"]})
            continue
        a, b = ref["token_ids"], row["token_ids"]
        if a == b:
            same += 1
            continue
        position = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        diffs.append({"id": row_id, "prompt_tokens": lengths.get(row_id), "position": position, "common": a[:position],
                      "pytorch_token": a[position] if position < len(a) else None,
                      "job_token": b[position] if position < len(b) else None,
                      "pytorch_len": len(a), "job_len": len(b)})  # fmt: skip
    return same, same + len(diffs), diffs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma separated, from {','.join(PARTS)}")
    parser.add_argument("--rss_rows", type=int, default=None, help="rows of the job-half run (default: half)")
    parser.add_argument("--workdir", default=None, help="inputs, outputs, logs and the cache (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument("--json", default=None, help="save the figures to this file")
    parser.add_argument("--child", choices=["pytorch", "margins"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        {"pytorch": child_pytorch, "margins": child_margins}[args.child](args)
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    args.model = os.path.abspath(args.model)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_batch_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report(args, parts, workdir)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"workdir kept: {workdir}")


def report(args, parts: list, workdir: Path) -> None:
    rows = make_rows(args.rows)
    half = rows[: args.rss_rows if args.rss_rows is not None else len(rows) // 2]
    for name, subset in (("in.jsonl", rows), ("in-half.jsonl", half)):
        with open(workdir / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in subset)
    lengths = prompt_lengths(args.model, rows)
    values = list(lengths.values())
    short = [lengths[r["id"]] for r in rows if r["messages"][0]["content"] in QUESTIONS]
    docs = [lengths[r["id"]] for r in rows if r["messages"][0]["content"] not in QUESTIONS]
    distribution = {"min": min(values), "median": statistics.median(values), "max": max(values),
                    "total": sum(values), "short_rows": len(short), "document_rows": len(docs)}  # fmt: skip
    print(f"{len(rows)} chat rows ({len(short)} short questions, {len(docs)} pasted documents), greedy, up to "
          f"{args.max_new_tokens} new tokens, batches of {args.batch_size}; job-half: the first {len(half)} rows "
          f"(prompts up to {max(lengths[r['id']] for r in half)} tokens)")  # fmt: skip
    print(f"prompt tokens after the template: min {distribution['min']}, median {distribution['median']:g}, "
          f"max {distribution['max']}, total {distribution['total']}"
          + (f"; short {min(short)}-{max(short)}" if short else "") + (f", documents {min(docs)}-{max(docs)}" if docs else ""))  # fmt: skip
    print(f"first rows in order: {', '.join(str(lengths[r['id']]) for r in rows[:16])} tokens", flush=True)

    base_env = {**os.environ, "GLOG_v": "3"}
    results = {}
    setup = {"model": args.model, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
             "input_sha256": hashlib.sha256((workdir / "in.jsonl").read_bytes()).hexdigest()}  # fmt: skip
    saved = workdir / "pytorch-figures.json"
    if "pytorch" not in parts and saved.exists() and (workdir / "pytorch.jsonl").exists():
        earlier = json.loads(saved.read_text())
        if earlier["setup"] == setup:  # PyTorch's part of an earlier run in this --workdir on the same rows
            rows_out = {r["id"]: r for r in map(json.loads, open(workdir / "pytorch.jsonl"))}
            results["pytorch"] = {**earlier["figures"], "rows_out": rows_out, "earlier_run": earlier["when"]}
            print(f"pytorch: figures and tokens of the run of {earlier['when']} in {workdir}", file=sys.stderr)
    for part in parts:
        print(f"running {part} ...", file=sys.stderr, flush=True)
        results[part] = run_part(part, args, workdir, base_env)
        r = results[part]
        brief = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "rows_out"}
        print(f"  {part}: {brief}", file=sys.stderr, flush=True)
        if part == "pytorch" and not r.get("failed"):
            figures = {k: v for k, v in r.items() if k != "rows_out"}
            saved.write_text(json.dumps({"setup": setup, "when": time.strftime("%Y-%m-%d %H:%M"), "figures": figures}))

    comparisons = {}
    reference = results.get("pytorch", {}).get("rows_out")
    if reference:
        all_diffs = []
        for part in parts:
            if part == "pytorch" or results[part].get("failed"):
                continue
            same, total, diffs = compare(reference, results[part]["rows_out"], lengths)
            comparisons[part] = {"identical": same, "compared": total, "diffs": diffs}
            all_diffs += [d for d in diffs if "position" in d and d["pytorch_token"] is not None and d["job_token"] is not None]
        unique = list({(d["id"], d["position"], d["job_token"]): d for d in all_diffs}.values())
        if unique:  # top-2 margins from an unpadded PyTorch forward, not timed
            json.dump(unique, open(workdir / "diffs.json", "w"))
            command = [sys.executable, os.path.abspath(__file__), "--child", "margins", "--workdir", str(workdir),
                       "--model", args.model]  # fmt: skip
            done = subprocess.run(command, env=base_env, capture_output=True, text=True)
            if done.returncode == 0:
                margins = {(d["id"], d["position"], d["job_token"]): d for d in json.load(open(workdir / "margins.json"))}
                for comparison in comparisons.values():
                    for d in comparison["diffs"]:
                        d.update(margins.get((d["id"], d.get("position"), d.get("job_token")), {}))
            else:
                print(f"margins not computed:\n{done.stderr[-2000:]}", file=sys.stderr)
    if "job-cold" in results and "job-warm" in results and not results["job-cold"].get("failed") \
            and not results["job-warm"].get("failed"):
        cold, warm = results["job-cold"]["rows_out"], results["job-warm"]["rows_out"]
        both = [i for i in cold if i in warm and "error" not in cold[i] and "error" not in warm[i]]
        comparisons["job-warm vs job-cold"] = {"identical": sum(cold[i]["token_ids"] == warm[i]["token_ids"] for i in both),
                                               "compared": len(both)}  # fmt: skip

    print()
    print(f"{'part':<10}{'wall s':>8}{'rows':>6}{'errors':>7}{'rows/s':>8}{'gen tok':>9}{'tok/s':>8}{'peak RSS MB':>13}"
          f"{'= pytorch':>11}")  # fmt: skip
    for part, r in results.items():
        if r.get("failed"):
            print(f"{part:<10}{r['wall_s']:>8.1f}  FAILED (exit {r['exit_code']}), log {workdir / part}.stderr")
            continue
        c = comparisons.get(part)
        identical = f"{100 * c['identical'] / max(c['compared'], 1):.1f}%" if c else ""
        earlier = f"  (earlier run, {r['earlier_run']})" if "earlier_run" in r else ""
        print(f"{part:<10}{r['wall_s']:>8.1f}{r['rows']:>6}{r['errors']:>7}{r['rows_per_s']:>8.2f}{r['tokens']:>9}{r['tok_per_s']:>8.1f}"
              f"{r['peak_rss_mb']:>13.0f}{identical:>11}{earlier}")  # fmt: skip
    if "pytorch" in results and "torch_threads" in results["pytorch"]:
        print(f"pytorch: torch.get_num_threads() = {results['pytorch']['torch_threads']} (the machine default, "
              f"{os.cpu_count()} CPUs)")
    for part in ("job-cold", "job-warm", "job-half"):
        r = results.get(part)
        if r and not r.get("failed"):
            extra = f", kernels: {r['kernels']}" if "kernels" in r else ""
            if len(r["kernel_libraries"]) > 1:
                extra += f" (the job built another kernel library: {r['kernel_libraries']}; its build time is counted)"
            print(f"{part}: cache {r.get('cache_mb_before', r['cache_mb_after']) if part == 'job-cold' else ''}"
                  f"{' -> ' if part == 'job-cold' else ''}{r['cache_mb_after']} MB{extra}"
                  + (f"; job says: {r['job_summary']}" if "job_summary" in r else ""))  # fmt: skip

    failed_rows = {p: r["errors"] for p, r in results.items() if r.get("errors")}
    if failed_rows:
        print(f"WARNING: error rows (not counted in rows/s, listed below): {failed_rows}")
    ratios = {}
    if "pytorch" in results and not results["pytorch"].get("failed"):
        base = results["pytorch"]["rows_per_s"]
        for part, target in (("job-cold", 1.5), ("job-warm", 2.0)):
            if part in results and not results[part].get("failed"):
                ratios[part] = results[part]["rows_per_s"] / base
                verdict = "met" if ratios[part] >= target else "NOT met"
                print(f"{part} / pytorch rows/s: {ratios[part]:.2f}x (target >= {target}x: {verdict})")
    for name, c in comparisons.items():
        share = c["identical"] / max(c["compared"], 1)
        verdict = "" if "vs" in name else f" (target >= 97%: {'met' if share >= 0.97 else 'NOT met'})"
        print(f"{name}: {c['identical']}/{c['compared']} rows token-identical to "
              f"{'job-cold' if 'vs' in name else 'pytorch'} ({100 * share:.1f}%){verdict}")
        for d in c.get("diffs", []):
            if "error" in d:
                print(f"  {d['id']} ({d['prompt_tokens']} prompt tokens): job error: {d['error']}")
                continue
            margin = (f"; pytorch's unpadded top-2 margin {d['top2_margin']:.3f}, logit(pytorch) - logit(job) "
                      f"{d['pytorch_minus_job_logit']:.3f}, unpadded argmax {d['unpadded_argmax']}"
                      if "top2_margin" in d else "")  # fmt: skip
            print(f"  {d['id']} ({d['prompt_tokens']} prompt tokens): first difference at generated token "
                  f"{d['position']}: pytorch {d['pytorch_token']}, job {d['job_token']} (lengths {d['pytorch_len']} / "
                  f"{d['job_len']}){margin}")  # fmt: skip
    memory = {}
    if all(p in results and not results[p].get("failed") for p in ("job-warm", "job-half")):
        full, part_half = results["job-warm"], results["job-half"]
        memory = {"rows_half": part_half["rows"], "rss_half_mb": part_half["peak_rss_mb"], "rows_full": full["rows"],
                  "rss_full_mb": full["peak_rss_mb"]}  # fmt: skip
        growth = full["peak_rss_mb"] - part_half["peak_rss_mb"]
        print(f"peak RSS with the warm cache: {part_half['rows']} rows {part_half['peak_rss_mb']:.0f} MB, "
              f"{full['rows']} rows {full['peak_rss_mb']:.0f} MB ({growth:+.0f} MB, "
              f"{100 * growth / part_half['peak_rss_mb']:+.1f}%)")  # fmt: skip

    if args.json:
        figures = {"rows": len(rows), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                   "prompt_tokens": distribution, "cpus": os.cpu_count(),
                   "parts": {p: {k: v for k, v in r.items() if k != "rows_out"} for p, r in results.items()},
                   "ratios_rows_per_s": ratios, "comparisons": comparisons, "memory": memory}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
        print(f"figures saved to {args.json}")


if __name__ == "__main__":
    main()
