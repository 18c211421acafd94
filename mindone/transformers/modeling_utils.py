"""PreTrainedModel: loading and saving Hugging Face checkpoints (safetensors, sharded, GGUF) for MindSpore cells.

Nothing here knows an architecture by name; models declare `config_class`, `base_model_prefix` and
`_tied_weights_keys` exactly as in transformers."""

import functools
import json
import logging
import os
from typing import Iterable, Optional

import mindspore as ms
import numpy as np
from mindspore import nn
from transformers import AutoConfig, GenerationConfig
from transformers.utils.hub import cached_file, convert_file_size_to_int

from . import backend
from .integrations import tensor_parallel
from .layers import Conv1D, Embedding, Linear, init_parameter, parameter_defaults
from .modeling_rope_utils import HOST_UPDATED_ROPE, rope_type_of
from .quantization import Int4Groups, Int8Groups, rtn
from .quantization.config import check_not_prequantized, weight_quantization
from .quantization.linear import QuantizedCell, QuantizedEmbedding, QuantizedLinear
from .safetensors_io import CheckpointError, iter_safetensors, write_safetensors

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin", "model.ckpt")

_DTYPES = {
    "float32": ms.float32, "float": ms.float32, "fp32": ms.float32,
    "float16": ms.float16, "half": ms.float16, "fp16": ms.float16,
    "bfloat16": ms.bfloat16, "bf16": ms.bfloat16,
}  # fmt: skip
_DTYPE_NAMES = {ms.float32: "float32", ms.float16: "float16", ms.bfloat16: "bfloat16"}


def resolve_dtype(dtype, config=None):
    """`dtype` as an ms dtype, a name ("float16", "torch.bfloat16") or "auto" (the config's dtype)."""
    if dtype is None:
        return ms.float32
    if isinstance(dtype, str) and dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    if dtype in _DTYPE_NAMES:
        return dtype
    name = str(dtype).replace("torch.", "").replace("mindspore.", "").lower()
    if name not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of float32, float16, bfloat16 or 'auto'")
    return _DTYPES[name]


