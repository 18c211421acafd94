"""Compiled generate() graphs kept on disk, so that a new process loads a decode graph instead of compiling it.

MindSpore's own compile cache (`enable_compile_cache`, mindspore 2.7.1) is positional and unchecked. It reads
`compile_cache_path` once per process and names the graph it writes or loads `compile_cache_<n>.mindir`, `n` a
process-wide count of the compiles made with the cache on. It checks only a hash of the entry script and its
non-installed imports: a file left by another function, shape or constant (a config value, a packed layer's
layout) is loaded and run as it is. Parameters are bound by name to the compiled cell's `parameters_dict()`; one
the cell does not own gets an uninitialised buffer. And once a compile finds no file, it loads nothing more in
that process. This module uses the mechanism for loading only, and does the keying itself:

* Each graph is an entry `graphs/<key>/` (`compile_cache_{index}.mindir` and `manifest.json`) under
  `builder.cache_root()` ($MINDONE_CACHE, else $XDG_CACHE_HOME/mindone, else ~/.cache/mindone), or under the path
  given to `set_compile_cache`. The key hashes all a graph depends on: this cache's format, mindone's version and
  a digest of its .py sources, the fused kernel library's path (which carries its source/compiler/CPU key),
  MindSpore's version, device target, mode and jit level, MINDONE_* / MS_DEV_* environment variables, the model
  config (`to_json_string`), the model's structure (each reachable cell's class, plain attributes, constant
  tensors by content, parameters' names, shapes and dtypes - not their values, which are bound at load), dtype,
  the StaticCache's batch and length, the device head's key, and the call's input shapes and dtypes.
* A graph without an entry compiles as usual (MindSpore's cache off); then its graph is exported as the cache
  writes it and published: written to a temporary directory, manifest (sha256 and size of each file) last, and
  renamed into place, so that concurrent processes (msrun ranks) never read half an entry; when two processes
  compile the same graph, the first rename wins.
* A graph with an entry is loaded: the entry's file is read, checked against the manifest, and copied into a work
  directory private to the process (`graphs/.work/<host>-<pid>-<id>`, MindSpore's compile_cache_path) under the
  number MindSpore will use; MindSpore's cache is on for that call only, with one constant file as its dependency
  list (the key covers the sources; the entry script must not matter). The copy untouched and nothing written
  means loaded. An entry that fails its check (truncated, overwritten, unreadable manifest) or that MindSpore did
  not load is deleted and the graph compiled and published again.
* Off with MINDONE_COMPILE_CACHE=0 or `set_compile_cache(False)`: nothing is read or written. A user who sets
  MindSpore's compile cache up (context `enable_compile_cache`, or MS_COMPILER_CACHE_ENABLE) manages it; graphs
  then compile as without this module.
"""

import atexit
import collections
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn

logger = logging.getLogger(__name__)

ENV = "MINDONE_COMPILE_CACHE"
FORMAT = 1  # bump when the key or the entry layout changes
MANIFEST = "manifest.json"
MINDIR = "compile_cache_{index}.mindir"  # an entry's graph, as MindSpore names the graph number {index}
_OFF = ("0", "false", "off", "no")
_STAMP = b"mindone compile cache: the graph keys cover the sources\n"  # MindSpore's dependency file, for our calls
_STAGED_MTIME = 10**18  # ns (2001): a staged copy's mtime, so that any rewrite by MindSpore shows
_INDEXED = re.compile(r"^(?P<role>.*?)(?P<base>(?:backend_)?compile_cache)_(?P<index>\d+)(?P<ext>.*)$")
_VOLATILE = {"seen_tokens", "generating", "weights_version"}  # host-side state that no graph reads as a constant
# MindSpore's own bookkeeping on cells: set at creation, or when a cell is compiled (current_phase names its id)
_CELL_ATTRIBUTES = set(vars(nn.Cell())) | {"current_phase", "phase", "phase_cache", "compile_cache", "create_time"}

_settings = {"enabled": None, "path": None}
_lock = threading.RLock()
_work = None


