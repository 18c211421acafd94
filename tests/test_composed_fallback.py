"""The composed MindSpore ops (no C++ kernels: no compiler, a failed build, or MINDONE_FUSED_KERNELS=0) keep every
architecture at parity with transformers + PyTorch, and quantized layers at their dequantized twins' tokens: those
tests run again in a process with the kernels switched off."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def _without_kernels(test_file: str, selection: str) -> str:
    """Runs the selected tests with MINDONE_FUSED_KERNELS=0; returns pytest's summary line (asserting they passed)."""
    env = {**os.environ, "MINDONE_FUSED_KERNELS": "0", "GLOG_v": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(TESTS / test_file), "-k", selection],
        capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=1800, check=False,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0 and " passed" in summary and "skipped" not in summary, result.stdout[-4000:]
    return summary


@pytest.mark.slow
def test_architectures_with_the_composed_ops():
    _without_kernels(
        "test_architectures.py",
        "prefill_logits or cached_decode or greedy_and_left_padded or static_cache_path or graph_mode",
    )


@pytest.mark.slow
def test_quantized_layers_with_the_composed_ops():
    """Quantized linear layers dequantize with MindSpore ops, then multiply: GGUF weights kept quantized, and
    every architecture quantized while loading (int8 and int4)."""
    assert "6 passed" in _without_kernels("test_gguf_archs.py", "kept_quantized_equals_its_dequantized_twin")
    assert "18 passed" in _without_kernels("test_quantize_on_load.py", "equals_its_dequantized_twin")
