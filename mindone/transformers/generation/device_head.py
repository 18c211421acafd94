"""The step between the model's logits and the next token, as one cell that compiles into the decode graph.

Greedy and sampling loops used to run the logits processors, the token choice and the bookkeeping as a chain of
small PyNative ops around the compiled model step. `DeviceHead` moves the processors that transformers' generate()
builds for the common options, and the choice itself, into the step: each decode step then costs one graph launch
and one small device-to-host copy (the chosen tokens), and the loop's bookkeeping runs in numpy on the host.

What depends on the step number is decided on the host and passed in as a flag per processor (min_length,
min_new_tokens, forced eos/bos, begin-suppressed tokens); the repetition penalty reads the sequences so far from a
fixed-size token matrix; sampling draws with uniform numbers from the host's seeded generator, so the same seed
gives the same tokens on every path. Any other processor (a user's own, n-gram blocking, sequence biases, ...)
keeps the host loop, unchanged."""

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import mint, nn, ops

from .. import backend
from . import logits_process as lp

# Processors whose __call__ depends on the scores only and compiles as written.
_SCORES_ONLY = (
    lp.TemperatureLogitsWarper, lp.TopKLogitsWarper, lp.TopPLogitsWarper, lp.MinPLogitsWarper,
    lp.TypicalLogitsWarper, lp.EpsilonLogitsWarper, lp.EtaLogitsWarper, lp.InfNanRemoveLogitsProcessor,
    lp.LogitNormalization,
)  # fmt: skip


_ARGMAX = ops.Argmax(axis=-1, output_type=ms.int32)


def sample_tokens(probs: ms.Tensor, uniforms: ms.Tensor) -> ms.Tensor:
    """One draw per row from `probs` [batch, vocab] by inverting its cumulative sum at `uniforms` [batch] in [0, 1):
    the first token whose cumulative probability exceeds u * total."""
    cumulative = backend.cumsum(probs, -1)
    threshold = uniforms.reshape(-1, 1) * cumulative[:, -1:]
    chosen = (cumulative <= threshold).astype(ms.int32).sum(-1)
    return mint.clamp(chosen, max=probs.shape[-1] - 1)


def draw_uniforms(batch: int) -> np.ndarray:
    """Uniform numbers from numpy's global generator, which `set_seed` seeds."""
    return np.random.random_sample(batch).astype(np.float32)


class _Step:
    """One processor as the head applies it: `kind` is "scores" (unconditional), "suppress_always", "suppress" /
    "force" (a token mask applied when the host's flag for it is set) or "repetition". `key` is what the compiled
    graph depends on: host-decided settings (lengths) are not part of it."""

    def __init__(self, kind: str, processor, tokens=None, vocab: int = 0):
        self.kind, self.processor = kind, processor
        self.mask = None
        if tokens is not None:
            mask = np.zeros((1, vocab), bool)
            mask[0, [t for t in tokens if 0 <= t < vocab]] = True
            self.mask = ms.Tensor(mask)
            # what "force" sets: made here because a compiled where() of two scalars crashes MindSpore 2.7's compiler
            self.forced = ms.Tensor(np.where(mask, 0.0, lp.NEG_INF).astype(np.float32))
            self.key = (kind, tuple(tokens))
        else:
            self.key = (kind, type(processor).__name__, sorted(vars(processor).items()))


def _plan(processors, vocab: int) -> Optional[list]:
    """The head's steps for `processors`, or None when one of them has to run on the host."""
    steps = []
    for p in processors:
        kind = type(p)
        if kind in _SCORES_ONLY:
            steps.append(_Step("scores", p))
        elif kind is lp.SuppressTokensLogitsProcessor:
            steps.append(_Step("suppress_always", p, p.suppress_tokens, vocab))
        elif kind in (lp.MinLengthLogitsProcessor, lp.MinNewTokensLengthLogitsProcessor):
            steps.append(_Step("suppress", p, p.eos_token_id, vocab))
        elif kind is lp.SuppressTokensAtBeginLogitsProcessor:
            steps.append(_Step("suppress", p, p.begin_suppress_tokens, vocab))
        elif kind is lp.ForcedEOSTokenLogitsProcessor:
            steps.append(_Step("force", p, p.eos_token_id, vocab))
        elif kind is lp.ForcedBOSTokenLogitsProcessor:
            steps.append(_Step("force", p, [p.bos_token_id], vocab))
        elif kind is lp.RepetitionPenaltyLogitsProcessor and not p.prompt_ignore_length:
            steps.append(_Step("repetition", p))
        else:
            return None
    return steps


