"""Where the time of one compiled decode step goes on this backend.

Runs the compiled static-cache decode step of the real model and of a model with the same structure (layers,
heads, vocabulary) but hidden size 64, whose arithmetic is negligible: the second time is the per-step cost of
launching the graph's kernels, the difference is compute and memory traffic. Also times a chain of trivial
kernels to give the per-kernel cost.

    python benchmarks/profile_decode_step.py --model models/SmolLM2-135M-Instruct
"""

import argparse
import tempfile
import time

import mindspore as ms
import numpy as np
from mindspore import nn

from mindone.transformers import AutoConfig, AutoModelForCausalLM
from mindone.transformers.generation import GenerationConfig
from mindone.transformers.generation.decoders import StaticDecoder


def decode_ms(model, steps: int = 32) -> float:
    config = GenerationConfig(max_length=32 + steps + 2)
    ids = ms.Tensor(np.random.default_rng(0).integers(100, 1000, size=(1, 32)), ms.int64)
    mask = ms.Tensor(np.ones((1, 32), np.int32))
    decoder = StaticDecoder(model, config, 1, 32)
    decoder.logits(ids, mask).asnumpy()
    token = ids[:, -1:]
    decoder.logits(ms.ops.cat([ids, token], 1), ms.ops.cat([mask, mask[:, :1]], 1)).asnumpy()  # compile decode
    best = float("inf")
    for step in range(steps - 1):
        length = 34 + step
        full = ms.Tensor(np.ones((1, length), np.int32))
        start = time.perf_counter()
        decoder.logits(ms.ops.zeros((1, length), ms.int64), full).asnumpy()
        best = min(best, time.perf_counter() - start)
    return best * 1000


class _Chain(nn.Cell):
    def __init__(self, length: int):
        super().__init__()
        self.length = length

    def construct(self, x):
        for _ in range(self.length):
            x = x * 1.0001
        return x


def kernel_us(length: int = 200) -> float:
    x = ms.Tensor(np.ones((1, 1, 576), np.float32))
    step = ms.jit(_Chain(length).construct)
    step(x).asnumpy()
    start = time.perf_counter()
    for _ in range(20):
        y = step(x)
    y.asnumpy()
    return (time.perf_counter() - start) / 20 / length * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    args = parser.parse_args()
    real = AutoModelForCausalLM.from_pretrained(args.model)
    config = AutoConfig.from_pretrained(args.model)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 64, 16
    with tempfile.TemporaryDirectory():
        skeleton = AutoModelForCausalLM.from_config(config)
    full, empty = decode_ms(real), decode_ms(skeleton)
    print(f"compiled decode step, batch 1: {full:.1f} ms with SmolLM2's weights, {empty:.1f} ms with the same "
          f"graph at hidden size 64 -> launch overhead {empty:.1f} ms, compute and weight traffic {full - empty:.1f} ms")  # fmt: skip
    print(f"one trivial kernel inside a compiled graph: {kernel_us():.1f} us")


if __name__ == "__main__":
    main()
