"""Compare MindSpore and PyTorch generations.

    python compare.py ms.json pt.json              # two --output_json results
    python compare.py --run [generate.py args...]  # run both scripts with the same arguments, then compare

Prints, per row, "identical" or the first diverging position, and the max-abs difference of the prompt logits
over real (unpadded) tokens. Exits 1 when any row differs."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def first_divergence(a: list, b: list):
    for position, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return position
    return None if len(a) == len(b) else min(len(a), len(b))


def logits_difference(first: dict, second: dict):
    if not (first.get("prompt_logits") and second.get("prompt_logits")):
        return None
    a, b = np.load(first["prompt_logits"]), np.load(second["prompt_logits"])
    real = a["mask"].astype(bool)
    return float(np.abs(a["logits"][real] - b["logits"][real]).max())


def compare(first: dict, second: dict) -> bool:
    same = True
    for row, (a, b) in enumerate(zip(first["rows"], second["rows"])):
        position = first_divergence(a["output_ids"], b["output_ids"])
        if position is None:
            print(f"row {row}: identical ({len(a['output_ids'])} tokens)")
        else:
            same = False
            got = a["output_ids"][position] if position < len(a["output_ids"]) else "<end>"
            want = b["output_ids"][position] if position < len(b["output_ids"]) else "<end>"
            print(f"row {row}: first divergence at position {position}: {first['framework']}={got} {second['framework']}={want}")
    difference = logits_difference(first, second)
    if difference is not None:
        print(f"prompt logits max-abs difference: {difference:.3g}")
    return same


def run_both(argv: list) -> tuple:
    results = []
    directory = tempfile.mkdtemp(prefix="compare-")
    for script in ("generate.py", "generate_pt.py"):
        out = os.path.join(directory, script.replace(".py", ".json"))
        subprocess.run([sys.executable, os.path.join(HERE, script), *argv, "--output_json", out], check=True)
        with open(out) as f:
            results.append(json.load(f))
    return tuple(results)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--run":
        first, second = run_both(argv[1:])
    elif len(argv) == 2:
        first, second = (json.load(open(path)) for path in argv)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0 if compare(first, second) else 1


if __name__ == "__main__":
    sys.exit(main())
