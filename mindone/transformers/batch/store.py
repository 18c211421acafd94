"""The JSONL output of a batch job: append-only while running, repaired and resumed after a crash, merged and put
in input order at the end.

Every output row carries the input line it answers ("line"), which keys resumption for rows without a usable id
and orders the final file."""

import json
import os
import time
from typing import Iterable, Optional


def row_key(row: dict):
    """What a finished row counts as done for: its id, or its input line when it had no id of its own (unreadable
    JSON, no id, or a repeat of an earlier row's id)."""
    if "id" not in row or "duplicate_of_line" in row:
        return ("line", row["line"])
    return id_key(row["id"])


def id_key(row_id):
    return ("id", json.dumps(row_id, sort_keys=True))


class OutputStore:
    """Appends finished rows to `path`; every write is one call holding whole lines, then flushed and fsynced, so a
    kill leaves at most one partial last line, which opening the file again repairs."""

    def __init__(self, path: str):
        self.path = path
        self.rows = read_rows(path, repair=True)
        self.done = {row_key(row) for row in self.rows}

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not rows:
            return
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.rows.extend(rows)
        self.done.update(row_key(row) for row in rows)

    def finalize(self) -> None:
        """Rewrites the file in input order (atomically: a kill leaves the old file or the new one)."""
        write_rows_atomically(self.path, sorted(self.rows, key=lambda row: row["line"]))


class FollowerStore(OutputStore):
    """The output of a tensor-parallel group seen by its ranks other than the first: they compute every row with
    the first rank (whose store writes them), so they read which rows are done and write nothing."""

    def __init__(self, path: str):
        self.path = path
        self.rows = read_rows(path)
        self.done = {row_key(row) for row in self.rows}

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        self.rows.extend(rows)
        self.done.update(row_key(row) for row in rows)

    def finalize(self) -> None:
        pass


def read_rows(path: str, repair: bool = False) -> list:
    """The complete rows in `path` ([] if it does not exist). A torn last line (a kill during a write) is cut off
    when `repair`; anything else unreadable means the file is not this job's output."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    complete_end = data.rfind(b"\n") + 1
    rows = [_parse(path, number, line) for number, line in enumerate(data[:complete_end].splitlines(), 1) if line.strip()]
    if complete_end < len(data):
        if not repair:
            raise ValueError(f"{path} ends with an incomplete line; run the job again on it to repair it")
        with open(path, "r+b") as f:
            f.truncate(complete_end)
            f.flush()
            os.fsync(f.fileno())
        print(f"repaired {path}: dropped an incomplete last line ({len(data) - complete_end} bytes) left by an interrupted write")
    return rows


def _parse(path: str, number: int, line: bytes) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        row = None
    if not isinstance(row, dict) or not isinstance(row.get("line"), int):
        raise ValueError(f"{path} line {number} is not a row written by a batch job; use another --output")
    return row


def write_rows_atomically(path: str, rows: Iterable[dict]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_writable(path: str) -> None:
    """Fails before any model work if `path` cannot be written (nothing is created)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SystemExit(f"error: output directory {directory} does not exist; create it or choose another --output")
    target = path if os.path.exists(path) else directory
    if not os.access(target, os.W_OK) or os.path.isdir(path):
        raise SystemExit(f"error: cannot write {path}; choose a writable --output")


# ---- shards (data parallel: one part file per rank, merged in input order) ----


def part_path(output: str, rank: int, world: int) -> str:
    return f"{output}.part-{rank:05d}-of-{world:05d}"


def mark_done(part: str) -> None:
    with open(part + ".done", "w") as f:
        f.write("done\n")


def merge_parts(output: str, world: int, wait_seconds: Optional[float] = 0.0, poll: float = 1.0) -> int:
    """Merges the `world` part files of `output` into it, in input order; waits up to `wait_seconds` (None: no
    limit) for every rank to mark its part done. Returns the number of rows written."""
    parts = [part_path(output, rank, world) for rank in range(world)]
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    while True:
        missing = [part for part in parts if not os.path.exists(part + ".done")]
        if not missing:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise SystemExit(f"error: cannot merge: {len(missing)} shard(s) not finished: {', '.join(missing)}; "
                             "run (or resume) those ranks first")  # fmt: skip
        time.sleep(poll)
    rows = [row for part in parts for row in read_rows(part)]
    write_rows_atomically(output, sorted(rows, key=lambda row: row["line"]))
    return len(rows)
