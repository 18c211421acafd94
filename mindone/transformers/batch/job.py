"""Runs prepared requests through continuous batching (or length-sorted generate() batches) and turns each output
into a row."""

import json
import time
import zlib
from dataclasses import dataclass
from itertools import groupby

import mindspore as ms
import numpy as np
from tqdm import tqdm

from ..generation.continuous import BatchRequest, ContinuousBatcher, cache_length_of, check_engine_config
from ..generation.compile_cache import graph_counts
from ..generation.decoders import compile_seconds
from ..utils import set_seed
from .rows import Request


def plan_batches(requests: list, max_batch_size: int) -> list:
    """Rows with equal generation options, sorted by prompt length and cut into batches of `max_batch_size`, so a
    batch pads little and falls in one prefill bucket as often as possible."""
    batches = []
    ordered = sorted(requests, key=lambda r: (r.options_key, len(r.token_ids), r.line))
    for _, group in groupby(ordered, key=lambda r: r.options_key):
        group = list(group)
        batches += [group[i : i + max_batch_size] for i in range(0, len(group), max_batch_size)]
    return batches


@dataclass
class Stats:
    ok: int = 0
    failed: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


class BatchRunner:
    """Graph mode runs each group of rows that share their options (all but the per-row length and stop strings)
    through continuous batching: `max_batch_size` slots, a finished row's slot refilled at once. What the engine
    cannot serve (beam search, PyNative mode, rope scaling that depends on the batch) runs as length-sorted
    batches through generate()."""

    def __init__(self, model, tokenizer, mode: str, max_batch_size: int, seed: int):
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.max_batch_size, self.seed = max_batch_size, seed
        self.pad_id = _pad_id(tokenizer, model.generation_config)

    def run(self, requests: list, store, stats: Stats, progress: tqdm) -> None:
        start = time.perf_counter()

        def record(rows: list) -> None:
            store.append(rows)
            stats.ok += sum("error" not in row for row in rows)
            stats.failed += sum("error" in row for row in rows)
            stats.generated_tokens += sum(row.get("generated_tokens", 0) for row in rows)
            stats.seconds = time.perf_counter() - start
            progress.update(len(rows))
            progress.set_postfix(tok_s=f"{stats.generated_tokens / max(stats.seconds, 1e-9):.1f}")

        ordered = sorted(requests, key=lambda r: (engine_key(r), r.line))
        for _, group in groupby(ordered, key=engine_key):
            group = list(group)
            if self._continuous(group[0]):
                self._run_continuous(group, record)
            else:
                for batch in plan_batches(group, self.max_batch_size):
                    record(self._rows(batch))

    def _continuous(self, request: Request) -> bool:
        if self.mode != "graph":
            return False
        try:
            check_engine_config(self.model, request.generation_config)
        except ValueError:
            return False
        return True

    def _run_continuous(self, group: list, record) -> None:
        """The group's rows through the continuous-batching engine, each row written as soon as it finishes."""
        by_id = {str(i): request for i, request in enumerate(group)}
        jobs = [BatchRequest(key, r.token_ids, r.generation_config, _row_seed(self.seed, r.id)) for key, r in by_id.items()]
        cache_length = cache_length_of(self.model, jobs)
        engine = ContinuousBatcher(self.model, min(self.max_batch_size, len(jobs)), cache_length, self.tokenizer)
        written = set()
        try:
            with self.model._generation_scope():
                for output in engine.run(jobs):
                    request = by_id[output.request_id]
                    if output.error is not None:
                        record([{"id": request.id, "line": request.line, "error": f"generation failed: {output.error}"}])
                    else:
                        record([self._result(request, output.generated_tokens)])
                    written.add(output.request_id)
        except Exception as err:  # the rows not written yet say why; the job goes on with the next group
            message = _failure(err)
            record([{"id": r.id, "line": r.line, "error": message} for key, r in by_id.items() if key not in written])

    def _rows(self, batch: list) -> list:
        try:
            sequences = self._generate(batch)
        except Exception as err:  # one failing batch must not stop the job; its rows say why
            message = _failure(err)
            return [{"id": r.id, "line": r.line, "error": message} for r in batch]
        return [self._result(request, sequence) for request, sequence in zip(batch, sequences)]

    def _generate(self, batch: list) -> list:
        """Left-padded generate() over the batch; returns each row's generated ids. In graph mode a short batch is
        filled up to max_batch_size with copies of its last row, so the compiled graphs only see one batch size."""
        config = batch[0].generation_config
        rows = [r.token_ids for r in batch]
        if self.mode == "graph":
            rows += [rows[-1]] * (self.max_batch_size - len(rows))
        width = max(len(ids) for ids in rows)
        ids = np.array([[self.pad_id] * (width - len(r)) + r for r in rows], np.int64)
        mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int64)
        set_seed(_batch_seed(self.seed, batch))
        output = self.model.generate(
            ms.Tensor(ids), attention_mask=ms.Tensor(mask), generation_config=config, tokenizer=self.tokenizer
        )
        return [list(map(int, row)) for row in output.asnumpy()[: len(batch), width:]]

    def _result(self, request: Request, generated: list) -> dict:
        config = request.generation_config
        length, reason = finish(generated, config, self.tokenizer)
        token_ids = generated[:length]
        return {
            "id": request.id,
            "line": request.line,
            "text": self.tokenizer.decode(token_ids, skip_special_tokens=True),
            "token_ids": token_ids,
            "finish_reason": reason,
            "prompt_tokens": len(request.token_ids),
            "generated_tokens": len(token_ids),
        }


