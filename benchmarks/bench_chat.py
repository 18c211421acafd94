"""mindone-chat's kept key/value cache: time to first token of each turn of one conversation, with the cache kept
between turns and with the whole conversation prefilled every turn, in one run.

    python benchmarks/bench_chat.py --model models/SmolLM2-135M-Instruct [--mode graph|pynative] [--repeats 3]

Five scripted user turns, greedy, up to --max_new_tokens each (the same replies both ways: the tests check that).
A conversation runs once to compile and warm up, then --repeats times per way; each turn's figure is the best of the
repeats. The time to first token is from the call to the first generated token (streamer), including templating."""

import argparse
import io
import os

import mindspore as ms

from mindone.transformers import AutoModelForCausalLM, AutoTokenizer
from mindone.transformers.chat import ChatSession, updated_config

TURNS = [
    "Hi! Can you tell me about the history of Paris in a few sentences?",
    "What are three famous museums there, and what is each known for?",
    "Which one would you visit first with only one afternoon, and why?",
    "Suggest a short walking route between two of them, with one place to eat on the way.",
    "Summarise our conversation so far in two sentences.",
]


def conversation(model, tokenizer, config, mode: str, reuse: bool) -> list:
    session = ChatSession(model, tokenizer, config, mode=mode, reuse_cache=reuse, out=io.StringIO())
    figures = []
    for text in TURNS:
        session.reply(text)
        figures.append(dict(session.last))
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "SmolLM2-135M-Instruct"))
    parser.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ms.set_device("CPU")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    config = updated_config(model.generation_config, {"do_sample": False, "max_new_tokens": args.max_new_tokens})
    results = {}
    for reuse in (True, False):
        conversation(model, tokenizer, config, args.mode, reuse)  # compiles, warms up
        runs = [conversation(model, tokenizer, config, args.mode, reuse) for _ in range(args.repeats)]
        results[reuse] = [min(runs, key=lambda r: r[turn]["time_to_first_token"])[turn] for turn in range(len(TURNS))]
    print(f"{'turn':>4} {'prompt tokens':>13} {'prefilled (kept)':>16} {'TTFT kept ms':>12} {'TTFT re-prefill ms':>18} {'ratio':>6}")
    for turn, (kept, again) in enumerate(zip(results[True], results[False]), 1):
        ratio = again["time_to_first_token"] / kept["time_to_first_token"]
        print(f"{turn:>4} {kept['prompt_tokens']:>13} {kept['prefilled_tokens']:>16} {kept['time_to_first_token'] * 1e3:>12.1f} "
              f"{again['time_to_first_token'] * 1e3:>18.1f} {ratio:>5.2f}x")  # fmt: skip
    same = all(k["new_ids"] == a["new_ids"] for k, a in zip(results[True], results[False]))
    print(f"mode {args.mode}, greedy, {args.max_new_tokens} new tokens at most per turn, best of {args.repeats}; "
          f"replies identical both ways: {same}")


if __name__ == "__main__":
    main()
