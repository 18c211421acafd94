"""Generate with MindSpore: the same command line as generate_pt.py (PyTorch), for side-by-side checks.

    python examples/transformers/llama/generate.py --chat --prompt "What is the capital of France?"
    msrun --worker_num=3 --local_worker_num=3 --join=True examples/transformers/llama/generate.py --tp_plan auto --chat
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mindspore as ms  # noqa: E402
from common import Timer, encode_prompts, generation_kwargs, loading_kwargs, parse_args, report  # noqa: E402

from mindone.transformers import AutoModelForCausalLM, AutoTokenizer, set_seed  # noqa: E402


def main(argv=None):
    args = parse_args("MindSpore", argv)
    ms.set_device("CPU" if ms.get_context("device_target") == "CPU" else ms.get_context("device_target"))
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, gguf_file=args.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, gguf_file=args.gguf_file, dtype=args.dtype,
                                                 **loading_kwargs(args))  # fmt: skip
    texts, ids, mask = encode_prompts(tokenizer, args)
    input_ids, attention_mask = ms.Tensor(ids), ms.Tensor(mask)
    prompt_logits = None
    if args.output_json:
        prompt_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.astype(ms.float32).asnumpy()
    set_seed(args.seed)
    with Timer() as timer:
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs(args))
    report("mindspore", args, tokenizer, texts, ids, mask, output.asnumpy(), timer.seconds, prompt_logits)


if __name__ == "__main__":
    main()
