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
