"""transformers' continuous-batching API over this library's engine (continuous.py): `generate_batch` for a list of
prompts, and `init_continuous_batching()` for a `ContinuousBatchingManager` that takes requests while it runs.

The manager runs the engine in a background thread: requests wait in a queue, each free slot takes the next one,
and every decode step advances all running rows at once. Results come back through `get_result`, iteration or
`request_id_iter`; with `streaming=True` every step's partial output is sent (status DECODING), else only
finished or failed ones."""

import copy
import logging
import queue
import threading
from typing import Optional

import numpy as np
from tqdm import tqdm

from .continuous import (
    PREFILL_CHUNK,
    BatchRequest,
    ContinuousBatcher,
    GenerationOutput,
    RequestStatus,
    cache_length_of,
    check_engine_config,
    max_positions_of,
)
from .decoders import cache_length_for

logger = logging.getLogger(__name__)

DEFAULT_SLOTS = 8
DEFAULT_CACHE_LENGTH = 2048  # positions per slot when requests arrive over time and their lengths are unknown


class ContinuousBatchingManager:
    """Accepts generation requests (`add_request`) while a background thread generates them over `max_batch_size`
    slots of `max_cache_length` positions each. A request whose prompt plus new tokens does not fit fails with
    that message. `start()` before use, `stop()` after (it finishes what is queued first)."""

    def __init__(self, model, generation_config, manual_eviction: bool = False, max_queue_size=0,
                 streaming: bool = True, slice_inputs: bool = True, max_batch_size: int = DEFAULT_SLOTS,
                 max_cache_length: Optional[int] = None, tokenizer=None):  # fmt: skip
        config, _ = model._prepare_generation_config(generation_config)
        check_engine_config(model, config)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model, self.generation_config = model, config
        self.manual_eviction, self.streaming = manual_eviction, streaming
        self.slice_inputs = slice_inputs  # transformers' argument, kept: rows here are never padded
        self.max_batch_size, self.tokenizer = max_batch_size, tokenizer
        self.max_cache_length = max_cache_length or _default_cache_length(model)
        self.input_queue = queue.Queue(maxsize=max_queue_size)
        self.output_queue = queue.Queue()
        self.stop_event = threading.Event()
        self._request_counter, self._request_lock = 0, threading.Lock()
        self._live, self._cancelled, self._evicted = set(), set(), queue.Queue()  # ids queued or running; to drop
        self._wake = threading.Event()
        self._generation_thread, self.engine, self._adding = None, None, None

    # ------------------------------------------------------------ the thread
    def start(self) -> None:
        if self.is_running():
            logger.warning("Manager thread is already running.")
            return
        self.stop_event.clear()
        self._generation_thread = threading.Thread(target=self._run_generation_loop)
        self._generation_thread.start()

    def is_running(self) -> bool:
        return self._generation_thread is not None and self._generation_thread.is_alive()

    def stop(self, block: bool = False, timeout: Optional[float] = None) -> None:
        """Asks the thread to stop once the queued and running requests are done; `block` waits for it."""
        if self._generation_thread is None:
            logger.warning("Manager not started.")
            return
        self.stop_event.set()
        self._wake.set()
        if block:
            self.join(timeout)

    def join(self, timeout: Optional[float] = None) -> None:
        if self._generation_thread is not None:
            self._generation_thread.join(timeout=timeout)
            if self._generation_thread.is_alive():
                logger.warning("Generation thread did not exit after join timeout.")
            else:
                self._generation_thread = None

    # ------------------------------------------------------------ requests
    def add_request(self, input_ids, request_id: Optional[str] = None, max_new_tokens: Optional[int] = None) -> str:
        """Queues a prompt (token ids); returns its request id ("req_0", "req_1", ... unless given)."""
        if request_id is None:
            with self._request_lock:
                request_id, self._request_counter = f"req_{self._request_counter}", self._request_counter + 1
        prompt = list(map(int, np.asarray(input_ids).reshape(-1)))
        if not prompt:
            raise ValueError("a request needs at least one prompt token id")
        config = self.generation_config
        if max_new_tokens is not None:
            config = copy.deepcopy(config)
            config.update(max_new_tokens=max_new_tokens)
        seed = int(np.random.randint(0, 2**31 - 1))
        self._live.add(request_id)
        self.input_queue.put(BatchRequest(request_id, prompt, config, seed), block=True, timeout=10)
        self._wake.set()
        return request_id

    def add_requests(self, inputs: list, **kwargs) -> None:
        for input_ids in inputs:
            self.add_request(input_ids, **kwargs)

    def cancel_request(self, request_id: str) -> None:
        """Drops a queued or running request; nothing more is sent for it."""
        if request_id in self._live:
            self._cancelled.add(request_id)
            self._wake.set()

    def evict_request_from_cache(self, request_id: str) -> None:
        """Frees the slot a finished request still holds (manual_eviction=True keeps it until this call)."""
        if not self.manual_eviction:
            raise RuntimeError("Manual eviction is not enabled for this manager.")
        self._evicted.put(request_id)
        self._wake.set()

    # ------------------------------------------------------------ results
    def get_result(self, request_id=None, timeout=None) -> Optional[GenerationOutput]:
        """The next output (of `request_id` if given; another request's output is put back), or None after
        `timeout` seconds."""
        if self._generation_thread is None and self.output_queue.empty():
            return None
        try:
            result = self.output_queue.get(block=True, timeout=timeout)
        except queue.Empty:
            return None
        if request_id is not None and result.request_id != request_id:
            self.output_queue.put(result)
            return None
        return result

    def __iter__(self):
        while self.is_running() or not self.output_queue.empty():
            result = self.get_result(timeout=0.1)
            if result is not None:
                yield result

    def request_id_iter(self, request_id):
        """The outputs of one request as they come, until it finishes, fails or is cancelled (or the thread ends)."""
        while request_id not in self._cancelled:
            running = self.is_running()
            result = self.get_result(request_id=request_id, timeout=0.1) if running else self._take(request_id)
            if result is not None:
                yield result
                if result.status in (RequestStatus.FINISHED, RequestStatus.FAILED):
                    return
            elif not running:
                return

    def _take(self, request_id) -> Optional[GenerationOutput]:
        """The first queued output of `request_id`, the others left in order (for a stopped manager)."""
        with self.output_queue.mutex:
            waiting = self.output_queue.queue
            found = next((output for output in waiting if output.request_id == request_id), None)
            if found is not None:
                waiting.remove(found)
            return found

    # ------------------------------------------------------------ the loop (background thread)
    def _run_generation_loop(self) -> None:
        try:
            chunk = self.generation_config.prefill_chunk_size or PREFILL_CHUNK
            self.engine = ContinuousBatcher(self.model, self.max_batch_size, self.max_cache_length, self.tokenizer,
                                            chunk, hold_finished=self.manual_eviction)  # fmt: skip
            with self.model._generation_scope():
                while not self.stop_event.is_set() or self._has_pending():
                    self._free_slots()
                    self._fill_free_slots()
                    if self.engine.busy():
                        self._advance()
                    else:  # nothing to decode: sleep until a request, a cancel, an eviction or stop()
                        self._wake.wait(0.05)
                        self._wake.clear()
        except Exception as err:  # noqa: BLE001 - every waiting request learns why the thread ended
            logger.error(f"Error in generation loop: {err}", exc_info=True)
            self._fail_all(err)

    def _has_pending(self) -> bool:
        return self.engine.busy() or not self.input_queue.empty()

    def _free_slots(self) -> None:
        """Cancelled and evicted requests leave their slots; after stop() so do finished ones still held."""
        for request_id in list(self._cancelled):
            if self.engine.remove(request_id):
                self._forget(request_id)
        while not self._evicted.empty():
            self.engine.remove(self._evicted.get())
        if self.stop_event.is_set():
            for row in list(self.engine.rows):
                if row is not None and row.done:
                    self.engine.remove(row.request.request_id)

    def _fill_free_slots(self) -> None:
        while self.engine.free_slot() is not None:
            try:
                request = self._adding = self.input_queue.get_nowait()
            except queue.Empty:
                return
            if request.request_id in self._cancelled:
                self._forget(request.request_id)
            else:
                self._send(self.engine.add(request))
            self._adding = None

    def _advance(self) -> None:
        for row in self.engine.step():
            if self.streaming or row.done:
                self._send(row.output())

    def _send(self, output: GenerationOutput) -> None:
        ended = output.status in (RequestStatus.FINISHED, RequestStatus.FAILED)
        cancelled = output.request_id in self._cancelled
        if ended:  # a request cancelled as it ended has nothing left to drop
            self._forget(output.request_id)
        if not cancelled and (self.streaming or ended):
            self.output_queue.put(output)

    def _forget(self, request_id: str) -> None:
        self._cancelled.discard(request_id)
        self._live.discard(request_id)

    def _fail_all(self, error: Exception) -> None:
        self.stop_event.set()
        engine_rows = self.engine.rows if self.engine else []
        failed = [row.request for row in engine_rows if row is not None and not row.done]
        failed += [self._adding] if self._adding is not None else []
        while not self.input_queue.empty():
            failed.append(self.input_queue.get_nowait())
        for request in failed:
            self._live.discard(request.request_id)
            self.output_queue.put(GenerationOutput(request.request_id, list(request.input_ids), error=str(error),
                                                   status=RequestStatus.FAILED))  # fmt: skip


