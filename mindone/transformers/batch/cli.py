"""`python -m mindone.transformers.batch` / `mindone-generate`: JSONL prompts in, JSONL completions out.

Single process: rows are appended to --output as batches finish, then the file is put in input order. Under msrun
(or with RANK_ID / RANK_SIZE set) each rank takes the input lines whose index modulo the world size is its rank,
writes <output>.part-RRRRR-of-WWWWW, and rank 0 merges the parts into --output once every rank is done. With
--tensor_parallel N, each group of N consecutive ranks holds one copy of the model split N ways and serves the
lines of one part; the group's first rank writes it."""

import argparse
import glob
import os
import re
import sys
import time

from tqdm import tqdm

from ..generation.compile_cache import set_compile_cache
from ..modeling_rope_utils import HOST_UPDATED_ROPE, rope_type_of
from ..utils import set_seed
from . import store as output_store
from .job import BatchRunner, Stats, summary
from .rows import RowError, error_row, parse_requests, prepare, read_lines

GENERATION_ARGS = {  # CLI flag -> type; None means "keep the model's generation_config value"
    "max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "num_beams": int,
    "repetition_penalty": float, "no_repeat_ngram_size": int,
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mindone-generate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (or a directory holding --gguf_file)")
    parser.add_argument("--gguf_file", default=None, help="a .gguf file: a path, or a name inside --model")
    parser.add_argument("--keep_quantized", action="store_true",
                        help="keep the --gguf_file's quantized weights (docs/quantization.md) instead of dequantizing")
    parser.add_argument("--quantization", choices=["int8", "int4"], default=None,
                        help="quantize the float checkpoint's weights while loading (docs/quantization.md)")
    parser.add_argument("--input", help="JSONL: {\"id\", \"prompt\"} or {\"id\", \"messages\"}, optional \"generation\"")
    parser.add_argument("--output", required=True, help="JSONL results; an existing file is resumed, not overwritten")
    parser.add_argument("--max_batch_size", type=int, default=8,
                        help="graph mode: slots of the continuous batch; pynative: rows per generate() call")
    parser.add_argument("--mode", choices=["graph", "pynative"], default="graph",
                        help="graph: compiled steps over a static cache (default); pynative: dynamic cache")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--do_sample", action="store_true")
    parser.add_argument("--stop_strings", action="append", default=None, help="repeat for several")
    for name, kind in GENERATION_ARGS.items():
        parser.add_argument(f"--{name}", type=kind, default=64 if name == "max_new_tokens" else None)
    parser.add_argument("--no_compile_cache", action="store_true",
                        help="compile the graphs in this process instead of loading them from the on-disk cache "
                             "(docs/performance.md; also MINDONE_COMPILE_CACHE=0)")  # fmt: skip
    parser.add_argument("--tensor_parallel", type=int, default=1, metavar="N",
                        help="under msrun: split the model over groups of N ranks (tp_plan='auto'); the groups share "
                             "the rows (docs/batch.md)")  # fmt: skip
    parser.add_argument("--fail_on_error", action="store_true", help="exit 1 when any row ends as an error row")
    parser.add_argument("--merge", action="store_true", help="only merge the part files of --output (all ranks done)")
    args = parser.parse_args(argv)
    if not args.merge and (not args.model or not args.input):
        parser.error("--model and --input are required (unless --merge)")
    if args.max_batch_size < 1:
        parser.error("--max_batch_size must be at least 1")
    if args.tensor_parallel < 1:
        parser.error("--tensor_parallel must be at least 1")
    if args.keep_quantized and args.gguf_file is None:
        parser.error("--keep_quantized keeps a GGUF file's quantized weights: pass --gguf_file as well")
    if args.quantization and args.gguf_file is not None:
        parser.error("--quantization quantizes a float checkpoint; a GGUF file is quantized already: use --keep_quantized")
    return args


def distributed_rank() -> tuple:
    """(rank, world size): from MindSpore's collective init when started by msrun, else RANK_ID / RANK_SIZE.
    msrun also runs this script as its scheduler process, whose init() serves the workers until they finish."""
    if os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED"):
        from .. import backend

        return backend.communication_rank()
    return int(os.environ.get("RANK_ID", 0)), int(os.environ.get("RANK_SIZE", 1))


def load(args):
    """Model and tokenizer; a missing or broken model is a one-line error before any work."""
    import mindspore as ms

    from ..models.auto import AutoModelForCausalLM, AutoTokenizer

    try:
        quantization = {f"load_in_{args.quantization[3:]}bit": True} if args.quantization else {}
        parallel = {"tp_plan": "auto", "tp_size": args.tensor_parallel} if args.tensor_parallel > 1 else {}
        model = AutoModelForCausalLM.from_pretrained(args.model, gguf_file=args.gguf_file, dtype=getattr(ms, args.dtype),
                                                     dequantize=not args.keep_quantized, **quantization, **parallel)  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"error: cannot load model {args.model!r}: {str(err).splitlines()[0]}") from None
    return model, tokenizer


