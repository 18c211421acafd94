"""Tensor parallel under msrun: `from_pretrained(path, tp_plan="auto", tp_size=N)` as in transformers.

The plan is transformers' own: the config's `base_model_tp_plan` (under the base model's prefix) plus the model
class's `_tp_plan`, patterns of module names with "*" for layer numbers mapped to a style:
- "colwise" on q/k/v or gate/up projections: each rank holds its share of the heads / key-value heads /
  intermediate features, so the layers are built from a per-rank config (`local_config`) and need no communication;
- "rowwise" on the projections after them (o_proj, down_proj): each rank multiplies its input features, the partial
  sums are all-reduced, then the bias is added once;
- "colwise_rep" (lm_head, Phi-3's packed projections): each rank computes its slice of the outputs, which are
  gathered so that every rank holds all of them; a tied lm_head shares its vocabulary slice with the embedding,
  which then looks up only its own rows and all-reduces (each token's row comes from exactly one rank);
- "rowwise_rep": "rowwise" for an input that arrives whole: each rank takes its slice of it first;
- "replicate" / "replicated_with_grad_allreduce": the whole weight on every rank.
Each rank reads only its slices of the checkpoint (safetensors_io.iter_safetensors). The collectives are
MindSpore's (backend.tensor_parallel_group), inside compiled graphs as well as in PyNative."""

import copy
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import mindspore as ms
from mindspore import ops

from .. import backend
from ..layers import Embedding, Linear

SUPPORTED_STYLES = ("colwise", "rowwise", "colwise_rep", "rowwise_rep", "replicate", "replicated_with_grad_allreduce")
# the config field whose count a "colwise" projection splits, and the one whose split the next projection receives
_COLWISE_FIELDS = {"q_proj": "num_attention_heads", "k_proj": "num_key_value_heads", "v_proj": "num_key_value_heads",
                   "gate_proj": "intermediate_size", "up_proj": "intermediate_size"}  # fmt: skip
_ROWWISE_INPUT_FIELDS = {"o_proj": "num_attention_heads", "down_proj": "intermediate_size"}


@dataclass
class TensorParallel:
    """This rank's place: `size` ranks share each layer; `rank` is this one's index among them; `group` the
    communication group they form. `local_config` is the config the layers are built from (their share of
    heads and features); `slices` maps parameter names to the (dim, start, stop) this rank reads."""

    size: int
    rank: int
    group: str
    local_config: object = None
    slices: dict = field(default_factory=dict)


def _in_msrun() -> bool:
    return os.environ.get("MS_ROLE") == "MS_WORKER" or "RANK_SIZE" in os.environ and "MS_SCHED_HOST" in os.environ


def world_size_of_launch() -> int:
    """The number of workers msrun started (MS_WORKER_NUM, or RANK_SIZE)."""
    return int(os.environ.get("MS_WORKER_NUM") or os.environ.get("RANK_SIZE") or 1)


def check_arguments(tp_plan, tp_size, gguf_file, quantization) -> None:
    """The one-line errors for tp_plan / tp_size themselves and for what cannot be sharded yet."""
    if tp_plan is None:
        raise ValueError("tp_size is set but tp_plan is not; pass tp_plan='auto' as well (transformers' arguments)")
    if tp_plan != "auto":
        raise ValueError(f"tp_plan={tp_plan!r} is not supported; pass tp_plan='auto' (the model's own plan)")
    if tp_size is not None and (not isinstance(tp_size, int) or tp_size < 1):
        raise ValueError(f"tp_size={tp_size!r} must be a positive integer (ranks per tensor-parallel group)")
    if gguf_file is not None:
        raise ValueError("tp_plan does not shard GGUF files yet; convert the file to safetensors "
                         "(python -m mindone.transformers.convert_gguf) and load that directory with tp_plan='auto'")  # fmt: skip
    if quantization is not None:
        raise ValueError("tp_plan does not shard quantized weights yet; load the float checkpoint with tp_plan='auto' "
                         "(without quantization_config / load_in_8bit / load_in_4bit)")  # fmt: skip
    if not _in_msrun():
        raise ValueError("tp_plan='auto' needs one process per rank started by msrun, e.g. "
                         "`msrun --worker_num=2 --local_worker_num=2 --join=True script.py`")  # fmt: skip


def model_plan(cls, config) -> dict:
    """transformers' plan for `cls`: the config's base_model_tp_plan under the base model's prefix (when `cls` wraps
    a base model) and the class's own _tp_plan."""
    base = dict(getattr(config, "base_model_tp_plan", None) or {})
    if not base:
        raise ValueError(f"{cls.__name__} has no tensor-parallel plan (transformers' {type(config).__name__} defines "
                         "no base_model_tp_plan); load it without tp_plan")  # fmt: skip
    wraps_base = hasattr(cls, "base_model_class")
    plan = {f"{cls.base_model_prefix}.{k}" if wraps_base else k: v for k, v in base.items()}
    if wraps_base:
        plan.update(getattr(cls, "_tp_plan", None) or {})
    unknown = sorted({style for style in plan.values() if style not in SUPPORTED_STYLES})
    if unknown:
        entry = next(k for k, v in plan.items() if v == unknown[0])
        raise ValueError(f"tp_plan entry {entry!r}: {unknown[0]!r} is not a style this library shards; supported: "
                         f"{', '.join(SUPPORTED_STYLES)}")  # fmt: skip
    return plan