def _flag_on(processor, length: int) -> bool:
    """Whether a length-gated processor acts when the sequences are `length` tokens long (its own rule)."""
    if isinstance(processor, lp.MinLengthLogitsProcessor):
        return length < processor.min_length
    if isinstance(processor, lp.MinNewTokensLengthLogitsProcessor):
        return length - processor.prompt_length_to_skip < processor.min_new_tokens
    if isinstance(processor, lp.SuppressTokensAtBeginLogitsProcessor):
        return length == processor.begin_index
    if isinstance(processor, lp.ForcedEOSTokenLogitsProcessor):
        return length == processor.max_length - 1
    return length == 1  # ForcedBOSTokenLogitsProcessor


class DeviceHead(nn.Cell):
    """(logits [batch, vocab] float32, *inputs) -> next tokens [batch] int32, plus the processed scores and the
    logits when the caller records them. `inputs` are what `inputs()` makes for the step: flags [n] (or [n, batch,
    1], one per row, for rows at different lengths: continuous.py), uniforms [batch], tokens [batch, width], those
    the head uses."""

    def __init__(self, steps: list, do_sample: bool, return_scores: bool):
        super().__init__(auto_prefix=False)
        self.steps, self.do_sample, self.return_scores = steps, do_sample, return_scores
        self.gated = [i for i, s in enumerate(steps) if s.kind in ("suppress", "force")]
        self.uses_tokens = any(s.kind == "repetition" for s in steps)
        self.key = repr(([step.key for step in steps], do_sample, return_scores))

    @classmethod
    def build(cls, processors, generation_config, vocab: int) -> Optional["DeviceHead"]:
        """The head for these processors, or None when one of them must run on the host."""
        steps = _plan(processors, vocab)
        if steps is None:
            return None
        gc = generation_config
        record = gc.return_dict_in_generate and (gc.output_scores or gc.output_logits)
        return cls(steps, gc.do_sample, bool(record))

    # ------------------------------------------------------------ host side
    def inputs(self, ids: np.ndarray, width: int) -> tuple:
        """The head's per-step inputs (numpy) for the sequences so far ([batch, length] numpy): the flags of the
        length-gated processors, the uniforms of sampling and the token matrix of the repetition penalty, each only
        when used (an unused graph input costs ~5 ms per call on the CPU backend). The token matrix is `width`
        wide whatever the length, so one compiled graph serves every step."""
        batch, length = ids.shape
        inputs = []
        if self.gated:
            inputs.append(np.array([_flag_on(self.steps[i].processor, length) for i in self.gated]))
        if self.do_sample:
            inputs.append(draw_uniforms(batch))
        if self.uses_tokens:  # padded with each row's first token: penalising it again changes nothing
            tokens = np.repeat(ids[:, :1], width, axis=1)
            tokens[:, :length] = ids
            inputs.append(tokens.astype(np.int32))
        return tuple(inputs)

    # ------------------------------------------------------------ device side
    def construct(self, logits, *inputs):
        flags = inputs[0] if self.gated else None
        uniforms = inputs[1 if self.gated else 0] if self.do_sample else None
        tokens = inputs[-1] if self.uses_tokens else None
        scores = logits
        flag = 0
        for step in self.steps:
            if step.kind in ("scores", "repetition"):
                scores = step.processor(tokens, scores)
            elif step.kind == "suppress_always":
                scores = mint.where(step.mask, ms.Tensor(lp.NEG_INF, scores.dtype), scores)
            elif step.kind == "suppress":  # the flag folded into the [1, vocab] mask: one select over the scores
                scores = mint.where(mint.logical_and(step.mask, flags[flag]), ms.Tensor(lp.NEG_INF, scores.dtype), scores)
                flag += 1
            else:
                forced = backend.expand_as(step.forced, scores)
                scores = mint.where(backend.expand_as(flags[flag], scores), forced, scores)
                flag += 1
        if self.do_sample:
            tokens_out = sample_tokens(mint.softmax(scores, dim=-1), uniforms)
        else:
            tokens_out = _ARGMAX(scores)
        if self.return_scores:
            return tokens_out, scores, logits
        return tokens_out