def finish(generated: list, config, tokenizer):
    """(number of tokens the row really generated, why it stopped): generate() stops a row at its first end-of-
    sequence token or stop string and pads it afterwards while other rows go on."""
    eos = config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    stops = config.stop_strings
    stops = [stops] if isinstance(stops, str) else list(stops or [])
    for i, token in enumerate(generated):
        if token in eos:
            return i + 1, "eos"
        if stops and any(tokenizer.decode(generated[: i + 1]).endswith(stop) for stop in stops):
            return i + 1, "stop_string"
    return len(generated), "length"


def _failure(err: Exception) -> str:
    return f"generation failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


_ROW_OWN_OPTIONS = ("max_new_tokens", "max_length", "stop_strings")
# options whose processors read eos_token_id: with any of them set, rows with other eos tokens cannot share slots
_READ_EOS = ("min_length", "min_new_tokens", "exponential_decay_length_penalty", "bad_words_ids", "forced_eos_token_id")


def engine_key(request: Request) -> str:
    """Rows with equal keys can share the slots of one continuous batch: equal options but for the ones each row
    decides on its own (its length, stop strings and end-of-sequence tokens)."""
    options = request.generation_config.to_diff_dict()
    own = _ROW_OWN_OPTIONS + (() if any(options.get(name) for name in _READ_EOS) else ("eos_token_id",))
    return json.dumps({k: v for k, v in options.items() if k not in own}, sort_keys=True, default=str)


def _row_seed(seed: int, row_id) -> int:
    """Sampling seed of one row, from the job's seed and the row's id: the same wherever and whenever it runs."""
    return (seed * 1_000_003 + zlib.crc32(json.dumps(row_id, sort_keys=True).encode())) % (2**31)


def _batch_seed(seed: int, batch: list) -> int:
    """Sampling seed of a batch, from the job's seed and the batch's ids (a rerun draws the same samples)."""
    ids = json.dumps([r.id for r in batch], sort_keys=True).encode()
    return (seed * 1_000_003 + zlib.crc32(ids)) % (2**31)


def _pad_id(tokenizer, generation_config) -> int:
    for candidate in (tokenizer.pad_token_id, generation_config.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0


def summary(stats: Stats, skipped: int, wall: float, model) -> str:
    rate = stats.generated_tokens / max(stats.seconds, 1e-9)
    return (f"rows ok {stats.ok}, failed {stats.failed}, skipped {skipped} (already in the output); "
            f"{stats.generated_tokens} tokens generated at {rate:.1f} tok/s; wall time {wall:.1f} s, "
            f"compile {compile_seconds(model):.1f} s ({_graphs(graph_counts(model))})")  # fmt: skip


def _graphs(counts: dict) -> str:
    plural = "" if counts["compiled"] == 1 else "s"
    return f"{counts['compiled']} graph{plural} compiled, {counts['loaded']} loaded from the compile cache"
