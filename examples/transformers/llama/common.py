"""What generate.py (MindSpore) and generate_pt.py (PyTorch) share: arguments, prompt encoding and the report.

Imports neither framework, so each script pulls in only its own."""

import argparse
import json
import os
import time

import numpy as np

DEFAULT_MODEL = "models/SmolLM2-135M-Instruct"
DEFAULT_PROMPT = "What is the capital of France?"


def parse_args(framework: str, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"Generate text with a causal LM on {framework}.")
    parser.add_argument("--model_name_or_path", default=DEFAULT_MODEL, help="model directory or Hub repo id")
    parser.add_argument("--gguf_file", default=None, help="a .gguf file (path, or name inside the model directory)")
    parser.add_argument("--prompt", action="append", help="repeat for a left-padded batch")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    parser.add_argument("--max_new_tokens", type=int, default=30)
    parser.add_argument("--do_sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--output_json", default=None, help="also write ids, texts and prompt logits (.npz beside it)")
    args = parser.parse_args(argv)
    args.prompt = args.prompt or [DEFAULT_PROMPT]
    if args.gguf_file is None and not os.path.exists(args.model_name_or_path) and args.model_name_or_path == DEFAULT_MODEL:
        parser.error(f"{DEFAULT_MODEL} does not exist yet: run `make model` (or `make demo`) first")
    return args


def generation_kwargs(args) -> dict:
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample}
    for name in ("temperature", "top_k", "top_p"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def encode_prompts(tokenizer, args):
    """Returns (texts fed to the model, ids [batch, length] int64, attention mask), left padded."""
    if args.chat:
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in args.prompt
        ]
    else:
        texts = list(args.prompt)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(texts, return_tensors="np", padding=True, add_special_tokens=not args.chat)
    return texts, encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def report(framework, args, tokenizer, texts, ids, mask, output_ids, seconds, prompt_logits=None):
    output_ids = np.asarray(output_ids)
    new_tokens = output_ids[:, ids.shape[1] :]
    print(f"[{framework}] model={args.model_name_or_path} dtype={args.dtype} {generation_kwargs(args)}")
    rows = []
    for row, text in enumerate(texts):
        completion = tokenizer.decode(new_tokens[row], skip_special_tokens=True)
        print(f"--- prompt {row} ({int(mask[row].sum())} tokens) ---\n{text}")
        print(f"--- output {row} ---\n{completion}")
        rows.append({"prompt": text, "input_ids": ids[row][mask[row] == 1].tolist(),
                     "output_ids": output_ids[row].tolist(), "text": completion})  # fmt: skip
    generated = int(new_tokens.size)
    print(f"[{framework}] {generated} new tokens in {seconds:.2f} s ({generated / seconds:.1f} tok/s)")
    if args.output_json:
        _write_json(framework, args, rows, mask, prompt_logits)


def _write_json(framework, args, rows, mask, prompt_logits):
    logits_file = None
    if prompt_logits is not None:
        logits_file = os.path.splitext(args.output_json)[0] + ".logits.npz"
        np.savez(logits_file, logits=prompt_logits.astype(np.float32), mask=mask)
    result = {"framework": framework, "model": args.model_name_or_path, "dtype": args.dtype,
              "generation": generation_kwargs(args), "rows": rows, "prompt_logits": logits_file}  # fmt: skip
    with open(args.output_json, "w") as f:
        json.dump(result, f, indent=1)
