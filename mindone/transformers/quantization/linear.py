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
        if self.bits == 8:
            self.weight_values = other.weight_values
        else:
            self.weight_packed, self.weight_offsets = other.weight_packed, other.weight_offsets
        self.weight_scales = other.weight_scales

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
            for name in ("weight_values", "weight_packed", "weight_scales", "weight_offsets"):
                if hasattr(self, name):
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


def _frozen(array) -> Parameter:
    tensor = ms.from_numpy(np.ascontiguousarray(array))
    param = Parameter(ms.common.initializer.initializer("zeros", tensor.shape, tensor.dtype), requires_grad=False)
    param.set_data(tensor)  # shares the array: Parameter(tensor) would copy it
    return param
