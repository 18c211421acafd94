"""End to end on the real SmolLM2-135M-Instruct checkpoint: this project against transformers + PyTorch."""

import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers

from mindone.transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow
EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "transformers", "llama")
PROMPTS = ["What is the capital of France?", "Name three colours.", "Explain in one sentence why the sky is blue."]


@pytest.fixture(scope="module")
def models(smollm2_dir):
    reference = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return reference, AutoModelForCausalLM.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.padding_side = "left"
    return tokenizer


def _chat(tokenizer, prompts):
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    encoded = tokenizer(texts, return_tensors="np", padding=True)
    return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)


def _both(models, ids, mask, **kwargs):
    reference, model = models
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs).numpy().tolist()
    ours = model.generate(ms.Tensor(ids), attention_mask=ms.Tensor(mask), **kwargs).asnumpy().tolist()
    return ours, expected


def test_greedy_30_tokens_single_prompt(models, tokenizer):
    ids, mask = _chat(tokenizer, PROMPTS[2:])
    ours, expected = _both(models, ids, mask, max_new_tokens=30, do_sample=False)
    assert ours == expected


def test_greedy_30_tokens_left_padded_batch(models, tokenizer):
    ids, mask = _chat(tokenizer, PROMPTS)
    assert len(set(mask.sum(1).tolist())) == 3  # three different prompt lengths
    ours, expected = _both(models, ids, mask, max_new_tokens=30, do_sample=False)
    assert ours == expected


def test_chat_prompt_stops_at_eos(models, tokenizer):
    ids, mask = _chat(tokenizer, PROMPTS[:1])
    ours, expected = _both(models, ids, mask, max_new_tokens=40)
    completion = ours[0][ids.shape[1] :]
    assert ours == expected and completion[-1] == tokenizer.eos_token_id == 2 and len(completion) < 40
    assert tokenizer.decode(completion, skip_special_tokens=True) == "The capital of France is Paris."


def test_logits_error_is_fp32_noise(models, tokenizer, smollm2_dir):
    """Max-abs against PyTorch fp32 is ~1e-4 on logits of magnitude ~30 (hidden states reach 2e4), so both are
    compared with a float64 PyTorch run: our error must be of the same order as PyTorch's own fp32 error."""
    reference, model = models
    ids, mask = _chat(tokenizer, PROMPTS)
    real = mask.astype(bool)
    with torch.no_grad():
        exact = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float64)
        truth = exact(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()[real]
        theirs = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()[real]
    ours = model(input_ids=ms.Tensor(ids), attention_mask=ms.Tensor(mask)).logits.asnumpy()[real]
    torch_error, our_error = np.abs(theirs - truth).max(), np.abs(ours - truth).max()
    assert our_error <= 3 * torch_error and np.abs(ours - theirs).max() <= 5e-4, (our_error, torch_error)


def test_parity_pair_scripts_agree(smollm2_dir, tmp_path):
    args = ["--model_name_or_path", smollm2_dir, "--chat", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "compare.py"), "--run", *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "row 0: identical" in result.stdout and "row 1: identical" in result.stdout
    assert "prompt logits max-abs difference" in result.stdout


def test_parity_pair_multi_turn_chat_with_beams(smollm2_dir, tmp_path):
    conversation = [
        {"role": "user", "content": "My name is Ana."},
        {"role": "assistant", "content": "Nice to meet you, Ana!"},
        {"role": "user", "content": "What is my name?"},
    ]
    messages = tmp_path / "conversation.json"
    messages.write_text(json.dumps(conversation))
    args = ["--model_name_or_path", smollm2_dir, "--messages_json", str(messages), "--num_beams", "3",
            "--max_new_tokens", "16"]  # fmt: skip
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "compare.py"), "--run", *args],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0 and "row 0: identical" in result.stdout, result.stdout + result.stderr
    assert "What is my name?" in result.stdout


def test_generate_script_runs_without_torch(smollm2_dir, tmp_path):
    """The library and the MindSpore script must not need torch (make demo installs none)."""
    out = tmp_path / "out.json"
    code = (
        "import sys, runpy; sys.modules['torch'] = None; "
        f"sys.argv = ['generate.py', '--model_name_or_path', {smollm2_dir!r}, '--chat', '--max_new_tokens', '8', "
        f"'--output_json', {str(out)!r}]; "
        f"runpy.run_path({os.path.join(EXAMPLES, 'generate.py')!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "torch" not in json.dumps(json.loads(out.read_text())["framework"])
    assert "--- output 0 ---\nThe capital of France is Paris." in result.stdout


def test_repetition_penalty_and_no_repeat_ngram_greedy(models, tokenizer):
    ids, mask = _chat(tokenizer, PROMPTS[1:])
    ours, expected = _both(models, ids, mask, max_new_tokens=30, repetition_penalty=1.3, no_repeat_ngram_size=3)
    assert ours == expected


def test_four_beam_search(models, tokenizer):
    ids, mask = _chat(tokenizer, PROMPTS[:2])
    ours, expected = _both(models, ids, mask, max_new_tokens=30, num_beams=4, num_return_sequences=2)
    assert ours == expected and len(ours) == 4


def test_prompt_lookup_equals_greedy_on_a_repetitive_prompt(models, tokenizer):
    text = "List: apple, banana, cherry. Repeat the list exactly: apple, banana,"
    ids = tokenizer([text], return_tensors="np")["input_ids"].astype(np.int64)
    mask = np.ones_like(ids)
    greedy, expected = _both(models, ids, mask, max_new_tokens=20)
    lookup, _ = _both(models, ids, mask, max_new_tokens=20, prompt_lookup_num_tokens=4)
    assert lookup == greedy == expected


@pytest.mark.parametrize("strategy", [dict(), dict(num_beams=4)], ids=["greedy", "beam4"])
def test_static_cache_generation_identical(models, tokenizer, strategy):
    reference, model = models
    ids, mask = _chat(tokenizer, PROMPTS)
    ours, expected = _both(models, ids, mask, max_new_tokens=30, **strategy)
    static = model.generate(ms.Tensor(ids), attention_mask=ms.Tensor(mask), max_new_tokens=30,
                            cache_implementation="static", **strategy)  # fmt: skip
    assert static.asnumpy().tolist() == ours == expected
