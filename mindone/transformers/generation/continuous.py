"""Continuous batching: a fixed number of slots over one StaticCache, each slot holding its own sequence.

Every decode step is one compiled launch for all slots (the same `_CompiledStep` that generate() uses), with each
row at its own position: rows are never padded, a row's keys sit in slots [0, its length) of its cache row and
the attention mask hides everything past its position. When a row finishes (an end-of-sequence token, a stop
string, its own max_new_tokens), its slot takes the next request at once: the prompt is prefilled alone, op by op,
into a one-row cache (in chunks when it is long) and its keys and values are copied into the free cache row while
the other rows keep their state. A greedy row therefore gives exactly the tokens of generate() on that prompt
alone; a sampled row draws from its own generator, so its tokens depend on its seed, not on its neighbours.

`GenerationMixin.generate_batch` is the entry point (transformers 4.57's name and result shape); the JSONL batch
job runs the same engine."""

import copy
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Iterator, Optional

import mindspore as ms
import numpy as np
from mindspore import mint
from transformers.generation.configuration_utils import GenerationMode

from .. import backend
from ..cache_utils import StaticCache
from ..modeling_rope_utils import HOST_UPDATED_ROPE, rope_type_of
from .configuration_utils import check_meaningful
from .decoders import cache_length_for, compiled_step
from .device_head import DeviceHead, _flag_on, _plan, sample_tokens

PREFILL_CHUNK = 1024  # longer prompts are prefilled in pieces of this many tokens (bounds the attention scratch)


class RequestStatus(Enum):
    """transformers' request states (continuous_batching.requests.RequestStatus) that this engine goes through."""

    PENDING = "pending"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass
class GenerationOutput:
    """One request's result, with the fields of transformers' continuous-batching GenerationOutput: the generated
    tokens end with the one that stopped the row (an eos token is included)."""

    request_id: str
    prompt_ids: list = field(default_factory=list)
    generated_tokens: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    error: Optional[str] = None
    status: RequestStatus = RequestStatus.PENDING
    created_time: float = field(default_factory=time.time)


@dataclass
class BatchRequest:
    """What the engine is asked for: a prompt, its generation config (already merged with the model's) and the
    seed of its sampling generator."""

    request_id: str
    input_ids: list
    generation_config: object
    seed: int = 0


class _Row:
    """A request in a slot: its tokens so far, its processors and stopping criteria, its generator."""

    def __init__(self, request: BatchRequest, config, processors, criteria, plan):
        self.request, self.config, self.processors, self.criteria, self.plan = request, config, processors, criteria, plan
        self.ids = np.asarray(request.input_ids, np.int64)
        self.prompt_length = len(request.input_ids)
        self.rng = np.random.default_rng(request.seed)
        self.done = False

    def uniform(self) -> float:
        return np.float32(self.rng.random())

    def append(self, token: int) -> None:
        """Adds the chosen token; the row is done when a stopping criterion says so."""
        self.ids = np.append(self.ids, np.int64(token))
        self.done = bool(self.criteria.host_done(self.ids[None], None)[0])

    def output(self) -> GenerationOutput:
        status = RequestStatus.FINISHED if self.done else RequestStatus.DECODING
        return GenerationOutput(self.request.request_id, list(map(int, self.ids[: self.prompt_length])),
                                list(map(int, self.ids[self.prompt_length :])), status=status)  # fmt: skip


def check_engine_config(model, generation_config) -> None:
    """Raises ValueError when continuous batching cannot serve this generation config or model."""
    check_meaningful(generation_config)
    mode = generation_config.get_generation_mode()
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        raise ValueError(f"generate_batch serves greedy decoding and sampling, not {mode.value}; use generate() for it")
    if generation_config.guidance_scale not in (None, 1):
        raise ValueError("generate_batch does not run classifier-free guidance (guidance_scale): each row would need a "
                         "second, unconditional model pass; use generate()")  # fmt: skip
    if generation_config.num_return_sequences not in (None, 1):
        raise ValueError("generate_batch returns one sequence per prompt: num_return_sequences must be 1")
    if rope_type_of(model.config) in HOST_UPDATED_ROPE:
        raise ValueError(f"{rope_type_of(model.config)} rope scaling depends on the whole batch's length, which rows at "
                         "different positions cannot share; use generate()")  # fmt: skip
    if not getattr(model, "_supports_static_cache", False):
        raise ValueError(f"{type(model).__name__} has no static cache, which continuous batching needs; use generate()")
    if ms.get_context("mode") == ms.GRAPH_MODE:
        raise ValueError("generate_batch prefills prompts op by op and compiles its decode step itself: run it in the "
                         "default PYNATIVE_MODE context")  # fmt: skip