def set_compile_cache(enabled: bool = True, path=None) -> None:
    """Turn the on-disk cache of compiled generate() graphs on or off for this process (it is on by default,
    unless MINDONE_COMPILE_CACHE=0), and optionally keep its entries under `path` instead of
    `<cache root>/graphs`. Graphs already built in this process are not affected."""
    _settings["enabled"] = bool(enabled)
    _settings["path"] = None if path is None else Path(path)


def enabled() -> bool:
    """Whether graphs are loaded from and saved to disk: set_compile_cache's choice, else MINDONE_COMPILE_CACHE."""
    if _settings["enabled"] is not None:
        return _settings["enabled"]
    return os.environ.get(ENV, "1").strip().lower() not in _OFF


def graphs_root() -> Path:
    if _settings["path"] is not None:
        return _settings["path"]
    from ..kernels.builder import cache_root

    return cache_root() / "graphs"


def graph_counts(owner) -> dict:
    """{"compiled": n, "loaded": m}: the compiled generate() graphs of a model (or of a user's StaticCache), by how
    they were made - compiled in this process or loaded from the disk cache."""
    steps = owner.__dict__.get("_compiled_steps", {}).values()
    loaded = sum(len(getattr(step, "loaded", ())) for step in steps)
    return {"compiled": sum(len(step.signatures) for step in steps) - loaded, "loaded": loaded}


def loaded_graph_count(owner) -> int:
    """How many of the model's compiled graphs were loaded from the disk cache rather than compiled."""
    return graph_counts(owner)["loaded"]


# ---------------------------------------------------------------- parameters a graph reads
def own_parameters(cell: nn.Cell) -> None:
    """Registers with `cell` every parameter its graph can reach that no cell of its tree owns - such as the packed
    layer weights (layers.PackedWeights, QuantizedLayerWeights), which the layers keep outside their parameter tree
    so that the state_dict is unchanged. A graph loaded from MindSpore's compile cache binds parameters by name to
    the compiled cell's `parameters_dict()`; any other parameter gets an uninitialised buffer of its shape."""
    owned = {id(p) for p in cell.get_parameters()}
    for param in _hidden_parameters(cell):
        if id(param) not in owned:
            owned.add(id(param))
            cell.insert_param_to_cell(f"owned.{len(owned)}", param, check_name_contain_dot=False)
    _unique_names(cell)


def _unique_names(cell: nn.Cell) -> None:
    """Parameters that share a name are renamed to their paths: a loaded graph would bind one of them for all.
    (Cells swapped in after a model is built, such as the layers quantized while loading, name their parameters
    from their attribute only: every layer's "q_proj.weight_values".) If names still collide, the cell's graphs
    are not cached."""
    params = list(cell.get_parameters())
    count = collections.Counter(p.name for p in params)
    if max(count.values(), default=1) > 1:
        paths = {}
        for root in (getattr(cell, "model", None), cell):
            if isinstance(root, nn.Cell):
                for path, param in root.parameters_and_names():
                    paths.setdefault(id(param), path)
        for param in params:
            if count[param.name] > 1 and id(param) in paths:
                param.name = paths[id(param)]
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        cell.__dict__["_compile_cache_unsafe"] = "parameters share a name"


def _hidden_parameters(root: nn.Cell):
    for cell in _cells(root):
        yield from (p for p in cell._params.values() if p is not None)
        for name, value in vars(cell).items():
            if isinstance(value, Parameter) and not name.startswith("_"):
                yield value


def _cells(root: nn.Cell) -> list:
    """Every cell reachable from `root`: its registered tree, plus cells stored on a cell directly under a public
    attribute (also inside lists, tuples and dicts), depth first and without repeats. Private attributes are
    bookkeeping (MindSpore's, or a model's compiled steps and caches), not parts of the model."""
    seen, order, stack = set(), [], [root]
    while stack:
        cell = stack.pop()
        if id(cell) in seen:
            continue
        seen.add(id(cell))
        order.append(cell)
        children = list(cell._cells.values())
        for name, value in vars(cell).items():
            if not name.startswith("_"):
                children += _cells_in(value)
        stack += reversed([c for c in children if c is not None])
    return order