class ContinuousMixin:
    """transformers' continuous-batching methods, mixed into GenerationMixin."""

    def init_continuous_batching(self, generation_config=None, manual_eviction: bool = False, max_queue_size: int = 0,
                                 streaming: bool = False, slice_inputs: bool = True, max_batch_size: int = DEFAULT_SLOTS,
                                 max_cache_length: Optional[int] = None, tokenizer=None) -> ContinuousBatchingManager:  # fmt: skip
        """A manager for requests that arrive over time. Beyond transformers' arguments: `max_batch_size` slots of
        `max_cache_length` positions (default: the model's positions, at most 2048), and `tokenizer` for stop
        strings. `slice_inputs` is a padding choice of transformers' paged cache; rows here are never padded."""
        return ContinuousBatchingManager(self, generation_config, manual_eviction, max_queue_size, streaming,
                                         slice_inputs, max_batch_size, max_cache_length, tokenizer)  # fmt: skip

    def generate_batch(self, inputs: list, generation_config=None, progress_bar: bool = True, slice_inputs: bool = True,
                       max_batch_size: int = DEFAULT_SLOTS, tokenizer=None, **kwargs) -> dict:  # fmt: skip
        """transformers 4.57's continuous-batching API: generates for every prompt in `inputs` (lists of token ids)
        over `max_batch_size` slots, a finished row's slot taking the next prompt at once.

        Returns {request_id: GenerationOutput} in input order, request ids "req_0", "req_1", ... as transformers
        names them; a request that cannot run (too long, invalid) has `error` set and status FAILED. kwargs are
        GenerationConfig fields (max_new_tokens, do_sample, ...) applied to every request; `tokenizer` is needed
        for stop strings. The slots' cache fits the longest request. Sampled requests draw from generators seeded
        from numpy's global generator (`set_seed` makes a call reproducible)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        config, model_kwargs = self._prepare_generation_config(generation_config, **kwargs)
        if model_kwargs:
            raise ValueError(f"generate_batch takes GenerationConfig fields, not {sorted(model_kwargs)}")
        check_engine_config(self, config)
        prompts = [list(map(int, np.asarray(ids).reshape(-1))) for ids in inputs]
        if any(not ids for ids in prompts):
            raise ValueError("every prompt in `inputs` needs at least one token id")
        seeds = np.random.randint(0, 2**31 - 1, size=len(prompts))
        requests = [BatchRequest(f"req_{i}", ids, config, int(seed)) for i, (ids, seed) in enumerate(zip(prompts, seeds))]
        engine = ContinuousBatcher(self, min(max_batch_size, len(requests)) or 1, cache_length_of(self, requests),
                                   tokenizer, config.prefill_chunk_size or PREFILL_CHUNK)  # fmt: skip
        results = {}
        with self._generation_scope(), tqdm(total=len(requests), disable=not progress_bar,
                                     desc=f"Solving {len(requests)} requests", unit="request") as bar:  # fmt: skip
            for output in engine.run(requests):
                results[output.request_id] = output
                bar.update(1)
        return {request.request_id: results[request.request_id] for request in requests}


def _default_cache_length(model) -> int:
    positions = max_positions_of(model)
    return min(positions, DEFAULT_CACHE_LENGTH) if positions else cache_length_for(DEFAULT_CACHE_LENGTH)


__all__ = ["ContinuousBatchingManager", "ContinuousMixin", "GenerationOutput", "RequestStatus"]