def base_generation_config(args, model, mode: str):
    config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    options = {name: getattr(args, name) for name in GENERATION_ARGS if getattr(args, name) is not None}
    if mode == "graph":
        options["cache_implementation"] = "static"
    config.update(do_sample=args.do_sample, stop_strings=args.stop_strings, **options)
    return config


def run(args) -> int:
    lines = read_lines(args.input)
    rank, world = distributed_rank()
    if world % args.tensor_parallel:
        raise SystemExit(f"error: --tensor_parallel {args.tensor_parallel} does not divide the {world} ranks; start "
                         f"msrun with a multiple of {args.tensor_parallel} workers")  # fmt: skip
    group, groups = rank // args.tensor_parallel, world // args.tensor_parallel
    leader = rank % args.tensor_parallel == 0
    target = output_store.part_path(args.output, group, groups) if groups > 1 else args.output
    store = _open_store(target, leader, args.tensor_parallel)
    start = time.perf_counter()
    if args.no_compile_cache:
        set_compile_cache(False)
    model, tokenizer = load(args)
    set_seed(args.seed)
    requests, errors = parse_requests(lines, lambda number: (number - 1) % groups == group)
    pending = [r for r in requests if output_store.id_key(r.id) not in store.done]
    new_errors = [row for row in errors if output_store.row_key(row) not in store.done]
    skipped = len(requests) - len(pending) + len(errors) - len(new_errors)
    mode = _mode(args.mode, model)
    base = base_generation_config(args, model, mode)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    todo = []
    for request in pending:
        try:
            todo.append(prepare(request, tokenizer, base, max_positions))
        except RowError as err:
            new_errors.append(error_row(request.line, str(err), request.id, True))
    stats = Stats(failed=len(new_errors))
    store.append(new_errors)
    runner = BatchRunner(model, tokenizer, mode, args.max_batch_size, args.seed)
    label = f"rank {rank}/{world}" if world > 1 else "generate"
    with tqdm(total=len(todo), unit="row", desc=label, position=rank if world > 1 else None) as progress:
        runner.run(todo, store, stats, progress)
    _complete(args, store, target, group, groups, leader)
    print(summary(stats, skipped, time.perf_counter() - start, model), file=sys.stderr)
    failed_rows = sum("error" in row for row in store.rows)
    return 1 if args.fail_on_error and failed_rows else 0


def _mode(requested: str, model) -> str:
    rope_type = rope_type_of(model.config)
    if requested == "graph" and rope_type in HOST_UPDATED_ROPE:
        print(f"note: {rope_type} rope scaling recomputes frequencies on the host, which compiled steps cannot do; "
              "running --mode pynative", file=sys.stderr)  # fmt: skip
        return "pynative"
    return requested


def _open_store(target: str, leader: bool, tensor_parallel: int):
    """The output store of this rank's part. In a tensor-parallel group the first rank opens (and repairs) it, then
    the others read which rows are done, before any rank goes on: the whole group computes the same rows."""
    output_store.check_writable(target)
    store = None
    if leader:
        try:
            store = output_store.OutputStore(target)  # repairs a torn last line; refuses a file that is not ours
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    if tensor_parallel > 1:
        from ..integrations.tensor_parallel import barrier

        barrier()
        if store is None:
            store = output_store.FollowerStore(target)
        barrier()
    return store


def _complete(args, store, target, group: int, groups: int, leader: bool) -> None:
    store.finalize()
    if groups == 1 or not leader:
        return
    output_store.mark_done(target)
    if group == 0:
        print(f"rank 0: waiting for all {groups} parts, then merging into {args.output}", file=sys.stderr)
        output_store.merge_parts(args.output, groups, wait_seconds=None)


def merge_only(output: str) -> int:
    worlds = {int(m.group(1)) for p in glob.glob(glob.escape(output) + ".part-*-of-*")
              if (m := re.search(r"-of-(\d+)$", p))}  # fmt: skip
    if len(worlds) != 1:
        raise SystemExit(f"error: expected the part files of one job next to {output}, found world sizes {sorted(worlds)}")
    rows = output_store.merge_parts(output, worlds.pop())
    print(f"merged {rows} rows into {output}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return merge_only(args.output) if args.merge else run(args)