def style_of(plan: dict, name: str) -> Optional[str]:
    """The plan's style for the module `name` (layer numbers matched by "*"), or None."""
    generic = re.sub(r"\.\d+(?=\.|$)", ".*", name)
    return plan.get(generic, plan.get(name))


def _leaf_styles(plan: dict) -> dict:
    """Style per projection leaf name (q_proj, o_proj, ...) for the colwise/rowwise pairs that split the config."""
    return {pattern.rsplit(".", 1)[-1]: style for pattern, style in plan.items()}


def split_fields(plan: dict) -> dict:
    """Config field -> the projections that split it: every field a "colwise" projection divides among the ranks."""
    fields = {}
    for leaf, style in _leaf_styles(plan).items():
        if style == "colwise":
            if leaf not in _COLWISE_FIELDS:
                raise ValueError(f"tp_plan: 'colwise' on {leaf} leaves its outputs split, which this library only "
                                 "consumes for q/k/v and gate/up projections; use 'colwise_rep' for it")  # fmt: skip
            fields.setdefault(_COLWISE_FIELDS[leaf], []).append(leaf)
    return fields


def check_divisible(config, plan: dict, size: int) -> None:
    """Every count the plan splits must divide by the tensor-parallel size; checked before any weight is read."""
    counts = {name: getattr(config, name) for name in split_fields(plan)}
    if "num_key_value_heads" in counts and counts["num_key_value_heads"] is None:
        counts["num_key_value_heads"] = config.num_attention_heads
    lm_style = plan.get("lm_head")
    if lm_style in ("colwise", "colwise_rep"):
        counts["vocab_size"] = config.vocab_size
    for name, count in counts.items():
        if count % size:
            options = [d for d in range(1, math.gcd(*counts.values()) + 1) if math.gcd(*counts.values()) % d == 0]
            described = ", ".join(f"{k}={v}" for k, v in counts.items())
            raise ValueError(f"tp_size={size} does not divide {name}={count}; the plan splits {described}, so use a "
                             f"tp_size among {options}")  # fmt: skip


