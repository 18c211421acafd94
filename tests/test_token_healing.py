"""token_healing=True against transformers + PyTorch on the real SmolLM2 (its tokenizer's vocabulary is what healing
searches): the healed prompts and the generated tokens are transformers'."""

import pytest
import torch
import transformers
from helpers import TINY, ms_tensor

from mindone.transformers import AutoModelForCausalLM

pytestmark = pytest.mark.slow
PROMPTS = ["The link is http", "I like the colour purp", "Paris is the capital of Fra", "x"]


@pytest.fixture(scope="module")
def models(smollm2_dir):
    reference = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    return reference, AutoModelForCausalLM.from_pretrained(smollm2_dir), transformers.AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_token_healing_gives_transformers_tokens(models, prompt):
    reference, model, tokenizer = models
    ids = tokenizer(prompt, return_tensors="np").input_ids
    options = dict(max_new_tokens=8, do_sample=False, token_healing=True, tokenizer=tokenizer)
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), **options).numpy().tolist()
    assert model.generate(ms_tensor(ids), **options).asnumpy().tolist() == expected


def test_token_healing_rewrites_a_cut_word_and_needs_the_tokenizer(smollm2_dir, tmp_path):
    """A random tiny model with SmolLM2's tokenizer picks among a cut word's extensions at random: healing then
    changes the prompt, the same way in both frameworks."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    config = transformers.LlamaConfig(**{**TINY, "vocab_size": len(tokenizer), "bos_token_id": 1, "eos_token_id": 2})
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    reference.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    ids = tokenizer("I read a book abou", return_tensors="np").input_ids
    healed = model.heal_tokens(ms_tensor(ids), tokenizer).asnumpy()
    with torch.no_grad():
        assert healed.tolist() == reference.heal_tokens(torch.tensor(ids), tokenizer).numpy().tolist()
    assert healed.tolist() != ids.tolist()
    with pytest.raises(ValueError, match="you must pass the model's tokenizer"):
        model.generate(ms_tensor(ids), max_new_tokens=2, token_healing=True)