def max_positions_of(model) -> Optional[int]:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


class ContinuousBatcher:
    """`slots` rows over caches of `cache_length` positions. `run(requests)` yields each request's
    GenerationOutput as soon as it finishes; `add` and `step` serve a caller whose requests arrive over time
    (continuous_batching.ContinuousBatchingManager). Every request must fit: prompt plus new tokens <= cache_length."""

    def __init__(self, model, slots: int, cache_length: int, tokenizer=None, prefill_chunk: int = PREFILL_CHUNK,
                 hold_finished: bool = False):  # fmt: skip
        self.model, self.slots, self.cache_length, self.tokenizer = model, slots, cache_length, tokenizer
        self.rows, self.hold_finished = [None] * slots, hold_finished
        self.prefill_chunk = prefill_chunk
        self.max_positions = max_positions_of(model)
        self.vocab = model.config.get_text_config().vocab_size
        self.prefill_cache = StaticCache(model.layers_config, cache_length, 1, model.dtype)
        self.ones = ms.Tensor(np.ones((slots, cache_length), np.int32))
        self.head = None

    # ------------------------------------------------------------ admission
    def _admit(self, request: BatchRequest) -> _Row:
        model = self.model
        config = copy.deepcopy(request.generation_config)
        model._prepare_special_tokens(config, True)
        length = len(request.input_ids)
        model._prepare_generated_length(config, True, length)
        model._validate_generated_length(config, length, True)
        limit, limited_by = self.cache_length, "the batch's cache"
        if self.max_positions is not None and self.max_positions < limit:
            limit, limited_by = self.max_positions, "the model"
        if config.max_length > limit:
            raise ValueError(f"the prompt of {length} tokens with {config.max_length - length} new tokens needs "
                             f"{config.max_length} positions and {limited_by} has {limit}; shorten the prompt or "
                             "lower max_new_tokens")  # fmt: skip
        processors = model._get_logits_processor(config, length, None, None, [request.input_ids])
        criteria = model._get_stopping_criteria(config, None, self.tokenizer)
        head = DeviceHead.build(processors, config, self.vocab)
        if self.head is None:
            self.head = head if head is not None else False
        elif (head.key if head else None) != (self.head.key if self.head else None):
            raise ValueError("requests of one generate_batch call must share their generation options (all but "
                             "max_new_tokens and stop strings); run the others in another call")  # fmt: skip
        plan = _plan(processors, self.vocab) if head is not None else None
        return _Row(request, config, processors, criteria, plan)

    # ------------------------------------------------------------ the loop
    def run(self, requests: Iterable[BatchRequest]) -> Iterator[GenerationOutput]:
        pending = iter(requests)
        while True:
            while self.free_slot() is not None:
                request = next(pending, None)
                if request is None:
                    break
                output = self.add(request)
                if output.status != RequestStatus.DECODING:
                    yield output
            if not self.busy():
                return
            yield from (row.output() for row in self.step() if row.done)

    def free_slot(self) -> Optional[int]:
        return next((slot for slot, row in enumerate(self.rows) if row is None), None)

    def busy(self) -> bool:
        """Whether a slot holds a row still generating."""
        return any(row is not None and not row.done for row in self.rows)

    def add(self, request: BatchRequest) -> GenerationOutput:
        """Prefills the request into a free slot. Returns its output so far: DECODING with the first token while
        it runs on, FINISHED when that token already ended it, FAILED when it cannot run (the slot stays free)."""
        slot = self.free_slot()
        try:
            row = self._admit(request)
            row.append(self._prefill(row, slot))
        except (ValueError, NotImplementedError) as err:
            return GenerationOutput(request.request_id, list(request.input_ids), error=str(err),
                                    status=RequestStatus.FAILED)  # fmt: skip
        self._place(row, slot)
        return row.output()

    def step(self) -> list:
        """One decode step for every running row; returns those rows (`row.done` once finished)."""
        running = [row if row is not None and not row.done else None for row in self.rows]
        for slot, token in enumerate(self._decode(running)):
            row = running[slot]
            if row is not None:
                row.append(token)
                self._place(row, slot)
        return [row for row in running if row is not None]

    def remove(self, request_id: str) -> bool:
        """Frees the slot of the request (running or finished and held); False when no slot holds it."""
        for slot, row in enumerate(self.rows):
            if row is not None and row.request.request_id == request_id:
                self.rows[slot] = None
                return True
        return False

    def _place(self, row: _Row, slot: int) -> None:
        """A running row keeps its slot; a finished one frees it unless finished rows are held (manual eviction)."""
        self.rows[slot] = row if not row.done or self.hold_finished else None

    def _prefill(self, row: _Row, slot: int) -> int:
        """Runs the row's prompt into the one-row cache, copies its keys and values into cache row `slot` and
        returns the first generated token."""
        ids, length = row.ids, len(row.ids)
        logits = None
        for start in range(0, length, self.prefill_chunk):
            end = min(length, start + self.prefill_chunk)
            positions = np.arange(start, end, dtype=np.int32)
            outputs = self.model(
                input_ids=ms.Tensor(ids[None, start:end]),
                attention_mask=self.ones[:1],
                position_ids=ms.Tensor(positions[None]),
                past_key_values=self.prefill_cache,
                cache_position=ms.Tensor(positions),
                use_cache=True,
                logits_to_keep=1,
            )
            logits = outputs.logits
        backend.copy_cache_row(self._step().cache, self.prefill_cache, slot, length)
        logits = logits[:, -1, :].astype(ms.float32)
        if self.head:
            tokens = self.head(logits, *(ms.Tensor(x) for x in self._head_inputs([row])))
            return int(tokens.asnumpy()[0])
        return int(self._host_choice(row, logits))

    def _step(self):
        return compiled_step(self.model, self.slots, self.cache_length, self.head or None)

    def _decode(self, rows: list) -> np.ndarray:
        """One compiled step for every slot (idle slots run at position 0; their outputs are ignored)."""
        last = np.array([[row.ids[-1] if row else 0] for row in rows], np.int64)
        position = np.array([[len(row.ids) - 1 if row else 0] for row in rows], np.int32)
        step = self._step()
        if self.head:
            return step.run(last, position, position, self.ones, *self._head_inputs(rows))[0].asnumpy()
        logits = step.run(last, position, position, self.ones)[0].astype(ms.float32)
        logits = logits.reshape(logits.shape[0], logits.shape[-1])
        return np.array([self._host_choice(row, logits[i : i + 1]) if row else 0 for i, row in enumerate(rows)])

    # ------------------------------------------------------------ choosing tokens
    def _head_inputs(self, rows: list) -> tuple:
        """The device head's inputs with one row per slot: each row's own length-gated flags, uniform and tokens."""
        head, count = self.head, len(rows)
        inputs = []
        if head.gated:
            flags = np.zeros((len(head.gated), count, 1), bool)
            for i, row in enumerate(rows):
                if row is not None:
                    flags[:, i, 0] = [_flag_on(row.plan[g].processor, len(row.ids)) for g in head.gated]
            inputs.append(flags)
        if head.do_sample:
            inputs.append(np.array([row.uniform() if row else 0.5 for row in rows], np.float32))
        if head.uses_tokens:  # padded with each row's first token, as DeviceHead.inputs does
            tokens = np.zeros((count, self.cache_length), np.int32)
            for i, row in enumerate(rows):
                if row is not None:
                    tokens[i] = row.ids[0]
                    tokens[i, : len(row.ids)] = row.ids
            inputs.append(tokens)
        return tuple(inputs)

    @staticmethod
    def _host_choice(row: _Row, logits: ms.Tensor) -> int:
        """The row's own processors over its own tokens, then argmax or a draw: for processors the head lacks."""
        scores = row.processors(ms.Tensor(row.ids[None]), logits)
        if row.config.do_sample:
            uniforms = ms.Tensor(np.array([row.uniform()], np.float32))
            return int(sample_tokens(mint.softmax(scores, dim=-1), uniforms).asnumpy()[0])
        return int(backend.argmax(scores).asnumpy()[0])


def cache_length_of(model, requests: list) -> int:
    """The cache length that fits every request, as a power of two (at least 256) so that jobs share few graphs,
    but not past the model's positions (longer requests fail on their own)."""
    max_positions = max_positions_of(model)
    needed = 1
    for request in requests:
        config = request.generation_config
        new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - len(request.input_ids)
        needed = max(needed, len(request.input_ids) + max(new, 0))
    length = cache_length_for(needed)
    return min(length, max_positions) if max_positions else length
