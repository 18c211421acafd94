"""Drop-in replacements for layers.Linear and layers.Embedding that keep only a quantized weight (formats.py)."""

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn

from .. import backend, composed
from .formats import Int4Groups, Int8Groups, QuantizedWeight


class QuantizedCell(nn.Cell):
    """Holds a weight [out, in] as int8 groups (`weight_values`, `weight_scales`) or 4-bit groups (`weight_packed`,
    `weight_scales`, `weight_offsets`)."""

    def hold(self, weight: QuantizedWeight) -> None:
        self.out_features, self.in_features = weight.shape
        if isinstance(weight, Int8Groups):
            self.bits, self.group = 8, weight.group
            self.weight_values = _frozen(weight.values)
        else:
            self.bits, self.group = 4, 32
            self.weight_packed = _frozen(weight.packed)
            self.weight_offsets = _frozen(weight.offsets)
        self.weight_scales = _frozen(weight.scales)

    def share(self, other: "QuantizedCell") -> None:
        """Hold the same parameters as `other` (a tied LM head and embedding table)."""
        self.out_features, self.in_features, self.bits, self.group = other.out_features, other.in_features, other.bits, other.group
        for name in other.array_names():
            setattr(self, name, getattr(other, name))

    def array_names(self) -> tuple:
        """The held arrays' attribute names: the values (int8 or packed 4-bit) first, then scales (and offsets)."""
        return ("weight_values", "weight_scales") if self.bits == 8 else ("weight_packed", "weight_scales", "weight_offsets")

    def quantized_weight(self) -> QuantizedWeight:
        if self.bits == 8:
            return Int8Groups(self.weight_values.asnumpy(), self.weight_scales.asnumpy(), self.group)
        return Int4Groups(self.weight_packed.asnumpy(), self.weight_scales.asnumpy(), self.weight_offsets.asnumpy())


class QuantizedLinear(QuantizedCell):
    """y = x @ w^T (+ bias); the matrix product dequantizes inside the kernel (backend.quantized_linear)."""

    def __init__(self, weight: Optional[QuantizedWeight], bias: Optional[Parameter] = None, dtype=ms.float32,
                 tied_to: Optional[QuantizedCell] = None):  # fmt: skip
        super().__init__()
        self.tied = tied_to is not None
        self.hold(weight) if tied_to is None else self.share(tied_to)
        self.bias = bias
        self.kernel = "quantized"  # what the fused float paths (qkv, MLP, layer kernels) check for: not theirs
        self.matmul = backend.quantized_kernel(dtype)
        if self.matmul == "ascend":
            self._hold_device_operands(dtype)

    def _hold_device_operands(self, dtype) -> None:
        """Ascend's kernel reads the weight in its own layout (backend.weight_quant_operands), which replaces ours;
        a tied head keeps its own copy, since the embedding it shares gathers rows in ours."""
        weight, scale, offset = backend.weight_quant_operands(self.quantized_weight(), dtype)
        self.device_weight = Parameter(ms.Tensor(weight, ms.qint4x2 if self.bits == 4 else ms.int8), requires_grad=False)
        self.device_scale = Parameter(ms.Tensor(scale, dtype), requires_grad=False)
        self.device_offset = None if offset is None else Parameter(ms.Tensor(offset, dtype), requires_grad=False)
        if not self.tied:
            for name in self.array_names():
                delattr(self, name)

    def construct(self, x):
        return backend.quantized_linear(x, self)


class QuantizedEmbedding(QuantizedCell):
    """Rows of a quantized table, gathered then dequantized (a step looks up only its new tokens' rows)."""

    def __init__(self, weight: QuantizedWeight, dtype=ms.float32):
        super().__init__()
        self.hold(weight)
        self.dtype = dtype

    def construct(self, ids):
        return composed.dequantize(self, ids).astype(self.dtype)


class QuantizedLayerWeights(nn.Cell):
    """A decoder layer whose projections are all quantized, with every weight moved into one byte buffer: the
    layer kernel (QUANT_WEIGHTS_LAYER) then takes one weight input, as layers.PackedWeights does for float layers.
    Each weight's entry in `layout` is (kind, data, scales, offsets, rows, cols, group_shift): kind -1 for a weight
    the layer does not have, 0 float, 8 or 4 for the quantized formats; positions in bytes. The layer's parameters
    are re-pointed at their slices (set_data over views), so nothing is held twice; not a child cell, so the
    state_dict is unchanged (a compiled step registers `weights` itself, as for layers.PackedWeights)."""

    quantized = True
    ALIGNMENT = 64

    def __init__(self, sources: tuple, name: str):
        super().__init__()
        placed, layout, size = [], [], 0
        for source in sources:
            if source is None:
                layout += [-1, 0, 0, 0, 0, 0, 0]
                continue
            params = _arrays_of(source)
            starts = []
            for param in params:
                starts.append(size)
                placed.append((param, size))
                size += -(-param.size * param.itemsize // self.ALIGNMENT) * self.ALIGNMENT
            starts += [0] * (3 - len(starts))
            if isinstance(source, QuantizedLinear):
                kind, rows, cols, shift = source.bits, source.out_features, source.in_features, source.group.bit_length() - 1
            else:
                kind, rows, cols, shift = 0, source.shape[0], source.shape[1] if len(source.shape) == 2 else 0, 0
            layout += [kind, *starts, rows, cols, shift]
        # private: the memory behind the parameters, not a constant of any graph (compile_cache keys skip it)
        self._buffer = np.empty(size + self.ALIGNMENT, np.uint8)
        base = -self._buffer.ctypes.data % self.ALIGNMENT
        for param, start in placed:
            array = param.asnumpy()
            view = self._buffer[base + start : base + start + array.nbytes].view(array.dtype).reshape(array.shape)
            view[...] = array
            param.set_data(ms.from_numpy(view))
        data = ms.from_numpy(self._buffer[base : base + max(size, 1)])
        self.weights = Parameter(ms.common.initializer.initializer("zeros", data.shape, data.dtype), name=name,
                                 requires_grad=False)  # fmt: skip
        self.weights.set_data(data)
        self.layout = ms.Tensor(np.array(layout, np.int64))

    @classmethod
    def of(cls, sources: tuple, name: str) -> Optional["QuantizedLayerWeights"]:
        """The packed weights of a layer given its weights in layers.PackedWeights.ORDER (QuantizedLinear cells in
        place of quantized projections), or None unless every projection is quantized and on the fused kernels,
        with gate and up separate and of one width."""
        projections = [sources[i] for i in (1, 2, 3, 4, 12, 13, 14)]
        if not all(isinstance(p, QuantizedLinear) and p.matmul == "fused" for p in projections):
            return None
        if projections[4].bits != projections[5].bits:
            return None
        return cls(sources, name)


def _arrays_of(source) -> tuple:
    """The parameters a packed-layer weight is made of: a QuantizedLinear's arrays, or the float weight itself."""
    if not isinstance(source, QuantizedLinear):
        return (source,)
    return tuple(getattr(source, name) for name in source.array_names())


def _frozen(array) -> Parameter:
    tensor = ms.from_numpy(np.ascontiguousarray(array))
    param = Parameter(ms.common.initializer.initializer("zeros", tensor.shape, tensor.dtype), requires_grad=False)
    param.set_data(tensor)  # shares the array: Parameter(tensor) would copy it
    return param