def _cells_in(value) -> list:
    if isinstance(value, nn.Cell):
        return [value]
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in _cells_in(v)]
    if isinstance(value, dict):
        return [c for v in value.values() for c in _cells_in(v)]
    return []


# ---------------------------------------------------------------- keys
def _sha(data) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()


def _describe(value, depth: int = 0):
    """A JSON-able description of an attribute value as a compiled graph sees it (constants by content)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Parameter):
        return ["parameter", value.name, list(value.shape), str(value.dtype)]
    if isinstance(value, ms.Tensor):
        return ["tensor", list(value.shape), str(value.dtype), _sha(value.asnumpy().tobytes())]
    if isinstance(value, np.ndarray):
        return ["array", list(value.shape), str(value.dtype), _sha(np.ascontiguousarray(value).tobytes())]
    if isinstance(value, nn.Cell):
        return ["cell", type(value).__qualname__]
    if isinstance(value, (list, tuple)) and depth < 4:
        return [_describe(v, depth + 1) for v in value]
    if isinstance(value, dict) and depth < 4:
        return {str(k): _describe(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, ms.dtype.Type):
        return str(value)
    if callable(value):
        return ["callable", getattr(value, "__module__", ""), getattr(value, "__qualname__", type(value).__qualname__)]
    return ["object", type(value).__module__, type(value).__qualname__]  # configs are keyed on their own


def structure(root: nn.Cell) -> str:
    """Digest of what a graph over `root` bakes in besides its input shapes: every reachable cell's class, its
    plain attributes and constant tensors (by content), its parameters' names, shapes and dtypes (not values)."""
    digest = hashlib.sha256()
    for cell in _cells(root):
        attributes = {
            name: _describe(value)
            for name, value in vars(cell).items()
            if not name.startswith("_") and name not in _CELL_ATTRIBUTES and name not in _VOLATILE
        }
        params = [[name, p.name, list(p.shape), str(p.dtype)] for name, p in cell._params.items() if p is not None]
        children = [[name, type(c).__qualname__] for name, c in cell._cells.items() if c is not None]
        item = [type(cell).__module__, type(cell).__qualname__, attributes, params, children]
        digest.update(json.dumps(item, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()


_library = None


def library_identity() -> dict:
    """mindone's version, a digest of its Python sources and the fused kernel library in use (computed once)."""
    global _library
    if _library is None:
        import mindone

        from .. import kernels

        package = Path(mindone.__file__).parent
        digest = hashlib.sha256()
        for source in sorted(package.rglob("*.py")):
            digest.update(str(source.relative_to(package)).encode() + b"\0" + source.read_bytes() + b"\0")
        _library = {"mindone": getattr(mindone, "__version__", "?"), "sources": digest.hexdigest(),
                    "kernels": kernels.library()}  # fmt: skip
    return _library


def _runtime() -> dict:
    def context(name):
        try:
            return str(ms.get_context(name))
        except (ValueError, TypeError, AttributeError):
            return None

    own = (ENV, "MINDONE_CACHE")
    env = {k: v for k, v in os.environ.items() if k.startswith(("MINDONE_", "MS_DEV_")) and k not in own}
    return {"mindspore": ms.__version__, "device": context("device_target"), "mode": context("mode"),
            "jit_level": context("jit_level"), "env": env, "ranks": os.environ.get("RANK_SIZE")}  # fmt: skip


def _step_components(step) -> dict:
    """What a compiled step's graphs depend on besides the call's inputs; computed once per step."""
    components = step.__dict__.get("_compile_cache_components")
    if components is None:
        model, cache, head = step.model, step.cache, step.head
        config = model.config.to_json_string() if hasattr(model.config, "to_json_string") else repr(vars(model.config))
        components = {
            "model_type": getattr(model.config, "model_type", None),
            "config": _sha(config),
            "model": structure(model),
            "dtype": str(model.dtype),
            "cache": [type(cache).__qualname__, cache.max_batch_size, cache.max_cache_len, str(cache.dtype),
                      structure(cache)],  # fmt: skip
            "head": None if head is None else [head.key, structure(head)],
        }
        step.__dict__["_compile_cache_components"] = components
    return components


def graph_key(step, signature) -> tuple:
    """(key, components) of the graph that `step` compiles for inputs of `signature` ((shape, dtype) pairs)."""
    components = {
        "format": FORMAT,
        "library": library_identity(),
        "runtime": _runtime(),
        "step": _step_components(step),
        "signature": [[list(shape), str(dtype)] for shape, dtype in signature],
    }
    return _sha(json.dumps(components, sort_keys=True))[:32], components


# ---------------------------------------------------------------- MindSpore's side: the process's work directory
class _Work:
    """MindSpore's compile_cache_path for this process: it reads the path once per process, keeps graphs under
    rank_<r>/graph_cache/ and numbers them by a process-wide count of the compiles made with the cache on."""

    def __init__(self, root: Path):
        self.host = socket.gethostname()
        base = root / ".work"
        base.mkdir(parents=True, exist_ok=True)
        _remove_stale(base, self.host)
        self.dir = base / f"{self.host}-{os.getpid()}-{secrets.token_hex(4)}"
        self.dir.mkdir()
        atexit.register(shutil.rmtree, self.dir, True)
        self.stamp = self.dir / "dependencies.txt"
        self.stamp.write_bytes(_STAMP)
        self.index = 0  # the number MindSpore gives the next graph compiled with the cache on
        self.usable = True
        dep_hash = _sha(_sha(_STAMP))  # MindSpore's: sha256 over the concatenated sha256 of each dependency file
        for directory in self.graph_dirs():
            directory.mkdir(parents=True, exist_ok=True)
            for role in self.roles():
                (directory / f"{role}compile_dependency.hash").write_text(dep_hash)

    def graph_dirs(self) -> list:
        ranks = {"0", os.environ.get("RANK_ID", "0")}
        return [self.dir / f"rank_{r}" / "graph_cache" for r in sorted(ranks)]

    @staticmethod
    def roles() -> list:
        return sorted({"", os.environ.get("MS_ROLE", "")})

    def indexed_files(self) -> dict:
        """{path: (inode, size, mtime)} of the numbered graph files now in the work directory."""
        found = {}
        for path in self.dir.rglob("*"):
            if _INDEXED.match(path.name) and path.is_file():
                stat = path.stat()
                found[path] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return found

    def clear(self) -> None:
        for path in self.indexed_files():
            _chmod_unlink(path)


def _remove_stale(base: Path, host: str) -> None:
    """Work directories of this host's processes that ended without cleaning up, and temporary or deleted entries
    older than an hour (a process killed while publishing or removing one)."""
    for directory in base.glob(f"{host}-*-*"):
        try:
            pid = int(directory.name[len(host) + 1 :].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue
    for directory in [*base.parent.glob(".tmp-*"), *base.parent.glob(".trash-*")]:
        try:
            if time.time() - directory.stat().st_mtime > 3600:
                shutil.rmtree(directory, ignore_errors=True)
        except OSError:
            continue


def _chmod_unlink(path: Path) -> None:
    try:
        path.unlink()
    except PermissionError:
        os.chmod(path, 0o600)
        path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _work_dir() -> Optional[_Work]:
    global _work
    if _work is None:
        from mindspore.common import api

        if not hasattr(api, "_get_compile_cache_dep_files"):  # another MindSpore: its cache is not understood here
            _work = False
            return None
        try:
            _work = _Work(graphs_root())
        except OSError as err:
            logger.warning(f"mindone: compile cache unavailable ({err}); graphs are compiled in every process")
            _work = False
    return _work if _work and _work.usable else None


def _user_manages_cache() -> bool:
    """The user set MindSpore's compile cache up themselves (context or environment): leave it to them."""
    try:
        setting = ms.get_context("enable_compile_cache")
    except (ValueError, TypeError):
        return True
    return setting is not None or os.environ.get("MS_COMPILER_CACHE_ENABLE", "0") != "0"


class _MindSporeCache:
    """MindSpore's compile cache on for one call, in the work directory (through its environment variables:
    set_context(enable_compile_cache=...) warns that it is deprecated at every call)."""

    VARIABLES = ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH")

    def __init__(self, work: "_Work"):
        self.values = ("1", str(work.dir))
        self.dependencies = _DependencyFiles(work.stamp)

    def __enter__(self):
        self.saved = [os.environ.get(name) for name in self.VARIABLES]
        os.environ.update(zip(self.VARIABLES, self.values))
        self.dependencies.__enter__()

    def __exit__(self, *exc):
        self.dependencies.__exit__(*exc)
        for name, value in zip(self.VARIABLES, self.saved):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _DependencyFiles:
    """MindSpore hashes the entry script and its non-installed imports into every cached graph and loads nothing
    when that hash differs, so one program could never load another's graphs: for our calls the list is one
    constant file. Also saves MindSpore parsing the imports of the entry script at each compile."""

    def __init__(self, stamp: Path):
        from mindspore.common import api

        self.api, self.stamp = api, str(stamp)

    def __enter__(self):
        self.original = self.api._get_compile_cache_dep_files
        self.api._get_compile_cache_dep_files = lambda: [self.stamp]

    def __exit__(self, *exc):
        self.api._get_compile_cache_dep_files = self.original


# ---------------------------------------------------------------- entries
class _Corrupt(Exception):
    pass


def _read_manifest(entry: Path) -> Optional[dict]:
    """The entry's manifest; None when there is no entry; raises _Corrupt for an entry that cannot be used."""
    if not entry.is_dir():
        return None
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or manifest.get("key") != entry.name or not files:
            raise _Corrupt("manifest of another format or key")
        for name, record in files.items():
            if "/" in name or name.startswith(".") or "{index}" not in name or len(record["sha256"]) != 64:
                raise _Corrupt(f"bad file record {name}")
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise _Corrupt(f"unreadable manifest ({err})") from None


def _remove_entry(entry: Path, reason: str) -> None:
    logger.warning(f"mindone: compile cache entry {entry.name} rebuilt: {reason}")
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(entry, trash)  # atomic: no reader sees a half-deleted entry
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _stage(entry: Path, manifest: dict, work: _Work) -> list:
    """Copies the entry's files into the work directory under MindSpore's next number, each checked against the
    manifest; returns the staged paths, raises _Corrupt on a mismatch."""
    staged = []
    for template, record in manifest["files"].items():
        source = entry / template
        try:
            data = source.read_bytes()
        except OSError as err:
            raise _Corrupt(f"{template}: {err.strerror}") from None
        if len(data) != record["size"] or _sha(data) != record["sha256"]:
            raise _Corrupt(f"{template} does not match its digest")
        for directory in work.graph_dirs():
            for role in work.roles():
                target = directory / (role + template.format(index=work.index))
                target.write_bytes(data)
                os.utime(target, ns=(_STAGED_MTIME, _STAGED_MTIME))
                staged.append(target)
    return staged


def _publish(entry: Path, files: dict, components: dict, seconds: float) -> None:
    """Writes a new entry ({name template: bytes}): into a temporary directory, manifest last, then renamed into
    place; if another process published the key first, its entry stays."""
    tmp = entry.with_name(f".tmp-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.mkdir(parents=True)
        records = {}
        for template, data in files.items():
            (tmp / template).write_bytes(data)
            records[template] = {"sha256": _sha(data), "size": len(data)}
        manifest = {"format": FORMAT, "key": entry.name, "files": records, "created": time.time(),
                    "compile_seconds": round(seconds, 3), "components": components}  # fmt: skip
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.rename(tmp, entry)
    except OSError:
        pass  # the entry exists (another process won) or the disk is full: the graph still runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- a graph's first call
def first_call(step, signature, call: Callable) -> tuple:
    """Runs `call` - the first call of `step`'s graph for inputs of `signature`, which compiles it - with the disk
    cache: loads the graph from a valid entry, or compiles it and publishes a new entry. Returns (call's result,
    whether the graph was loaded from disk)."""
    # graphs with collectives (tensor parallel) are compiled in each process: rank-specific and not verified on load
    sharded = step.model.__dict__.get("tensor_parallel") is not None
    if not enabled() or step.__dict__.get("_compile_cache_unsafe") or _user_manages_cache() or sharded:
        return call(), False
    with _lock:
        try:
            key, components = graph_key(step, signature)
        except Exception as err:  # noqa: BLE001 - a model the key cannot describe is compiled, not cached
            logger.debug(f"mindone: compile cache skipped ({err})")
            return call(), False
        entry = graphs_root() / key
        work = _work_dir()
        staged = None
        if work is not None:
            try:
                manifest = _read_manifest(entry)
                staged = _stage(entry, manifest, work) if manifest is not None else None
            except _Corrupt as err:
                work.clear()
                _remove_entry(entry, str(err))
            except OSError as err:  # the work directory cannot be written: compile
                logger.debug(f"mindone: compile cache entry not staged ({err})")
                work.clear()
        if staged is None:
            return _compile_and_publish(entry, components, call), False
        return _load(work, entry, staged, components, call)


def _compile_and_publish(entry: Path, components: dict, call: Callable):
    """Compiles with MindSpore's cache off (a miss would turn its loading off for the rest of the process), then
    exports the graph as MindSpore's compile cache writes it and publishes it."""
    from mindspore.common import api

    before = set(api.ms_compile_cache)
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    phases = set(api.ms_compile_cache) - before
    try:
        proto = _cache_graph(phases.pop()) if len(phases) == 1 else None
        if proto is not None:
            _publish(entry, {MINDIR: proto}, components, seconds)
    except Exception as err:  # noqa: BLE001 - the graph runs; only its entry is missing
        logger.debug(f"mindone: compiled graph not cached ({err})")
    return result


def _cache_graph(phase: str) -> Optional[bytes]:
    """The compiled graph of `phase` as MindSpore's compile cache saves it. The cache saves the frontend graph when
    its last pass (validate) ends; the executor keeps that graph, to which the backend then adds three attributes
    (graph: phase, jit_level; nodes: is_dynamic_len): removed here, the two are the same (checked on the decode
    graphs with mindspore 2.7.1, tests/test_compile_cache.py)."""
    from mindspore.common import api
    from mindspore.train import mind_ir_pb2

    executor = api.JitExecutor_.get_instance()
    if not executor.has_compiled(phase):
        return None
    model = mind_ir_pb2.ModelProto.FromString(executor.get_func_graph_proto(phase, "mind_ir", False))
    for graph in [model.graph, *model.functions]:
        _drop(graph.attribute, ("phase", "jit_level"))
        for node in graph.node:
            _drop(node.node_attr, ("is_dynamic_len",))
    return model.SerializeToString()


def _drop(attributes, names: tuple) -> None:
    kept = [a for a in attributes if a.name not in names]
    del attributes[:]
    attributes.extend(kept)


def _load(work: _Work, entry: Path, staged: list, components: dict, call: Callable) -> tuple:
    """Lets MindSpore load the staged copy of an entry: its compile cache on for this call only, with the entry
    under the number it will use. The copy untouched and nothing written: loaded. Otherwise MindSpore compiled the
    graph itself, and the process stops loading (MindSpore's count or cache state is not what this module
    expects); if MindSpore found the copy but did not load it, the entry is replaced by MindSpore's own file."""
    before = work.indexed_files()
    start = time.perf_counter()
    try:
        with _MindSporeCache(work):
            result = call()
    except Exception:  # noqa: BLE001 - retried without the cache; an error of the graph itself raises again
        work.clear()
        work.usable = False
        _remove_entry(entry, "the cached graph failed to load")
        return _compile_and_publish(entry, components, call), False
    seconds = time.perf_counter() - start
    after = work.indexed_files()
    written = [path for path, stat in after.items() if before.get(path) != stat]
    rewritten = [path for path in staged if path in written]
    own = rewritten[0].read_bytes() if rewritten else None
    work.clear()
    work.index += 1
    if not written and all(path in after for path in staged):
        return result, True
    work.usable = False
    if own is not None:
        _remove_entry(entry, "MindSpore compiled the graph instead of loading it")
        _publish(entry, {MINDIR: own}, components, seconds)
    return result, False
