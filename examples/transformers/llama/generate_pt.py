"""Generate with transformers + PyTorch: the reference twin of generate.py (same arguments, same report).

With --gguf_file the model comes from transformers' own GGUF loader (an independent dequantizer); the tokenizer
comes from mindone's torch-free GGUF reader because transformers 4.57 builds this GGUF's tokenizer with the
wrong eos token."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import transformers  # noqa: E402
from common import Timer, encode_prompts, generation_kwargs, parse_args, report  # noqa: E402


def load_tokenizer(args):
    if args.gguf_file is None:
        return transformers.AutoTokenizer.from_pretrained(args.model_name_or_path)
    from mindone.transformers.integrations.gguf import open_gguf

    return open_gguf(args.model_name_or_path, args.gguf_file).tokenizer()


def main(argv=None):
    args = parse_args("PyTorch", argv)
    tokenizer = load_tokenizer(args)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model_name_or_path, gguf_file=args.gguf_file, dtype=getattr(torch, args.dtype), tp_plan=args.tp_plan
    ).eval()
    texts, ids, mask = encode_prompts(tokenizer, args)
    input_ids, attention_mask = torch.tensor(ids), torch.tensor(mask)
    with torch.no_grad():
        prompt_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float().numpy() if args.output_json else None
        torch.manual_seed(args.seed)
        with Timer() as timer:
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs(args))
    report("pytorch", args, tokenizer, texts, ids, mask, output.numpy(), timer.seconds, prompt_logits)


if __name__ == "__main__":
    main()
