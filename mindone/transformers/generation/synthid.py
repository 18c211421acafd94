"""SynthID text watermarking as transformers 4.57 does it (Dathathri et al., Nature 2024,
https://www.nature.com/articles/s41586-024-08025-4).

Each generation step hashes the last ngram_len - 1 tokens with every candidate token and every watermarking key
(one key per tournament layer) into a g-value, 0 or 1, read from a random sampling table; the processor moves
probability mass towards candidates with g-value 1, layer by layer, except where the same context was already
watermarked recently. A detector recomputes the g-values of a text and a Bayesian model turns them into the
probability that it is watermarked.

The hashing (a linear congruential generator over int64 that wraps around), the context history and the g-values
run on the host in numpy, exactly as transformers computes them with torch; the sampling table is transformers'
torch.randint draw, reproduced without torch (watermarking.generator_randint). The scores are updated on the host
too, where the g-values are (SynthIDTextWatermarkLogitsProcessor.update_scores says why in float64)."""

from dataclasses import dataclass
from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import mint, ops
from mindspore.common.initializer import Normal
from numpy.lib.stride_tricks import sliding_window_view
from transformers import PretrainedConfig
from transformers.utils import ModelOutput

from ..layers import _param
from ..masking_utils import dtype_min
from ..modeling_utils import PreTrainedModel
from .logits_process import LogitsProcessor, host_array
from .watermarking import generator_randint


class SynthIDTextWatermarkState:
    """What the processor remembers between steps, per row: the last ngram_len - 1 tokens (zeros at the first step,
    as in transformers) and the hashes of the latest `context_history_size` contexts, newest first."""

    def __init__(self, batch_size: int, ngram_len: int, context_history_size: int):
        self.context = np.zeros((batch_size, ngram_len - 1), np.int64)
        self.context_history = np.zeros((batch_size, context_history_size), np.int64)
        self.num_calls = 0

    def record_context(self, context_hash: np.ndarray) -> np.ndarray:
        """Whether each row's `context_hash` [batch] is among its remembered ones ([batch, 1] bool); then remembers
        it, forgetting the oldest."""
        context_hash = context_hash[:, None]
        repeated = (self.context_history == context_hash).any(axis=1, keepdims=True)
        self.context_history = np.concatenate([context_hash, self.context_history[:, :-1]], axis=1)
        return repeated


