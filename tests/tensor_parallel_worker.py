"""Run by msrun from test_tensor_parallel.py: each rank loads the job's checkpoints with tp_plan="auto" and, in the
same process, without it, runs both on the same inputs and writes what it saw to <output>/rank<R>.json.

    msrun ... tensor_parallel_worker.py JOB.json

JOB.json: {"output": dir, "cases": {name: path}, "errors": {name: [path, {from_pretrained kwargs}]},
"max_new_tokens": n, "prompts": [[token ids], ...], "reference_ranks": [ranks that also run the one-process model]}."""

import json
import os
import sys

import mindspore as ms
import numpy as np

ms.set_device("CPU")

from mindone.transformers import AutoModelForCausalLM, set_seed  # noqa: E402


def left_padded(prompts, pad: int):
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :], mask[row, width - len(prompt) :] = prompt, 1
    return ms.Tensor(ids), ms.Tensor(mask)


def run_model(model, job) -> dict:
    """Greedy tokens (the first prompt alone, then the left-padded batch) and sampled ones in PyNative and over the
    compiled static cache, the batch's prefill logits and the per-step logits of both batches."""
    pad = model.generation_config.pad_token_id or 0
    ids, mask = left_padded(job["prompts"], pad)
    greedy = dict(max_new_tokens=job["max_new_tokens"], do_sample=False, pad_token_id=pad)
    seen = {"prefill_logits": model(ids, attention_mask=mask).logits.asnumpy()}
    for mode, options in (("pynative", {}), ("static", {"cache_implementation": "static"})):
        first = ms.Tensor([job["prompts"][0]], ms.int32)  # one prompt alone; the batch holds all of them
        seen[f"{mode}_alone"] = [model.generate(input_ids=first, **greedy, **options).asnumpy()[0].tolist()]
        out = model.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, output_logits=True,
                             **greedy, **options)  # fmt: skip
        seen[f"{mode}_batch"] = out.sequences.asnumpy().tolist()
        seen[f"{mode}_step_logits"] = np.stack([step.asnumpy() for step in out.logits])
        set_seed(0)  # every rank seeded alike draws the same tokens
        seen[f"{mode}_sampled"] = model.generate(input_ids=ids, attention_mask=mask, **{**greedy, "do_sample": True},
                                                 **options).asnumpy().tolist()  # fmt: skip
    return seen


def compare(case: dict, sharded: dict, whole: dict) -> None:
    for name in ("prefill_logits", "pynative_step_logits", "static_step_logits"):
        case[f"{name}_max_abs"] = float(np.abs(sharded[name] - whole[name]).max())
    # sampling is compared between the ranks only: logits within 1e-5 of one process may still cross a draw's boundary
    compared = [k for k in sharded if not k.endswith(("logits", "sampled"))]
    case["tokens_equal_one_process"] = {k: sharded[k] == whole[k] for k in compared}


def main(job_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    from mindspore.communication import get_rank, init

    init()
    rank = get_rank()
    report = {"errors": {}, "cases": {}}
    for name, (path, kwargs) in job.get("errors", {}).items():
        try:
            AutoModelForCausalLM.from_pretrained(path, **kwargs)
            report["errors"][name] = None
        except (ValueError, OSError) as err:
            report["errors"][name] = f"{type(err).__name__}: {err}"
    for name, path in job.get("cases", {}).items():
        model = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto")
        sharded = run_model(model, job)
        case = {"memory_bytes": model.get_memory_footprint(),
                "tokens": {k: v for k, v in sharded.items() if not k.endswith("logits")}}  # fmt: skip
        del model
        if rank in job.get("reference_ranks", [rank]):
            whole_model = AutoModelForCausalLM.from_pretrained(path)
            case["one_process_memory_bytes"] = whole_model.get_memory_footprint()
            compare(case, sharded, run_model(whole_model, job))
            del whole_model
        report["cases"][name] = case
    with open(os.path.join(job["output"], f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
