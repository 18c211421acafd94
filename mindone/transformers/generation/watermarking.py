"""Watermarking as transformers does it (Kirchenbauer et al., "A Watermark for Large Language Models"): each step
the previous token seeds a generator whose permutation of the vocabulary picks the "green" tokens, whose scores get
a bias; the detector counts green tokens in a text and turns the count into a z-score.

transformers draws the permutations from PyTorch's CPU generator; `generator_permutation` reproduces that stream
exactly (a Mersenne Twister seeded with the seed's low 32 bits, then a Fisher-Yates pass taking each swap index as
the next 32-bit output modulo the remaining length), so the same text is watermarked and detected here as there.
`generator_randint` reproduces torch.randint from the same generator, for SynthID's sampling table (synthid.py)."""

from dataclasses import dataclass
from typing import Optional, Union

import mindspore as ms
import numpy as np

from .logits_process import LogitsProcessor, host_array

_TABLE_SIZE = 1_000_003


def _torch_cpu_generator(seed: int) -> np.random.MT19937:
    """The Mersenne Twister of torch.Generator().manual_seed(seed): seeded with the seed's low 32 bits."""
    bits = np.random.MT19937()
    bits._legacy_seeding(int(seed) & 0xFFFFFFFF)
    return bits


def generator_permutation(n: int, seed: int) -> np.ndarray:
    """torch.randperm(n, generator=torch.Generator().manual_seed(seed)) on the CPU, as an int64 array."""
    draws = _torch_cpu_generator(seed).random_raw(max(n - 1, 0)).astype(np.int64)
    swaps = (draws % np.arange(n, 1, -1, dtype=np.int64) + np.arange(n - 1)).tolist()
    permutation = list(range(n))
    for i, z in enumerate(swaps):
        permutation[i], permutation[z] = permutation[z], permutation[i]
    return np.array(permutation, np.int64)


def generator_randint(low: int, high: int, size: int, seed: int) -> np.ndarray:
    """torch.randint(low, high, (size,), generator=torch.Generator().manual_seed(seed)) on the CPU, as an int64
    array: each value is the next 32-bit output modulo the range, plus low."""
    span = high - low
    if not 0 < span < 2**32:
        raise ValueError(f"randint range [{low}, {high}) must hold 1 to 2**32 - 1 values (wider ones draw 64 bits)")
    draws = _torch_cpu_generator(seed).random_raw(size).astype(np.int64)
    return draws % span + low