class SynthIDTextWatermarkLogitsProcessor(LogitsProcessor):
    """SynthID's tournament watermark over [batch, vocab] scores; returns log-probabilities (transformers appends it
    after the sampling warpers). Keeps a state across calls: a new processor per generation, as generate() builds.
    `device` is transformers' argument and unused (the state is on the host; MindSpore places the tensors). The
    g-values and masks are int64 / bool numpy arrays; input ids may be MindSpore tensors or arrays."""

    def __init__(self, ngram_len: int, keys: list[int], sampling_table_size: int, sampling_table_seed: int,
                 context_history_size: int, device=None, skip_first_ngram_calls: bool = False,
                 debug_mode: bool = False):  # fmt: skip
        if not isinstance(ngram_len, int) or ngram_len < 1:
            raise ValueError(f"ngram_len must be a positive integer (tokens hashed per g-value), got {ngram_len!r}")
        if len(keys) == 0:
            raise ValueError("keys must hold one integer watermarking key per tournament layer, got none")
        if sampling_table_size < 1:
            raise ValueError(f"sampling_table_size must be at least 1 (default 2**16), got {sampling_table_size}")
        self.ngram_len = ngram_len
        self.keys = np.asarray(keys, np.int64)
        self.sampling_table = generator_randint(0, 2, sampling_table_size, sampling_table_seed)
        self.context_history_size = context_history_size
        self.device = device
        self.state = None
        self.skip_first_ngram_calls = skip_first_ngram_calls
        self.debug_mode = debug_mode

    def _init_state(self, batch_size: int):
        self.state = SynthIDTextWatermarkState(batch_size, self.ngram_len, self.context_history_size)

    def __call__(self, input_ids, scores: ms.Tensor) -> ms.Tensor:
        ids = self._host_ids(input_ids)
        batch_size, vocab_size = scores.shape
        if self.debug_mode:
            scores = ops.ones_like(scores)
        self._advance_context(ids, batch_size)
        self.state.num_calls += 1
        if self.skip_first_ngram_calls and self.state.num_calls < self.ngram_len:
            return scores
        candidates = np.broadcast_to(np.arange(vocab_size, dtype=np.int64), (batch_size, vocab_size))
        ngram_keys, context_hash = self._compute_keys(self.state.context, candidates)
        watermarked = self.update_scores(scores, self.sample_g_values(ngram_keys))
        repeated = self.state.record_context(context_hash)
        return mint.where(ms.Tensor(repeated), scores, watermarked)

    def _advance_context(self, ids: np.ndarray, batch_size: int) -> None:
        """Starts the state at the first call; later calls shift in the token the previous step chose."""
        if self.state is None:
            self._init_state(batch_size)
            return
        if self.state.context.shape[0] != batch_size:
            raise ValueError(
                f"this processor's state holds {self.state.context.shape[0]} rows but the scores have {batch_size}: "
                "use a new SynthIDTextWatermarkLogitsProcessor for each generation"
            )
        self.state.context = np.concatenate([self.state.context, ids[:, -1:]], axis=1)[:, 1:]

    def update_scores(self, scores: ms.Tensor, g_values) -> ms.Tensor:
        """Log-probabilities after the tournament: at each layer, a candidate's probability is scaled by
        1 + its g-value - the layer's expected g-value. Scores [batch, vocab], g-values [batch, vocab, depth].

        Computed in float64 and rounded once: where a layer's expected g-value nears 1 the subtraction cancels, and
        in float32 the result then depends on the order of the sums, which MindSpore's and PyTorch's kernels do not
        share; in float64 the remaining difference is transformers' own float32 rounding."""
        logits = scores.astype(ms.float32).asnumpy().astype(np.float64)
        g_values = np.asarray(host_array(g_values), np.float64)
        with np.errstate(invalid="ignore"):  # a row of -inf only has no probabilities: nan, as in PyTorch
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        for layer in range(g_values.shape[2]):
            g_layer = g_values[:, :, layer]
            probs *= 1 + g_layer - (g_layer * probs).sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):  # probabilities below float32's range are 0 there
            log_probs = np.log(probs.astype(np.float32).astype(np.float64))
        log_probs[~np.isfinite(log_probs)] = dtype_min(scores.dtype)
        return ms.Tensor(log_probs, scores.dtype)

    def accumulate_hash(self, current_hash, data, multiplier: int = 6364136223846793005,
                        increment: int = 1) -> np.ndarray:  # fmt: skip
        """Folds data's last axis into current_hash (broadcast against data's other axes) with the linear
        congruential step hash = (hash + value) * multiplier + increment, in int64 that wraps around."""
        current_hash, data = np.asarray(current_hash, np.int64), np.asarray(data, np.int64)
        multiplier, increment = np.int64(multiplier), np.int64(increment)
        with np.errstate(over="ignore"):
            for i in range(data.shape[-1]):
                current_hash = (current_hash + data[..., i]) * multiplier + increment
        return current_hash

    def _hash_with_keys(self, hashes: np.ndarray) -> np.ndarray:
        """[...] hashes -> [..., depth]: each hash continued with each watermarking key."""
        return self.accumulate_hash(hashes[..., None], self.keys[:, None])

    def compute_ngram_keys(self, ngrams) -> np.ndarray:
        """Ngrams [batch, num_ngrams, ngram_len] -> their keys [batch, num_ngrams, depth]."""
        ngrams = np.asarray(host_array(ngrams), np.int64)
        if ngrams.ndim != 3 or ngrams.shape[2] != self.ngram_len:
            raise ValueError(
                f"ngrams must have shape (batch_size, num_ngrams, ngram_len={self.ngram_len}), got {ngrams.shape}"
            )
        hashes = self.accumulate_hash(np.ones(ngrams.shape[:2], np.int64), ngrams)
        return self._hash_with_keys(hashes)

    def _compute_keys(self, n_minus_1_grams: np.ndarray, indices: np.ndarray) -> tuple:
        """Keys [batch, num_indices, depth] of each row's context followed by each of its candidate `indices`, and
        the hash of the context alone [batch]."""
        context_hash = self.accumulate_hash(np.ones(n_minus_1_grams.shape[0], np.int64), n_minus_1_grams)
        hashes = self.accumulate_hash(context_hash[:, None], indices[:, :, None])
        return self._hash_with_keys(hashes), context_hash

    def sample_g_values(self, ngram_keys) -> np.ndarray:
        """Keys [...] -> g-values [...]: the sampling table read at each key modulo its size."""
        return self.sampling_table[np.asarray(host_array(ngram_keys), np.int64) % self.sampling_table.shape[0]]

    def _host_ids(self, input_ids) -> np.ndarray:
        ids = np.asarray(host_array(input_ids), np.int64)
        if ids.ndim != 2:
            raise ValueError(f"Input ids should be of shape (batch_size, input_len), but is {ids.shape}")
        return ids

    def _scored_ids(self, input_ids) -> np.ndarray:
        """The input ids on the host, checked to hold at least one ngram per row."""
        ids = self._host_ids(input_ids)
        if ids.shape[1] < self.ngram_len:
            raise ValueError(
                f"input ids of length {ids.shape[1]} are too short for ngram_len={self.ngram_len}: pass at least "
                f"{self.ngram_len} tokens per row"
            )
        return ids

    def compute_g_values(self, input_ids) -> np.ndarray:
        """G-values [batch, input_len - (ngram_len - 1), depth] of every ngram of the input ids [batch, input_len]."""
        ngrams = sliding_window_view(self._scored_ids(input_ids), self.ngram_len, axis=1)
        return self.sample_g_values(self.compute_ngram_keys(ngrams))

    def compute_context_repetition_mask(self, input_ids) -> np.ndarray:
        """[batch, input_len - (ngram_len - 1)] bool: False where the ngram's context (its first ngram_len - 1
        tokens) was seen among the previous `context_history_size` contexts, which generation left unwatermarked."""
        ids = self._scored_ids(input_ids)
        contexts = sliding_window_view(ids[:, :-1], self.ngram_len - 1, axis=1)
        state = SynthIDTextWatermarkState(ids.shape[0], self.ngram_len, self.context_history_size)
        context_hashes = self.accumulate_hash(np.ones(contexts.shape[:2], np.int64), contexts)
        repeated = [state.record_context(context_hash) for context_hash in context_hashes.T]
        return ~np.concatenate(repeated, axis=1)

    def compute_eos_token_mask(self, input_ids, eos_token_id: int) -> np.ndarray:
        """[batch, input_len] bool: True before each row's first `eos_token_id`, False from it on."""
        return np.cumsum(self._host_ids(input_ids) == eos_token_id, axis=1) == 0

    def expected_mean_g_value(self, vocab_size: int, coinflip_prob: float = 0.5) -> float:
        """The mean g-value of watermarked text under a uniform language model, for one tournament layer."""
        return coinflip_prob + coinflip_prob * (1 - coinflip_prob) * (1 - (1 / vocab_size))


