"""Sampling cannot match PyTorch draw for draw, so its distribution is tested: a model with fixed logits is sampled
through generate() 20,000 times per warper combination and the counts are compared (chi-square, alpha = 0.001)
with the distribution transformers' own warpers produce from the same logits."""

from dataclasses import dataclass

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers
from scipy import stats

from mindone.transformers import GenerationMixin, PreTrainedModel, set_seed
from mindone.transformers.modeling_outputs import CausalLMOutputWithPast

VOCAB, DRAWS = 16, 20000
LOGITS = np.random.default_rng(42).normal(size=VOCAB).astype(np.float32) * 2


class FixedLogitsLM(PreTrainedModel, GenerationMixin):
    """Every position predicts LOGITS: generate() only adds its processors and the sampler."""

    def __init__(self):
        super().__init__(transformers.PretrainedConfig(vocab_size=VOCAB))
        self.logits = ms.Tensor(LOGITS.reshape(1, 1, VOCAB))

    def construct(self, input_ids=None, logits_to_keep=1, **kwargs):
        batch, length = input_ids.shape
        return CausalLMOutputWithPast(logits=self.logits.broadcast_to((batch, logits_to_keep or length, VOCAB)))


@dataclass
class Combo:
    kwargs: dict

    def reference_probs(self) -> np.ndarray:
        config = transformers.GenerationConfig(do_sample=True, **self.kwargs)
        warpers = transformers.LogitsProcessorList()
        for cls, key, arg in [
            (transformers.TemperatureLogitsWarper, "temperature", None),
            (transformers.TopKLogitsWarper, "top_k", None),
            (transformers.TopPLogitsWarper, "top_p", None),
            (transformers.MinPLogitsWarper, "min_p", None),
            (transformers.TypicalLogitsWarper, "typical_p", "mass"),
            (transformers.EpsilonLogitsWarper, "epsilon_cutoff", "epsilon"),
            (transformers.EtaLogitsWarper, "eta_cutoff", "epsilon"),
        ]:
            if self.kwargs.get(key, 0) != 0:
                warpers.append(cls(**{arg or key: getattr(config, key)}))
        scores = warpers(torch.zeros((1, 1), dtype=torch.long), torch.tensor(LOGITS).reshape(1, -1))
        return torch.softmax(scores, -1).double().numpy()[0]


COMBOS = {
    "plain": Combo({"top_k": 0}),
    "temperature": Combo({"temperature": 0.6, "top_k": 0}),
    "top_k": Combo({"top_k": 5}),
    "top_p": Combo({"top_p": 0.7, "top_k": 0}),
    "min_p": Combo({"min_p": 0.2, "top_k": 0}),
    "typical_p": Combo({"typical_p": 0.6, "top_k": 0}),
    "epsilon": Combo({"epsilon_cutoff": 0.05, "top_k": 0}),
    "eta": Combo({"eta_cutoff": 0.02, "top_k": 0}),
    "temperature_top_k_top_p": Combo({"temperature": 1.3, "top_k": 8, "top_p": 0.85}),
}


@pytest.fixture(scope="module")
def model():
    return FixedLogitsLM()


@pytest.mark.parametrize("name", sorted(COMBOS))
def test_sampled_tokens_follow_the_processed_distribution(model, name):
    combo = COMBOS[name]
    set_seed(1234)
    prompt = ms.Tensor(np.ones((DRAWS, 1), np.int32))
    out = model.generate(prompt, do_sample=True, max_new_tokens=1, pad_token_id=0, eos_token_id=None, **combo.kwargs)
    counts = np.bincount(out.asnumpy()[:, 1], minlength=VOCAB)
    expected = combo.reference_probs() * DRAWS
    assert counts[expected == 0].sum() == 0, "a filtered token was sampled"
    kept = expected > 0
    assert stats.chisquare(counts[kept], expected[kept] / expected[kept].sum() * counts[kept].sum()).pvalue > 1e-3


def test_same_seed_same_samples(model):
    prompt = ms.Tensor(np.ones((64, 1), np.int32))
    draws = []
    for seed in (7, 7, 8):
        set_seed(seed)
        draws.append(model.generate(prompt, do_sample=True, max_new_tokens=3, pad_token_id=0, top_k=0).asnumpy().tolist())
    assert draws[0] == draws[1] != draws[2]


def test_speculative_sampling_keeps_the_target_distribution():
    """Assisted sampling accepts a drafted token with probability min(1, p/q) and otherwise resamples from
    max(0, p - q): the first token then follows the main model's distribution p whatever the draft's q is
    (transformers' _speculative_sampling, Leviathan et al. 2023, algorithm 1)."""
    from mindone.transformers.generation.candidate_generator import speculative_sampling

    rng = np.random.default_rng(7)
    vocab, draws = 8, 2000
    draft_logits, target_logits = rng.normal(size=(1, vocab)) * 2, rng.normal(size=(2, vocab)) * 2
    q = np.exp(draft_logits[0]) / np.exp(draft_logits[0]).sum()
    p = np.exp(target_logits[0]) / np.exp(target_logits[0]).sum()
    set_seed(3)
    draft, target = ms.Tensor(draft_logits, ms.float32), ms.Tensor(target_logits, ms.float32)
    first = [speculative_sampling(np.array([rng.choice(vocab, p=q)]), draft, target, False)[0][0] for _ in range(draws)]
    counts = np.bincount(first, minlength=vocab)
    assert stats.chisquare(counts, p * draws).pvalue > 0.001
    assert stats.chisquare(counts, q * draws).pvalue < 1e-6  # the draft's own distribution is clearly rejected
