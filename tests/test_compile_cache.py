"""The on-disk cache of compiled generate() graphs (generation/compile_cache.py), across processes: a second
process loads the graphs the first compiled and gives the same tokens; another config or dtype compiles its own;
a corrupted entry is rebuilt; MINDONE_COMPILE_CACHE=0 writes nothing.

Each run is a subprocess (this file run as a script) with MINDONE_CACHE pointed at a temporary directory, whose
kernels/ is shared by the whole session so that the fused-kernel library is built (or copied) once."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
MINDIR = "compile_cache_{index}.mindir"


@pytest.fixture(scope="session")
def shared_kernels(tmp_path_factory):
    """A kernels/ directory for every test's cache root, seeded with the library already built for this source."""
    from mindone.transformers.kernels import builder

    directory = tmp_path_factory.mktemp("kernels")
    cxx = builder.compiler()
    if cxx is not None:
        key = builder._key(cxx)
        home = builder.cache_root() / "kernels"
        for name in (f"libmindone_kernels-{key}.so", f"libmindone_kernels-{key}.sha256"):
            if (home / name).exists():
                shutil.copy2(home / name, directory / name)
    return directory


@pytest.fixture
def cache_root(tmp_path, shared_kernels):
    root = tmp_path / "cache"
    root.mkdir()
    (root / "kernels").symlink_to(shared_kernels, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from helpers import save_tiny_llama

    directory = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(directory, seed=5)
    return str(directory)


@pytest.fixture(scope="module")
def tiny_quantizable_dir(tmp_path_factory):
    from helpers import save_tiny_llama

    directory = tmp_path_factory.mktemp("tiny_llama_64")
    save_tiny_llama(directory, seed=5, intermediate_size=64)  # int8 groups of 32 input features
    return str(directory)


def run(root: Path, model: str, batches=(2,), env=None, **options) -> dict:
    """One process: load `model`, generate with a static cache for each batch size, report tokens and counts
    (graph_counts after each generate). `models`: several loads of the model in turn ({config, dtype} each)."""
    outside = ("MINDONE_COMPILE_CACHE", "MS_COMPILER_CACHE")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(outside)}
    environment.update(MINDONE_CACHE=str(root), GLOG_v="3", USE_TORCH="0", **(env or {}))
    request = json.dumps({"model": model, "batches": list(batches), **options})
    done = subprocess.run([sys.executable, str(HERE), request], env=environment, capture_output=True, text=True,
                          timeout=600, cwd=str(HERE.parent))  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def counts(compiled: int, loaded: int) -> dict:
    return {"compiled": compiled, "loaded": loaded}


def entries(root: Path) -> list:
    graphs = root / "graphs"
    return sorted(p for p in graphs.iterdir() if not p.name.startswith(".")) if graphs.exists() else []


@pytest.mark.slow
def test_second_process_loads_smollm2_graph(cache_root, smollm2_dir):
    first = run(cache_root, smollm2_dir)
    assert first["packed"] == ["PackedWeights"] and first["kernels"]  # the case that generated wrong tokens
    assert first["counts"] == [counts(1, 0)]
    second = run(cache_root, smollm2_dir)
    assert second["counts"] == [counts(0, 1)]
    assert second["tokens"] == first["tokens"]
    assert len(entries(cache_root)) == 1


def test_graphs_load_by_key_in_any_order(cache_root, tiny_dir):
    """MindSpore numbers cached graphs by their order in a process; entries are keyed, so another order, a new
    graph between loaded ones, and a load after a compile all work."""
    first = run(cache_root, tiny_dir, batches=(1, 2))
    assert first["packed"] == ["PackedWeights"] and first["counts"] == [counts(1, 0), counts(2, 0)]
    second = run(cache_root, tiny_dir, batches=(2, 3, 1))
    assert second["counts"] == [counts(0, 1), counts(1, 1), counts(1, 2)]
    assert second["tokens"][0] == first["tokens"][1] and second["tokens"][2] == first["tokens"][0]
    third = run(cache_root, tiny_dir, batches=(4, 3))
    assert third["counts"] == [counts(1, 0), counts(1, 1)]
    assert third["tokens"][1] == second["tokens"][1]
    assert len(entries(cache_root)) == 4


def test_other_config_or_dtype_compiles_its_own_graph(cache_root, tiny_dir):
    assert run(cache_root, tiny_dir)["counts"] == [counts(1, 0)]
    changes = [dict(config={"rms_norm_eps": 1e-3}), dict(dtype="float16"), dict()]
    result = run(cache_root, tiny_dir, models=changes)  # each change in turn, then the first model again
    assert result["counts"] == [counts(1, 0), counts(1, 0), counts(0, 1)]
    assert len(entries(cache_root)) == 3


def test_quantized_layers_load_with_their_weights(cache_root, tiny_quantizable_dir):
    """Layers quantized while loading keep all their weights in one buffer (QuantizedLayerWeights), also no cell's
    parameter: a loaded graph reads them as the compiled one did."""
    first = run(cache_root, tiny_quantizable_dir, models=[dict(load_in_8bit=True)])
    assert first["packed"] == ["QuantizedLayerWeights"] and first["counts"] == [counts(1, 0)]
    second = run(cache_root, tiny_quantizable_dir, models=[dict(load_in_8bit=True)])
    assert second["counts"] == [counts(0, 1)] and second["tokens"] == first["tokens"]