def local_config(config, plan: dict, size: int):
    """The config the layers of one rank are built from: each split count divided by `size` (head_dim kept)."""
    local = copy.deepcopy(config)
    local.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if getattr(local, "num_key_value_heads", None) is None:
        local.num_key_value_heads = config.num_attention_heads
    for name in split_fields(plan):
        setattr(local, name, getattr(local, name) // size)
    return local


def start(config, plan: dict, tp_size: Optional[int]) -> TensorParallel:
    """Checks the sizes, initialises MindSpore's communication (unless the caller did) and returns this rank's place."""
    world = world_size_of_launch()
    size = world if tp_size is None else tp_size
    if world % size:
        raise ValueError(f"tp_size={size} does not divide the {world} msrun workers; pass a tp_size that divides {world}")
    check_divisible(config, plan, size)
    group = backend.tensor_parallel_group(size)
    backend.share_cores(world)
    rank, _ = backend.communication_rank()
    return TensorParallel(size=size, rank=rank % size, group=group, local_config=local_config(config, plan, size))


def shard(model, plan: dict, parallel: TensorParallel) -> None:
    """Replaces the planned cells of `model` (built from parallel.local_config) by their tensor-parallel forms and
    records the checkpoint slice each of this rank's parameters reads (parallel.slices)."""
    fields = split_fields(plan)
    for name, cell in list(model.cells_and_names()):
        style = style_of(plan, name)
        if style is None or style.startswith("replicate"):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if not isinstance(cell, Linear):
            raise ValueError(f"tp_plan entry for {name!r} ({style}) names a {type(cell).__name__}; this library shards "
                             "Linear layers only")  # fmt: skip
        if style == "colwise":
            _record(parallel, name, cell, dim=0, with_bias=True)
        elif style == "colwise_rep":
            _replace(model, name, GatheredLinear.of(cell, parallel, name))
        else:  # rowwise, rowwise_rep
            input_is_split = _ROWWISE_INPUT_FIELDS.get(leaf) in fields
            _replace(model, name, ReducedLinear.of(cell, parallel, name, input_is_split))
    _shard_tied_embedding(model, plan, parallel)


def _record(parallel: TensorParallel, name: str, cell, dim: int, with_bias: bool) -> None:
    length = cell.weight.shape[dim]
    parallel.slices[f"{name}.weight"] = (dim, parallel.rank * length, (parallel.rank + 1) * length)
    if with_bias and cell.bias is not None:
        parallel.slices[f"{name}.bias"] = (0, parallel.rank * length, (parallel.rank + 1) * length)


def _replace(model, name: str, cell) -> None:
    parent_path, _, attribute = name.rpartition(".")
    parent = model
    for part in filter(None, parent_path.split(".")):
        parent = getattr(parent, part)
    setattr(parent, attribute, cell)


def _shard_tied_embedding(model, plan: dict, parallel: TensorParallel) -> None:
    """A tied lm_head split by vocabulary takes the embedding with it: the embedding holds the same rows."""
    head = model.get_output_embeddings()
    if not (isinstance(head, GatheredLinear) and model._ties_embeddings()):
        return
    embedding = model.get_input_embeddings()
    base = getattr(model, model.base_model_prefix)
    sharded = VocabParallelEmbedding(head.weight.shape[0], embedding.weight.shape[1], parallel)
    base.embed_tokens = sharded
    parallel.slices.pop("lm_head.weight", None)
    name = next(n for n, c in model.cells_and_names() if c is sharded)
    _record(parallel, name, sharded, dim=0, with_bias=False)
    model.tie_weights()


def _split_shape(cell, dim: int, parallel: TensorParallel, name: str) -> int:
    full = cell.weight.shape[dim]
    if full % parallel.size:
        what = "output features" if dim == 0 else "input features"
        raise ValueError(f"tp_size={parallel.size} does not divide the {full} {what} of {name}; use a tp_size that "
                         f"divides {full}")  # fmt: skip
    return full // parallel.size


class GatheredLinear(Linear):
    """A Linear holding this rank's rows of the weight; the outputs of all ranks are gathered (last axis, in rank
    order), so every rank returns the whole output."""

    @classmethod
    def of(cls, cell: Linear, parallel: TensorParallel, name: str) -> "GatheredLinear":
        rows = _split_shape(cell, 0, parallel, name)
        sharded = cls(cell.weight.shape[1], rows, cell.bias is not None, parallel)
        _record(parallel, name, sharded, dim=0, with_bias=True)
        return sharded

    def __init__(self, in_features: int, out_features: int, bias: bool, parallel: TensorParallel):
        super().__init__(in_features, out_features, bias)
        self.matmul_kernel, self.kernel = self.kernel, "sharded"  # not read directly by the fused layer kernels
        self.parts = parallel.size
        self.gather = ops.AllGather(group=parallel.group)

    def construct(self, x):
        local = backend.linear(x, self.weight, self.bias, self.matmul_kernel)
        parts = self.gather(local)  # the ranks' outputs stacked on the first axis
        parts = parts.reshape((self.parts,) + local.shape)
        order = tuple(range(1, local.ndim)) + (0, local.ndim)
        return parts.transpose(order).reshape(local.shape[:-1] + (self.parts * local.shape[-1],))


class ReducedLinear(Linear):
    """A Linear holding this rank's columns of the weight: the partial products of all ranks are summed
    (all-reduce), then the bias is added once. `slice_input` takes this rank's part of an input that arrives whole."""

    @classmethod
    def of(cls, cell: Linear, parallel: TensorParallel, name: str, input_is_split: bool) -> "ReducedLinear":
        columns = cell.weight.shape[1] if input_is_split else _split_shape(cell, 1, parallel, name)
        sharded = cls(columns, cell.weight.shape[0], cell.bias is not None, parallel, not input_is_split)
        parallel.slices[f"{name}.weight"] = (1, parallel.rank * columns, (parallel.rank + 1) * columns)
        return sharded

    def __init__(self, in_features: int, out_features: int, bias: bool, parallel: TensorParallel, slice_input: bool):
        super().__init__(in_features, out_features, bias)
        self.matmul_kernel, self.kernel = self.kernel, "sharded"
        self.input_start = parallel.rank * in_features if slice_input else -1
        # a fused MLP kernel may compute this rank's product from the rank's own features, then call finish()
        self.partial = not slice_input and self.matmul_kernel == "fused"
        self.reduce = ops.AllReduce(group=parallel.group)

    def construct(self, x):
        if self.input_start >= 0:
            x = x[..., self.input_start : self.input_start + self.weight.shape[1]]
        return self.finish(backend.linear(x, self.weight, None, self.matmul_kernel))

    def finish(self, partial):
        """The layer's output from this rank's partial product: the sum over the ranks, then the bias."""
        out = self.reduce(partial)
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(Embedding):
    """This rank's rows of the vocabulary: tokens outside them look up zeros, and the all-reduce over the ranks puts
    each token's row (from the one rank holding it) in every rank's output."""

    def __init__(self, rows: int, embedding_dim: int, parallel: TensorParallel):
        super().__init__(rows, embedding_dim)
        self.first_row = parallel.rank * rows
        self.reduce = ops.AllReduce(group=parallel.group)

    def construct(self, ids):
        local = ids - self.first_row
        inside = ops.logical_and(local >= 0, local < self.weight.shape[0])
        rows = backend.embedding(ops.where(inside, local, ops.zeros_like(local)), self.weight)
        return self.reduce(rows * inside.expand_dims(-1).astype(rows.dtype))


def barrier() -> None:
    """Returns once every rank of the world has called it (an all-reduce of one number)."""
    ops.AllReduce()(ms.Tensor([1.0], ms.float32)).asnumpy()

