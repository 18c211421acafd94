"""QuantizedLinear: a drop-in replacement for layers.Linear that keeps only a quantized weight (formats.py)."""

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn

from .. import backend
from .formats import Int4Groups, Int8Groups, QuantizedWeight


class QuantizedLinear(nn.Cell):
    """y = x @ w^T (+ bias) with w held as int8 groups (`weight_values`, `weight_scales`) or 4-bit groups
    (`weight_packed`, `weight_scales`, `weight_offsets`); the matrix product dequantizes inside the kernel."""

    def __init__(self, weight: QuantizedWeight, bias: Optional[Parameter] = None, dtype=ms.float32):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if isinstance(weight, Int8Groups):
            self.bits, self.group = 8, weight.group
            self.weight_values = _frozen(weight.values)
        else:
            self.bits, self.group = 4, 32
            self.weight_packed = _frozen(weight.packed)
            self.weight_offsets = _frozen(weight.offsets)
        self.weight_scales = _frozen(weight.scales)
        self.bias = bias
        self.kernel = "quantized"  # what the fused float paths (qkv, MLP, layer kernels) check for: not theirs
        self.matmul = backend.quantized_kernel(dtype)

    def construct(self, x):
        return backend.quantized_linear(x, self)

    def quantized_weight(self) -> QuantizedWeight:
        if self.bits == 8:
            return Int8Groups(self.weight_values.asnumpy(), self.weight_scales.asnumpy(), self.group)
        return Int4Groups(self.weight_packed.asnumpy(), self.weight_scales.asnumpy(), self.weight_offsets.asnumpy())


def _frozen(array) -> Parameter:
    tensor = ms.from_numpy(np.ascontiguousarray(array))
    param = Parameter(ms.common.initializer.initializer("zeros", tensor.shape, tensor.dtype), requires_grad=False)
    param.set_data(tensor)  # shares the array: Parameter(tensor) would copy it
    return param