def test_compiled_step_owns_the_packed_weights(tiny_dir):
    """The packed layer weights are no cell's parameters (the state_dict is unchanged), so the compiled step
    registers them: a graph loaded from MindSpore's compile cache binds parameters by name to its cell's own."""
    from mindone.transformers import LlamaForCausalLM
    from mindone.transformers.generation.decoders import compiled_step

    model = LlamaForCausalLM.from_pretrained(tiny_dir)
    packed = [layer.packed.weights for layer in model.model.layers if layer.packed is not None]
    assert packed and not any(p.name in dict(model.parameters_and_names()) for p in packed)
    owned = compiled_step(model, 1, 256).parameters_dict()
    assert all(owned.get(p.name) is p for p in packed)


def test_corrupted_entries_are_rebuilt(cache_root, tiny_dir):
    """Three graphs, three kinds of damage: bytes overwritten (same size), a truncated file, an unreadable
    manifest. Each is detected before MindSpore reads the file, compiled again and its entry rewritten."""
    first = run(cache_root, tiny_dir, batches=(1, 2, 3))
    by_batch = {json.loads((e / "manifest.json").read_text())["components"]["signature"][0][0][0]: e
                for e in entries(cache_root)}  # fmt: skip
    overwritten, truncated, manifest = (by_batch[b] for b in (1, 2, 3))
    data = bytearray((overwritten / MINDIR).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\x5a" * 8
    (overwritten / MINDIR).write_bytes(bytes(data))
    (truncated / MINDIR).write_bytes((truncated / MINDIR).read_bytes()[:1000])
    (manifest / "manifest.json").write_text("{not json")
    second = run(cache_root, tiny_dir, batches=(1, 2, 3))
    assert second["counts"][-1] == counts(3, 0)
    assert second["tokens"] == first["tokens"]
    for entry in (overwritten, truncated, manifest):  # valid entries again
        record = json.loads((entry / "manifest.json").read_text())["files"][MINDIR]
        assert record["size"] == (entry / MINDIR).stat().st_size
    assert run(cache_root, tiny_dir, batches=(1, 2, 3))["counts"][-1] == counts(0, 3)


def test_turned_off_writes_nothing(cache_root, tiny_dir):
    off = run(cache_root, tiny_dir, env={"MINDONE_COMPILE_CACHE": "0"})
    assert off["counts"] == [counts(1, 0)]
    assert not (cache_root / "graphs").exists()
    run(cache_root, tiny_dir, api_off=True)  # set_compile_cache(False)
    assert not (cache_root / "graphs").exists()


def test_exported_graph_is_what_mindspore_caches(cache_root, tiny_dir):
    """A compiled graph is published by exporting it (MindSpore's cache stays off for compiles): with the
    attributes the backend adds removed, the export is the graph MindSpore's own compile cache writes (here both
    from one compile, with MindSpore's cache on for it)."""
    mindspore_dir = cache_root / "mindspore"
    result = run(cache_root, tiny_dir, raw_cache=str(mindspore_dir))
    from mindspore.train import mind_ir_pb2

    (own,) = (mindspore_dir / "rank_0" / "graph_cache").glob("compile_cache_0.mindir")
    (entry,) = entries(cache_root)
    ours = mind_ir_pb2.ModelProto.FromString((entry / MINDIR).read_bytes())
    theirs = mind_ir_pb2.ModelProto.FromString(own.read_bytes())
    for model in (ours, theirs):  # neither the primitives' order nor the nodes' scope names (renumbered) matter
        primitives = sorted(model.primitives, key=lambda p: p.name)
        del model.primitives[:]
        model.primitives.extend(primitives)
        for graph in (model.graph, *model.functions):
            for node in graph.node:
                node.ClearField("domain")
    assert ours == theirs
    assert result["counts"] == [counts(1, 0)]


# ---------------------------------------------------------------- the subprocess
def _worker(request: dict) -> dict:
    import mindspore as ms
    import numpy as np

    ms.set_device("CPU")
    from mindone.transformers import AutoConfig, AutoModelForCausalLM, set_compile_cache
    from mindone.transformers.generation.compile_cache import graph_counts

    if request.get("api_off"):
        set_compile_cache(False)
    if request.get("raw_cache"):  # MindSpore's own cache beside ours, to compare the files
        import mindone.transformers.generation.compile_cache as cc

        publish = cc._compile_and_publish

        def both(entry, components, call):
            os.environ.update(MS_COMPILER_CACHE_ENABLE="1", MS_COMPILER_CACHE_PATH=request["raw_cache"])
            try:
                return publish(entry, components, call)
            finally:
                os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"

        cc._compile_and_publish = both
    tokens, made = [], []
    for change in request.get("models", [{}]):
        kwargs = {}
        if change.get("config"):
            config = AutoConfig.from_pretrained(request["model"])
            for name, value in change["config"].items():
                setattr(config, name, value)
            kwargs["config"] = config
        if change.get("dtype"):
            kwargs["dtype"] = getattr(ms, change["dtype"])
        if change.get("load_in_8bit"):
            kwargs["load_in_8bit"] = True
        model = AutoModelForCausalLM.from_pretrained(request["model"], **kwargs)
        for batch in request["batches"]:
            ids = np.random.default_rng(batch).integers(3, 99, size=(batch, 6)).astype(np.int64)
            out = model.generate(ms.Tensor(ids), attention_mask=ms.Tensor(np.ones_like(ids)), do_sample=False,
                                 max_new_tokens=8, min_new_tokens=8, cache_implementation="static")  # fmt: skip
            tokens.append(out.asnumpy()[:, ids.shape[1] :].tolist())
            made.append(graph_counts(model))
    layers = model.model.layers
    from mindone.transformers import kernels

    return {"tokens": tokens, "counts": made, "packed": sorted({type(layer.packed).__name__ for layer in layers}),
            "kernels": kernels.library() is not None}  # fmt: skip


if __name__ == "__main__":
    print("RESULT " + json.dumps(_worker(json.loads(sys.argv[1]))), flush=True)
