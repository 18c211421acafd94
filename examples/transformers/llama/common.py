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
    parser.add_argument("--keep_quantized", action="store_true",
                        help="MindSpore only: keep the GGUF file's quantized weights (from_pretrained dequantize=False)")
    parser.add_argument("--quantization", choices=["int8", "int4"], default=None,
                        help="MindSpore only: quantize the float checkpoint's weights while loading (docs/quantization.md)")
    parser.add_argument("--tp_plan", choices=["auto"], default=None,
                        help="tensor parallel over the ranks of msrun (MindSpore) or torchrun (PyTorch): "
                             "docs/tensor_parallel.md")  # fmt: skip
    parser.add_argument("--prompt", action="append", help="repeat for a left-padded batch")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    parser.add_argument("--messages_json", default=None,
                        help="chat messages file: one conversation [{role, content}, ...] or a list of them (a batch)")
    parser.add_argument("--max_new_tokens", type=int, default=30)
    parser.add_argument("--do_sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=None)
    parser.add_argument("--repetition_penalty", type=float, default=None)
    parser.add_argument("--no_repeat_ngram_size", type=int, default=None)
    parser.add_argument("--prompt_lookup_num_tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--output_json", default=None, help="also write ids, texts and prompt logits (.npz beside it)")
    args = parser.parse_args(argv)
    args.prompt = args.prompt or [DEFAULT_PROMPT]
    if args.keep_quantized and args.gguf_file is None:
        parser.error("--keep_quantized keeps a GGUF file's quantized weights: pass --gguf_file as well")
    if args.keep_quantized and framework != "MindSpore":
        parser.error(f"--keep_quantized is for generate.py (MindSpore); {framework} runs the weights dequantized")
    if args.quantization and args.gguf_file is not None:
        parser.error("--quantization quantizes a float checkpoint; a GGUF file is quantized already: use --keep_quantized")
    if args.quantization and framework != "MindSpore":
        parser.error(f"--quantization is for generate.py (MindSpore); {framework} runs the float weights")
    if args.gguf_file is None and not os.path.exists(args.model_name_or_path) and args.model_name_or_path == DEFAULT_MODEL:
        parser.error(f"{DEFAULT_MODEL} does not exist yet: run `make model` (or `make demo`) first")
    return args


def loading_kwargs(args) -> dict:
    """from_pretrained arguments for the weights: --keep_quantized, --quantization and --tp_plan."""
    kwargs = {"dequantize": False} if args.keep_quantized else {}
    if args.quantization:
        kwargs[f"load_in_{args.quantization[3:]}bit"] = True
    if args.tp_plan:
        kwargs["tp_plan"] = args.tp_plan
    return kwargs


def first_rank() -> bool:
    """Whether this process reports: the only one, or rank 0 of msrun (RANK_ID) / torchrun (RANK)."""
    return int(os.environ.get("RANK_ID", os.environ.get("RANK", 0))) == 0


def generation_kwargs(args) -> dict:
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample}
    for name in ("temperature", "top_k", "top_p", "num_beams", "repetition_penalty", "no_repeat_ngram_size",
                 "prompt_lookup_num_tokens"):  # fmt: skip
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def encode_prompts(tokenizer, args):
    """Returns (texts fed to the model, ids [batch, length] int64, attention mask), left padded."""
    conversations = _conversations(args)
    if conversations is not None:
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    else:
        texts = list(args.prompt)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(texts, return_tensors="np", padding=True, add_special_tokens=conversations is None)
    return texts, encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)


def _conversations(args):
    """Chat conversations to template: from --messages_json, or each --prompt as one user turn with --chat."""
    if args.messages_json:
        with open(args.messages_json) as f:
            messages = json.load(f)
        if not isinstance(messages, list) or not messages:
            raise SystemExit(f"error: {args.messages_json} must hold a list of messages or a list of conversations")
        return messages if isinstance(messages[0], list) else [messages]
    if args.chat:
        return [[{"role": "user", "content": prompt}] for prompt in args.prompt]
    return None


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def report(framework, args, tokenizer, texts, ids, mask, output_ids, seconds, prompt_logits=None):
    if not first_rank():  # tensor-parallel ranks all hold the same tokens
        return
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