class BayesianDetectorConfig(PretrainedConfig):
    """transformers' BayesianDetectorConfig, which transformers defines in a module that needs PyTorch: the number of
    tournament layers and the prior probability that a text is watermarked. Its config.json is the same file."""

    def __init__(self, watermarking_depth: Optional[int] = None, base_rate: float = 0.5, **kwargs):
        self.watermarking_depth, self.base_rate = watermarking_depth, base_rate
        self.model_name, self.watermarking_config = None, None  # set_detector_information; config.json may hold them
        super().__init__(**kwargs)

    def set_detector_information(self, model_name, watermarking_config):
        self.model_name, self.watermarking_config = model_name, watermarking_config


@dataclass
class BayesianWatermarkDetectorModelOutput(ModelOutput):
    """`loss` (with labels) and `posterior_probabilities` [batch] of a BayesianDetectorModel."""

    loss: Optional[ms.Tensor] = None
    posterior_probabilities: Optional[ms.Tensor] = None


class BayesianDetectorWatermarkedLikelihood(ms.nn.Cell):
    """P(g-values | watermarked) for binary g-values. Whether a tournament match at layer l had two distinct tokens
    (only then can the watermark show) is a logistic regression on the g-values of the layers before l."""

    def __init__(self, watermarking_depth: int):
        super().__init__()
        self.watermarking_depth = watermarking_depth
        self.beta = _param((1, 1, watermarking_depth), Normal(0.001, -2.5))
        self.delta = _param((1, 1, watermarking_depth, watermarking_depth), Normal(0.001))
        self.earlier_layers = ms.Tensor(np.tri(watermarking_depth, k=-1, dtype=bool))  # [layer, earlier layer]

    def _compute_latents(self, g_values: ms.Tensor) -> tuple:
        """(P(one unique token), P(two unique tokens)) per row, position and layer."""
        weights = self.delta[0, 0] * self.earlier_layers.astype(self.delta.dtype)
        logits = mint.matmul(g_values, weights.swapaxes(0, 1)) + self.beta
        p_two_unique_tokens = mint.sigmoid(logits)
        return 1 - p_two_unique_tokens, p_two_unique_tokens

    def construct(self, g_values: ms.Tensor) -> ms.Tensor:
        p_one_unique_token, p_two_unique_tokens = self._compute_latents(g_values)
        return 0.5 * ((g_values + 0.5) * p_two_unique_tokens + p_one_unique_token)