class WatermarkLogitsProcessor(LogitsProcessor):
    """Adds `bias` to the scores of the green tokens: the first greenlist_ratio of a permutation of the vocabulary
    seeded from the last `context_width` tokens ("lefthash": the last token; "selfhash": the candidate token too,
    checked over the 40 best candidates). `device` is transformers' argument; MindSpore places the tensors."""

    def __init__(self, vocab_size, device=None, greenlist_ratio: float = 0.25, bias: float = 2.0,
                 hashing_key: int = 15485863, seeding_scheme: str = "lefthash", context_width: int = 1):  # fmt: skip
        if seeding_scheme not in ["selfhash", "lefthash"]:
            raise ValueError(f"seeding_scheme has to be one of [`selfhash`, `lefthash`], but found {seeding_scheme}")
        if greenlist_ratio >= 1.0 or greenlist_ratio <= 0.0:
            raise ValueError(
                f"greenlist_ratio has be in range between 0.0 and 1.0, exclusively. but found {greenlist_ratio}"
            )
        self.vocab_size = vocab_size
        self.greenlist_size = int(vocab_size * greenlist_ratio)
        self.bias = bias
        self.seeding_scheme = seeding_scheme
        self.hash_key = hashing_key
        self.context_width = context_width
        self.table_size = _TABLE_SIZE
        self._fixed_table = None

    @property
    def fixed_table(self) -> np.ndarray:
        """The permutation that selfhash seeds go through (built on first use: 1M entries)."""
        if self._fixed_table is None:
            self._fixed_table = generator_permutation(self.table_size, self.hash_key)
        return self._fixed_table

    def seed_of(self, input_seq: np.ndarray) -> int:
        input_seq = input_seq[-self.context_width :]
        if self.seeding_scheme == "selfhash":
            a = self.fixed_table[input_seq % self.table_size] + 1
            b = self.fixed_table[input_seq[-1] % self.table_size] + 1
            with np.errstate(over="ignore"):
                seed = int((np.int64(self.hash_key) * a * b).min())  # int64 products wrap, as in PyTorch
        else:
            seed = self.hash_key * int(input_seq[-1])
        return seed % (2**64 - 1)

    def _get_greenlist_ids(self, input_seq) -> np.ndarray:
        permutation = generator_permutation(self.vocab_size, self.seed_of(np.asarray(input_seq, np.int64)))
        return permutation[: self.greenlist_size]

    def _score_rejection_sampling(self, input_seq: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The green tokens among the 40 best candidates, each judged by the greenlist its own choice would seed."""
        best = np.argsort(-scores, kind="stable")
        green = [best[i] for i in range(40) if best[i] in self._get_greenlist_ids(np.append(input_seq, best[i]))]
        return np.array(green, np.int64)

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] < self.context_width:
            return scores
        ids, host = host_array(input_ids), scores.asnumpy()
        bonus = np.zeros(host.shape, np.float32)
        for row, input_seq in enumerate(ids.astype(np.int64)):
            if self.seeding_scheme == "selfhash":
                green = self._score_rejection_sampling(input_seq, host[row])
            else:
                green = self._get_greenlist_ids(input_seq)
            bonus[row, green] = self.bias
        return scores + ms.Tensor(bonus, scores.dtype)


@dataclass
class WatermarkDetectorOutput:
    """Per row of the detected batch: tokens scored, green tokens, their fraction, the z-score and its p-value, and
    (with return_dict) the prediction and its confidence (1 - p-value)."""

    num_tokens_scored: Optional[np.ndarray] = None
    num_green_tokens: Optional[np.ndarray] = None
    green_fraction: Optional[np.ndarray] = None
    z_score: Optional[np.ndarray] = None
    p_value: Optional[np.ndarray] = None
    prediction: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None


class WatermarkDetector:
    """Tells watermarked text: counts the green tokens among the scored ones (each token after the first
    context_width, judged by the greenlist its prefix seeds) and compares the count with greenlist_ratio by a
    z-test. `ignore_repeated_ngrams` counts each distinct n-gram once (transformers 4.57 counts every occurrence
    even then: it keys its counter by tensor identity); `device` is transformers' argument and unused here."""

    def __init__(self, model_config, device, watermarking_config, ignore_repeated_ngrams: bool = False,
                 max_cache_size: int = 128):  # fmt: skip
        if not isinstance(watermarking_config, dict):
            watermarking_config = watermarking_config.to_dict()
        encoder_decoder = getattr(model_config, "is_encoder_decoder", False)
        self.bos_token_id = model_config.decoder_start_token_id if encoder_decoder else model_config.bos_token_id
        self.greenlist_ratio = watermarking_config["greenlist_ratio"]
        self.ignore_repeated_ngrams = ignore_repeated_ngrams
        self.processor = WatermarkLogitsProcessor(vocab_size=model_config.vocab_size, device=device, **watermarking_config)
        self.max_cache_size = max_cache_size
        self._scores = {}

    def _get_ngram_score(self, prefix: tuple, target: int) -> bool:
        key = (prefix, target)
        if key not in self._scores:
            if len(self._scores) >= self.max_cache_size:
                self._scores.pop(next(iter(self._scores)))
            self._scores[key] = bool(target in self.processor._get_greenlist_ids(np.array(prefix, np.int64)))
        return self._scores[key]

    def _score_ngrams_in_passage(self, input_ids: np.ndarray) -> tuple:
        batch_size, length = input_ids.shape
        selfhash = int(self.processor.seeding_scheme == "selfhash")
        n = self.processor.context_width + 1 - selfhash
        scored, green = np.zeros(batch_size), np.zeros(batch_size)
        for row in range(batch_size):
            ngrams = [tuple(input_ids[row, i : i + n].tolist()) for i in range(length - n + 1)]
            if self.ignore_repeated_ngrams:
                ngrams = list(dict.fromkeys(ngrams))
            hits = [self._get_ngram_score(ngram if selfhash else ngram[:-1], ngram[-1]) for ngram in ngrams]
            scored[row], green[row] = len(ngrams), sum(hits)
        return scored, green

    def _compute_z_score(self, green_token_count: np.ndarray, total_num_tokens: np.ndarray) -> np.ndarray:
        expected = self.greenlist_ratio
        return (green_token_count - expected * total_num_tokens) / np.sqrt(total_num_tokens * expected * (1 - expected))

    def _compute_pval(self, x, loc=0, scale=1):
        z = (x - loc) / scale
        return 1 - (0.5 * (1 + np.sign(z) * (1 - np.exp(-2 * z**2 / np.pi))))

    def __call__(self, input_ids, z_threshold: float = 3.0, return_dict: bool = False) -> Union[WatermarkDetectorOutput, np.ndarray]:
        ids = host_array(input_ids)
        if ids[0, 0] == self.bos_token_id:  # as transformers: one row starting with bos means all do
            ids = ids[:, 1:]
        if ids.shape[-1] - self.processor.context_width < 1:
            raise ValueError(
                f"Must have at least `1` token to score after the first "
                f"min_prefix_len={self.processor.context_width} tokens required by the seeding scheme."
            )
        scored, green = self._score_ngrams_in_passage(ids.astype(np.int64))
        z_score = self._compute_z_score(green, scored)
        prediction = z_score > z_threshold
        if not return_dict:
            return prediction
        p_value = self._compute_pval(z_score)
        return WatermarkDetectorOutput(num_tokens_scored=scored, num_green_tokens=green, green_fraction=green / scored,
                                       z_score=z_score, p_value=p_value, prediction=prediction, confidence=1 - p_value)  # fmt: skip
