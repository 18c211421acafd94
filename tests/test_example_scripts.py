"""generate.py and generate_pt.py are not Llama-only: for each architecture that differs most from Llama, a tiny
random model that speaks SmolLM2's tokenizer goes through both scripts (compare.py --run) with identical output."""

import os
import subprocess
import sys

import pytest
import torch
import transformers
from helpers import TINY

pytestmark = pytest.mark.slow

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "transformers", "llama")
ARCHITECTURES = {
    "gpt2": dict(num_key_value_heads=None),
    "phi3": dict(partial_rotary_factor=0.5),
    "gemma3_text": dict(head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
}


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_parity_scripts_agree_on_architecture(model_type, smollm2_dir, tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    config = transformers.AutoConfig.for_model(
        model_type, **{**TINY, "vocab_size": len(tokenizer), "bos_token_id": 1, "eos_token_id": 2, **ARCHITECTURES[model_type]}
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    args = ["--model_name_or_path", str(tmp_path), "--chat", "--prompt", "What is the capital of France?",
            "--prompt", "Hi", "--max_new_tokens", "12"]  # fmt: skip
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "compare.py"), "--run", *args],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "row 0: identical" in result.stdout and "row 1: identical" in result.stdout


def test_generate_py_keeps_a_gguf_quantized_with_the_same_tokens(smollm2_gguf, tmp_path):
    """generate.py --keep_quantized generates the tokens of the same file dequantized; the PyTorch script refuses
    the flag."""
    import json

    directory, name = os.path.split(smollm2_gguf)
    args = ["--model_name_or_path", directory, "--gguf_file", name, "--chat", "--prompt", "What is the capital of France?",
            "--max_new_tokens", "16"]  # fmt: skip
    outputs = []
    for extra in ([], ["--keep_quantized"]):
        out = tmp_path / f"out{len(outputs)}.json"
        result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "generate.py"), *args, *extra, "--output_json",
                                 str(out)], capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append([row["output_ids"] for row in json.loads(out.read_text())["rows"]])
    assert len(outputs[0][0]) > 16 and outputs[0] == outputs[1]
    refused = subprocess.run([sys.executable, os.path.join(EXAMPLES, "generate_pt.py"), *args, "--keep_quantized"],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert refused.returncode == 2 and "--keep_quantized is for generate.py" in refused.stderr