class BayesianDetectorModel(PreTrainedModel):
    """SynthID's Bayesian detector: P(watermarked | g-values) by Bayes' rule from a learned watermarked likelihood,
    the unwatermarked one (every g-value a fair coin) and a learned prior. Parameter names are transformers', so a
    detector saved by transformers loads here and the other way round.

    One difference: transformers 4.57 squeezes every size-1 axis of its layer logits, so with a single tournament
    layer, or a batch of several texts with one scored position each, its rows mix; here every row gets the
    posterior it gets alone (as in transformers for a batch of one)."""

    config_class = BayesianDetectorConfig
    base_model_prefix = "model"

    def __init__(self, config):
        if not isinstance(config.watermarking_depth, int) or config.watermarking_depth < 1:
            raise ValueError(
                f"BayesianDetectorConfig.watermarking_depth is {config.watermarking_depth!r}: set it to the number "
                "of watermarking keys (len(watermarking_config.keys))"
            )
        super().__init__(config)
        self.watermarking_depth = config.watermarking_depth
        self.base_rate = config.base_rate
        self.likelihood_model_watermarked = BayesianDetectorWatermarkedLikelihood(self.watermarking_depth)
        self.prior = _param((1,), self.base_rate)

    def _compute_posterior(self, likelihoods_watermarked, likelihoods_unwatermarked, mask, prior) -> ms.Tensor:
        """P(watermarked | g-values) [batch] from the likelihoods [batch, length, depth] of the g-values kept by
        `mask` [batch, length] and the prior P(watermarked)."""
        prior = mint.clamp(prior, 1e-5, 1 - 1e-5)
        log_odds = mint.log(mint.clamp(likelihoods_watermarked, min=1e-30)) - mint.log(
            mint.clamp(likelihoods_unwatermarked, min=1e-30)
        )
        surprisal_likelihood = (log_odds * mask[:, :, None]).reshape(log_odds.shape[0], -1).sum(axis=1)
        surprisal_prior = mint.log(prior) - mint.log(1 - prior)
        return mint.sigmoid(surprisal_prior + surprisal_likelihood)

    def construct(self, g_values, mask, labels=None, loss_batch_weight=1, return_dict=False):
        """Posterior P(watermarked | g_values) [batch] for g-values [batch, length, depth] (0 or 1) and a mask
        [batch, length] of the positions to count; with `labels` [batch] (1: watermarked) also the training loss
        (binary cross-entropy plus loss_batch_weight times the squared delta weights)."""
        g_values, mask = _float_tensor(g_values, self.prior.dtype), _float_tensor(mask, self.prior.dtype)
        if g_values.ndim != 3 or g_values.shape[2] != self.watermarking_depth:
            raise ValueError(
                f"g_values must have shape (batch_size, seq_len, watermarking_depth={self.watermarking_depth}), got "
                f"{tuple(g_values.shape)}"
            )
        likelihoods_watermarked = self.likelihood_model_watermarked(g_values)
        likelihoods_unwatermarked = ops.full_like(g_values, 0.5)
        posterior = self._compute_posterior(likelihoods_watermarked, likelihoods_unwatermarked, mask, self.prior)
        loss = None if labels is None else self._loss(posterior, labels, loss_batch_weight)
        if return_dict:
            return BayesianWatermarkDetectorModelOutput(loss=loss, posterior_probabilities=posterior)
        return (posterior,) if loss is None else (posterior, loss)

    def _loss(self, posterior: ms.Tensor, labels, loss_batch_weight) -> ms.Tensor:
        labels = _float_tensor(labels, posterior.dtype)
        if labels.shape != posterior.shape:
            raise ValueError(f"labels must have shape {tuple(posterior.shape)} (one per text), got {labels.shape}")
        posterior = mint.clamp(posterior, 1e-5, 1 - 1e-5)
        cross_entropy = -(labels * mint.log(posterior) + (1 - labels) * mint.log(1 - posterior)).mean()
        return cross_entropy + (self.likelihood_model_watermarked.delta**2).sum() * loss_batch_weight


def _float_tensor(values, dtype) -> ms.Tensor:
    return values.astype(dtype) if isinstance(values, ms.Tensor) else ms.Tensor(np.asarray(values), dtype)


class SynthIDTextWatermarkDetector:
    """Tells SynthID-watermarked text: the g-values of a tokenized text, masked where its context repeats or after
    its first eos token, go through a trained BayesianDetectorModel. Returns what the model returns: (posterior,)."""

    def __init__(self, detector_module: BayesianDetectorModel, logits_processor: SynthIDTextWatermarkLogitsProcessor,
                 tokenizer: Any):  # fmt: skip
        self.detector_module = detector_module
        self.logits_processor = logits_processor
        self.tokenizer = tokenizer

    def __call__(self, tokenized_outputs):
        processor = self.logits_processor
        eos_mask = processor.compute_eos_token_mask(tokenized_outputs, self.tokenizer.eos_token_id)
        repetition_mask = processor.compute_context_repetition_mask(tokenized_outputs)
        g_values = processor.compute_g_values(tokenized_outputs)
        return self.detector_module(g_values, repetition_mask & eos_mask[:, processor.ngram_len - 1 :])
