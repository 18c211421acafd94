"""Runs the Python snippets of the docs in order, against the real SmolLM2 checkpoint, so they stay true."""

import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
pytestmark = pytest.mark.slow


def _run_snippets(page: str, model_dir: str) -> int:
    with open(os.path.join(ROOT, page)) as f:
        snippets = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    namespace = {}
    for number, code in enumerate(snippets):
        code = code.replace('"models/SmolLM2-135M-Instruct"', repr(model_dir))
        exec(compile(code, f"{page} snippet {number}", "exec"), namespace)
    return len(snippets)


def test_generation_guide_snippets_run(smollm2_dir):
    assert _run_snippets("docs/generation.md", smollm2_dir) >= 10


@pytest.mark.parametrize("page", ["docs/quickstart.md", "README.md", "docs/quantization.md"])
def test_quickstart_snippets_run(smollm2_dir, page):
    assert _run_snippets(page, smollm2_dir) >= 1