def _hub_file(path: str, filename: str, hub_kwargs: dict, required: bool = True) -> Optional[str]:
    """Local directory or Hub repo id (resolved through huggingface_hub's cache, as transformers does)."""
    try:
        return cached_file(
            path,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
    except (OSError, ValueError) as err:
        if not required:
            return None
        reason = str(err).splitlines()[0]
        raise OSError(
            f"could not resolve '{path}' ({reason}); pass a local directory, or download the repo while online"
        ) from None


def _check_location(path: str, hub_kwargs: dict) -> None:
    if os.path.isdir(path):
        return
    looks_local = os.path.isabs(path) or path.startswith(".") or path.count("/") > 1 or os.path.exists(path)
    if looks_local or os.path.isfile(path):
        raise OSError(f"model path '{path}' does not exist or is not a directory; pass a saved model directory")
    if _hub_file(path, "config.json", hub_kwargs) is None:
        raise OSError(
            f"'{path}' is not a local directory and is not in the Hugging Face cache (offline or unknown repo); "
            f"download it first (e.g. `huggingface-cli download {path}`) or pass a local path"
        )


def load_config(path: str, hub_kwargs: dict, config_class=None, **kwargs):
    """transformers' AutoConfig for the checkpoint, or `config_class` when it has no model_type for AutoConfig to go
    by (BayesianDetectorConfig); returns (config, kwargs it did not consume)."""
    config_file = _hub_file(path, "config.json", hub_kwargs)
    if config_file is None:
        raise OSError(f"'{path}' has no config.json; pass a directory written by save_pretrained (or gguf_file=...)")
    reader = config_class if config_class is not None and not config_class.model_type else AutoConfig
    try:
        config, unused = reader.from_pretrained(path, return_unused_kwargs=True, **hub_kwargs, **kwargs)
    except (KeyError, ValueError) as err:
        with open(config_file) as f:
            model_type = json.load(f).get("model_type")
        from .models.auto import supported_model_types

        raise ValueError(
            f"model_type {model_type!r} in {config_file} is not supported; supported: {', '.join(supported_model_types())}"
        ) from err
    check_not_prequantized(config, path)
    return config, unused


def weight_files(path: str, hub_kwargs: dict) -> list[str]:
    index_file = _hub_file(path, SAFE_WEIGHTS_INDEX_NAME, hub_kwargs)
    if index_file is not None:
        with open(index_file) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [_hub_file(path, shard, hub_kwargs) for shard in shards]
        missing = [shard for shard, file in zip(shards, files) if file is None]
        if missing:
            raise CheckpointError(f"'{path}' is missing shards listed in {SAFE_WEIGHTS_INDEX_NAME}: {missing}")
        return files
    single = _hub_file(path, SAFE_WEIGHTS_NAME, hub_kwargs)
    if single is not None:
        return [single]
    pickles = [name for name in PICKLE_WEIGHTS_NAMES if _hub_file(path, name, hub_kwargs, required=False)]
    if pickles:
        raise CheckpointError(
            f"'{path}' holds only pickled PyTorch weights ({pickles[0]}), which are never loaded; convert them to "
            "safetensors with transformers: AutoModelForCausalLM.from_pretrained(path).save_pretrained(out_dir)"
        )
    raise CheckpointError(f"'{path}' has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}; save the model with safetensors")


class PreTrainedModel(nn.Cell):
    config_class = None
    base_model_prefix = ""
    _no_split_modules: list = []
    _tied_weights_keys: list = []

    def __init__(self, config, *args, **kwargs):
        super().__init__()
        backend.prepare_runtime()
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None

    def __call__(self, *args, **kwargs):
        if kwargs.get("output_attentions"):
            raise NotImplementedError("output_attentions=True is not supported: the fused attention kernels never form "
                                      "the attention weights; call the model without it")  # fmt: skip
        if ms.get_context("mode") == ms.GRAPH_MODE:
            rope_type = rope_type_of(self.config)
            if rope_type in HOST_UPDATED_ROPE:
                raise ValueError(
                    f"{rope_type} rope scaling recomputes frequencies from the sequence length on the host, which a "
                    "graph-mode forward cannot do; run this model in PyNative mode (ms.set_context(mode=ms.PYNATIVE_MODE))"
                )
            if kwargs.get("past_key_values") is None:
                kwargs["use_cache"] = False  # a DynamicCache is a Python object that a compiled graph cannot create
        elif not self.__dict__.get("generating", False):  # generate() checks once per call
            self.check_weights()
        return super().__call__(*args, **kwargs)

    @classmethod
    def can_generate(cls) -> bool:
        return hasattr(cls, "generate")

    @property
    def dtype(self):
        """The dtype of the model's float parameters (quantized weights are stored in integer types)."""
        return next(p.dtype for p in self.get_parameters() if p.dtype in (ms.float32, ms.float16, ms.bfloat16))

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes of the model's parameters (transformers' method; this model keeps no buffers besides them)."""
        return sum(p.size * _itemsize(p.dtype) for p in self.get_parameters())

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.get_parameters())

    def get_input_embeddings(self):
        base = getattr(self, self.base_model_prefix, self)
        return base.embed_tokens

    def get_output_embeddings(self):
        return getattr(self, "lm_head", None)

    def _ties_embeddings(self) -> bool:
        return bool(getattr(self.config.get_text_config(), "tie_word_embeddings", False))

    def tie_weights(self) -> None:
        output = self.get_output_embeddings()
        if output is not None and self._ties_embeddings():
            output.weight = self.get_input_embeddings().weight

    def state_dict(self) -> dict:
        """Parameter name -> Parameter, each shared (tied) parameter once, under its first name."""
        return dict(self.parameters_and_names())

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        config=None,
        cache_dir=None,
        force_download: bool = False,
        local_files_only: bool = False,
        token=None,
        revision: str = "main",
        subfolder: str = "",
        dtype=None,
        mindspore_dtype=None,
        gguf_file: Optional[str] = None,
        dequantize: bool = True,
        output_loading_info: bool = False,
        **kwargs,
    ):
        """`dequantize=False` with a `gguf_file` keeps the file's quantized weights (linear layers become
        quantization.linear.QuantizedLinear; block types without a quantized format are dequantized, with one
        warning naming them); the default dequantizes everything, as transformers does.
        `quantization_config=QuantoConfig(weights="int8" | "int4")`, or `load_in_8bit=True` / `load_in_4bit=True`,
        quantizes a float checkpoint's linear and embedding weights while loading, one tensor at a time."""
        path = str(pretrained_model_name_or_path)
        check_dequantize(dequantize, gguf_file)
        quantization = weight_quantization(kwargs.pop("quantization_config", None), kwargs.pop("load_in_8bit", False),
                                           kwargs.pop("load_in_4bit", False), gguf_file)  # fmt: skip
        tp_plan, tp_size = kwargs.pop("tp_plan", None), kwargs.pop("tp_size", None)
        if tp_plan is not None or tp_size is not None:
            tensor_parallel.check_arguments(tp_plan, tp_size, gguf_file, quantization)
        if "torch_dtype" in kwargs:  # transformers' deprecated spelling of `dtype`
            dtype = kwargs.pop("torch_dtype") if dtype is None else dtype
        hub_kwargs = dict(
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            revision=revision,
            subfolder=subfolder,
        )
        if dtype is not None and mindspore_dtype is not None and dtype != mindspore_dtype:
            raise ValueError(f"dtype={dtype} and mindspore_dtype={mindspore_dtype} disagree; pass only one")
        if gguf_file is not None:
            from .integrations.gguf import open_gguf

            checkpoint = open_gguf(path, gguf_file)
            config = config or checkpoint.config
            for key, value in kwargs.items():
                setattr(config, key, value)
            generation_config = checkpoint.generation_config
            read_tensors = lambda names: checkpoint.tensors(names, frozenset() if dequantize else model.quantizable_weight_names())  # noqa: E731
        else:
            _check_location(path, hub_kwargs)
            if config is None:
                config, kwargs = load_config(path, hub_kwargs, cls.config_class, **kwargs)
            files = weight_files(path, hub_kwargs)
            read_tensors = lambda names: (item for file in files for item in iter_safetensors(file, model._checkpoint_slice))  # noqa: E731
            generation_config = None
            if cls.can_generate() and _hub_file(path, "generation_config.json", hub_kwargs, required=False):
                generation_config = GenerationConfig.from_pretrained(path, **hub_kwargs)
        cls._check_model_type(config)
        ms_dtype = resolve_dtype(dtype if dtype is not None else mindspore_dtype, config)
        backend.check_dtype_supported(ms_dtype)
        parallel, plan = None, None
        if tp_plan is not None:
            plan = tensor_parallel.model_plan(cls, config)
            parallel = tensor_parallel.start(config, plan, tp_size)
        with parameter_defaults(ms_dtype, empty=True):
            model = cls(config if parallel is None else parallel.local_config, *model_args)
        if parallel is not None:
            model._distribute(config, plan, parallel)
        targets = model._quantization_targets(quantization) if quantization is not None else {}
        info = model._load_tensors(read_tensors(list(model.state_dict())), path, targets)
        if quantization is not None:
            model.config.quantization_config = quantization.config
        if gguf_file is not None and not dequantize:
            _warn_dequantized(checkpoint)
        if generation_config is not None:
            model.generation_config = generation_config
        model.set_train(False)
        return (model, info) if output_loading_info else model

    @classmethod
    def _check_model_type(cls, config) -> None:
        expected = getattr(cls.config_class, "model_type", None)
        if expected and config.model_type != expected:
            raise ValueError(
                f"{cls.__name__} expects model_type '{expected}' but the config says '{config.model_type}'; "
                "use AutoModelForCausalLM to pick the class from the config"
            )

    def _distribute(self, config, plan: dict, parallel) -> None:
        """Turns this model, built from parallel.local_config, into its tensor-parallel form (one rank's share) that
        reports the whole model's config."""
        tensor_parallel.shard(self, plan, parallel)
        for name, param in self.parameters_and_names():
            param.name = name  # cells put in place after construction named their parameters by attribute only
        for _, cell in self.cells_and_names():  # the projections are refreshed once the weights are loaded
            if isinstance(cell, PreTrainedModel):
                cell.config = config
        self.tensor_parallel = parallel

    @property
    def layers_config(self):
        """The config the layers were built from: the model's own, or under tensor parallel this rank's share of the
        heads and features (integrations/tensor_parallel.py); caches are shaped from it."""
        parallel = self.__dict__.get("tensor_parallel")
        return self.config if parallel is None else parallel.local_config

    def _checkpoint_slice(self, name: str) -> Optional[tuple]:
        """(dim, start, stop) of the checkpoint tensor `name` that this rank reads under tensor parallel, else None."""
        parallel = self.__dict__.get("tensor_parallel")
        if parallel is None:
            return None
        target = self._checkpoint_name(name, parallel.slices)
        return None if target is None else parallel.slices[target]

    def _checkpoint_name(self, name: str, params: dict) -> Optional[str]:
        """Maps a checkpoint key onto this model's names (adds or strips the base-model prefix like HF)."""
        prefix = self.base_model_prefix + "."
        for candidate in (name, name[len(prefix):] if name.startswith(prefix) else None, prefix + name):
            if candidate in params:
                return candidate
        return None

    def _load_tensors(self, tensors: Iterable, path: str, quantize: Optional[dict] = None) -> dict:
        """Sets the parameters from (checkpoint name, array) pairs; `quantize` maps parameter names to the bits
        (8 or 4) their float arrays are quantized to on the way in (quantization.rtn), and whether the array is
        stored transposed."""
        params = self.state_dict()
        arena = WeightArena(params.values()) if backend.device_target() == "CPU" else None
        tied = set(self._tied_weights_keys) if self._ties_embeddings() else set()
        loaded, unexpected = set(), []
        for name, array in tensors:
            target = self._checkpoint_name(name, params)
            if target is None:
                if name not in tied:
                    unexpected.append(name)
                continue
            param = params[target]
            if tuple(array.shape) != tuple(param.shape):  # before quantizing, which may transpose
                raise CheckpointError(
                    f"weight '{name}' in '{path}' has shape {tuple(array.shape)} but the model expects "
                    f"{tuple(param.shape)}; the checkpoint does not match its config.json"
                )
            if quantize and target in quantize:
                bits, transposed = quantize[target]
                array = rtn.quantize(array.T if transposed else array, bits)
            if isinstance(array, (Int8Groups, Int4Groups)):
                self._quantize_cell(target, array)
            else:
                param.set_data(arena.tensor(param, array) if arena is not None else _to_tensor(array, param.dtype))
            del array  # a copied (cast) array is freed before the next tensor is read
            loaded.add(target)
        missing = [name for name in params if name not in loaded]
        for name in missing:
            init_parameter(params[name])
        for _, cell in self.cells_and_names():
            if hasattr(cell, "refresh_projections"):
                cell.refresh_projections()
        if arena is not None:
            self._pack_layer_weights(arena)
        self._report_loading(path, missing, unexpected)
        return {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": [], "error_msgs": []}

    def quantizable_weight_names(self) -> frozenset:
        """The state_dict names of the weights of Linear and Embedding layers: those a quantized checkpoint may keep
        quantized."""
        cells = (Linear, Embedding)
        names = {f"{prefix}.weight" for prefix, cell in self.cells_and_names() if isinstance(cell, cells)}
        return frozenset(names & set(self.state_dict()))

    def _quantization_targets(self, quantization) -> dict:
        """{weight name: (bits, stored transposed)} for the linear, Conv1D and embedding weights `quantization`
        converts, checked before any tensor is read. A tied LM head and embedding share one table: it is quantized
        only if both are."""
        cells = dict(self.cells_and_names())
        vocabulary_cells = (self.get_input_embeddings(), self.get_output_embeddings())
        vocabulary = {name for name, cell in cells.items() if cell is vocabulary_cells[0]}
        if self._ties_embeddings():
            vocabulary |= {name for name, cell in cells.items() if cell is vocabulary_cells[1]}
        params, targets = self.state_dict(), {}
        for owner, cell in cells.items():
            weight = f"{owner}.weight"
            if not isinstance(cell, (Linear, Embedding, Conv1D)) or weight not in params:
                continue
            if all(quantization.converts(name) for name in (vocabulary if owner in vocabulary else {owner})):
                transposed = isinstance(cell, Conv1D)  # (in, out): quantized as its transpose
                shape = params[weight].shape
                quantization.check_shape(weight, shape[::-1] if transposed else shape)
                targets[weight] = (quantization.bits_for(cell in vocabulary_cells), transposed)
        return targets

    def _quantize_cell(self, weight_name: str, weight) -> None:
        """Replaces the Linear, Conv1D or Embedding that owns `weight_name` with its quantized form holding `weight`; a
        tied LM head follows its embedding table."""
        path = weight_name.rpartition(".")[0]
        parent_path, _, attribute = path.rpartition(".")
        parent = functools.reduce(getattr, parent_path.split("."), self) if parent_path else self
        cell = getattr(parent, attribute)
        if isinstance(cell, Embedding):
            ties = self._ties_embeddings() and cell is self.get_input_embeddings() and self.get_output_embeddings() is not None
            quantized = QuantizedEmbedding(weight, self.dtype)
            setattr(parent, attribute, quantized)
            if ties:
                self.lm_head = QuantizedLinear(None, None, self.dtype, tied_to=quantized)
        else:
            setattr(parent, attribute, QuantizedLinear(weight, cell.bias, self.dtype))

    def _pack_layer_weights(self, arena: "WeightArena") -> None:
        """Layers that can read all their weights from one buffer (a `pack_weights` method) get their slice of the
        arena: a compiled graph then passes each such layer one parameter instead of up to fifteen."""
        for _, cell in self.cells_and_names():
            if hasattr(cell, "pack_weights"):
                cell.pack_weights(arena)
        self._note_weights()

    def _note_weights(self) -> None:
        self.__dict__["_weight_addresses"] = [(p, p.data_ptr()) for p in self.get_parameters()]

    def check_weights(self) -> None:
        """Compiled graphs and packed layers (layers.PackedWeights) keep reading the buffers the weights had when
        they were built; if a weight was replaced since (set_data), both are dropped so that the next call rebuilds
        them over the current weights. Runs before every generate() and every forward outside generate()."""
        noted = self.__dict__.get("_weight_addresses")
        if noted is None:
            self._note_weights()
            return
        if all(param.data_ptr() == address for param, address in noted):
            return
        for _, cell in self.cells_and_names():
            if getattr(cell, "packed", None) is not None:
                object.__setattr__(cell, "packed", None)
        self.__dict__.pop("_compiled_steps", None)
        self.__dict__["weights_version"] = self.__dict__.get("weights_version", 0) + 1
        self._note_weights()

    def _report_loading(self, path: str, missing: list, unexpected: list) -> None:
        cls = type(self).__name__
        if unexpected:
            logger.warning(
                f"Some weights of the model checkpoint at {path} were not used when initializing {cls}: {unexpected}"
            )
        if missing:
            logger.warning(
                f"Some weights of {cls} were not initialized from the model checkpoint at {path} and are newly "
                f"initialized: {missing}. You should probably TRAIN this model on a down-stream task."
            )

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory, max_shard_size="5GB", safe_serialization: bool = True, **kwargs):
        if not safe_serialization:
            raise ValueError("only safetensors checkpoints are written (pickles are never used): keep safe_serialization=True")
        if os.path.isfile(save_directory):
            raise OSError(f"save_directory '{save_directory}' is a file; pass a directory path")
        quantized = [name for name, cell in self.cells_and_names() if isinstance(cell, QuantizedCell)]
        if quantized:
            raise NotImplementedError(
                f"save_pretrained does not write quantized layers ({len(quantized)}, e.g. {quantized[0]}): save the float "
                "model and quantize while loading (quantization_config=...), or keep using the GGUF file"
            )
        os.makedirs(save_directory, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.dtype = _DTYPE_NAMES[self.dtype]
        self.config.save_pretrained(save_directory)
        if self.generation_config is not None:
            self.generation_config.save_pretrained(save_directory)
        shards = _plan_shards(self.state_dict(), convert_file_size_to_int(max_shard_size))
        _write_shards(save_directory, shards)


class WeightArena:
    """One host allocation for all of a model's weights, each parameter a fixed slice of it (CPU backend).

    numpy asks the kernel to back allocations of 4 MB and more with transparent huge pages (madvise), so one
    allocation puts every weight on 2 MB pages, where separate per-weight arrays of SmolLM2's sizes (0.4-3.5 MB)
    got 4 KB pages: decoding streams every weight once per token, and with huge pages the streaming reads of
    SmolLM2's decode step took ~10% less time (measured 18.8 -> 17.3 ms at batch 1, 30.9 -> 27.2 ms at batch 8).
    Slices follow the model's parameter order, so a layer's weights are contiguous (`span`)."""

    ALIGNMENT = 64

    def __init__(self, params):
        self.slots, offset = {}, 0
        for param in {id(p): p for p in params}.values():
            self.slots[id(param)] = offset
            offset += self._aligned(param.size * _itemsize(param.dtype))
        self.buffer = np.empty(offset + self.ALIGNMENT, np.uint8)  # pages are touched only as weights arrive
        self.base = -self.buffer.ctypes.data % self.ALIGNMENT

    def _aligned(self, nbytes: int) -> int:
        return -(-nbytes // self.ALIGNMENT) * self.ALIGNMENT

    def _address(self, param) -> int:
        return self.buffer.ctypes.data + self.base + self.slots[id(param)]

    def tensor(self, param, array: np.ndarray) -> ms.Tensor:
        """A Tensor of `param`'s dtype holding `array`, stored in `param`'s slice."""
        nptype = np.dtype(ms.dtype_to_nptype(param.dtype))
        start = self.base + self.slots[id(param)]
        view = self.buffer[start : start + param.size * nptype.itemsize].view(nptype).reshape(array.shape)
        np.copyto(view, array, casting="unsafe")
        return ms.from_numpy(view)

    def holds(self, param) -> bool:
        """Whether `param` still reads its slice (it was loaded and not replaced since)."""
        return id(param) in self.slots and param.data_ptr() == self._address(param)

    def span(self, params: list) -> Optional[tuple]:
        """(one Tensor over the slices of `params`, each one's offset in it in elements), or None when they do not
        all hold their slices or differ in dtype."""
        if not params or not all(self.holds(p) for p in params) or len({p.dtype for p in params}) != 1:
            return None
        itemsize = _itemsize(params[0].dtype)
        start = min(self.base + self.slots[id(p)] for p in params)
        end = max(self.base + self.slots[id(p)] + p.size * itemsize for p in params)
        nptype = np.dtype(ms.dtype_to_nptype(params[0].dtype))
        offsets = [(self.base + self.slots[id(p)] - start) // itemsize for p in params]
        return ms.from_numpy(self.buffer[start:end].view(nptype)), offsets


def check_dequantize(dequantize: bool, gguf_file) -> None:
    if not dequantize and gguf_file is None:
        raise ValueError("dequantize=False keeps a GGUF file's quantized weights; pass gguf_file=... as well")


def _warn_dequantized(checkpoint) -> None:
    counts = getattr(checkpoint, "dequantized_types", None)
    if counts:
        kinds = ", ".join(f"{kind} ({n} tensors)" for kind, n in sorted(counts.items()))
        logger.warning(f"GGUF block types without a quantized format here were dequantized to float: {kinds}")


def _itemsize(dtype) -> int:
    return np.dtype(ms.dtype_to_nptype(dtype)).itemsize


def _to_tensor(array, dtype) -> ms.Tensor:
    """A Tensor of `dtype` holding `array`. The checkpoint readers hand over fresh arrays, so when the dtype already
    matches MindSpore adopts the array's buffer (ms.Tensor(array) copies it: two copies of each weight while loading,
    the numpy one freed only when the next tensor is read); read-only, memory-mapped or partial views are copied."""
    array = np.asarray(array)
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    adoptable = root.base is None and root.nbytes == array.nbytes and array.flags.c_contiguous and array.flags.writeable
    if adoptable and array.dtype == ms.dtype_to_nptype(dtype):
        return ms.from_numpy(array)
    return ms.Tensor(array, dtype=dtype)


def _plan_shards(params: dict, max_bytes: int) -> list[dict]:
    shards, current, size = [], {}, 0
    for name, param in params.items():
        nbytes = int(np.prod(param.shape)) * param.itemsize
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = param
        size += nbytes
    return shards + [current]


def _write_shards(directory: str, shards: list[dict]) -> None:
    names = (
        [SAFE_WEIGHTS_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for stale in os.listdir(directory):
        if stale.startswith("model") and stale.endswith(".safetensors") and stale not in names:
            os.remove(os.path.join(directory, stale))
    weight_map, total = {}, 0
    for filename, shard in zip(names, shards):
        bf16 = {name for name, param in shard.items() if param.dtype == ms.bfloat16}
        arrays = {name: param.astype(ms.float32).asnumpy() if name in bf16 else param.asnumpy() for name, param in shard.items()}
        write_safetensors(os.path.join(directory, filename), arrays, bf16)
        weight_map.update(dict.fromkeys(shard, filename))
        total += sum(int(np.prod(p.shape)) * p.itemsize for p in shard.values())
    index_path = os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME)
    if len(shards) > 1:
        with open(index_path + ".tmp", "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        os.replace(index_path + ".tmp", index_path)
    elif os.path.exists(index_path):
        os.remove(index_path)
