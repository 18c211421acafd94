"""Which kernels the model picks per device target and kernel availability. The Ascend target is mocked (no NPU
here): these tests check the decisions, not the Ascend kernels themselves."""

import mindspore as ms
import pytest
import transformers
from helpers import TINY

from mindone.transformers import backend, kernels
from mindone.transformers.layers import Attention, GatedMLP, Linear, RMSNorm, parameter_defaults


@pytest.fixture
def ascend(monkeypatch):
    monkeypatch.setattr(backend, "device_target", lambda: "Ascend")


@pytest.fixture
def no_kernels(monkeypatch):
    monkeypatch.setattr(kernels, "available", lambda: False)


def _config(**overrides):
    return transformers.LlamaConfig(**{**TINY, **overrides})


def test_cpu_uses_the_fused_kernels_when_they_built():
    assert kernels.available(), "the C++ kernels must build on these machines (g++ is installed)"
    attention = Attention(_config(), 0)
    assert attention.kernel == "fused" and not attention.fused_rotary
    assert RMSNorm(8).kernel == "fused" and RMSNorm(8, unit_offset=True).kernel == "fused"
    assert Linear(4, 4).kernel == "fused" and GatedMLP(_config()).kernel == "fused"


def test_cpu_without_kernels_uses_composed_ops(no_kernels):
    attention = Attention(_config(), 0)
    assert attention.kernel == "eager" and attention.kernel_config is None
    assert RMSNorm(8).kernel == "composed" and Linear(4, 4).kernel == "matmul"
    assert GatedMLP(_config()).kernel == "composed"


def test_fused_kernels_take_float32_and_float16_only():
    assert backend.attention_kernel(None, ms.bfloat16, 64) == "eager"
    assert backend.norm_kernel(False, ms.bfloat16) == "composed" and backend.linear_kernel(ms.bfloat16) == "matmul"
    assert backend.attention_kernel(None, ms.float16, 64) == backend.attention_kernel(None, ms.float32, 64) == "fused"


def test_mlp_with_bias_or_unknown_activation_is_composed():
    assert GatedMLP(_config(mlp_bias=True)).kernel == "composed"
    assert backend.mlp_kernel("tanh", False, ms.float32) == "composed"


def test_ascend_uses_its_fused_kernels(ascend):
    assert backend.attention_kernel(None, ms.bfloat16, 64) == "flash"
    assert backend.attention_kernel("sdpa", ms.float16, 128) == backend.attention_kernel("flash_attention_2") == "flash"
    with parameter_defaults(ms.float16):
        attention = Attention(_config(head_dim=16), 0)
        assert RMSNorm(8).kernel == "ascend" and Linear(4, 4).kernel == "matmul"
        assert GatedMLP(_config()).kernel == "swiglu"
    assert attention.kernel == "flash" and attention.fused_rotary


def test_ascend_keeps_composed_ops_where_its_kernels_do_not_fit(ascend):
    assert backend.attention_kernel(None, ms.float32, 64) == "eager"  # flash attention takes fp16/bf16 only
    assert backend.attention_kernel(None, ms.float16, 8) == "eager"  # head_dim must be a multiple of 16
    assert backend.attention_kernel(None, ms.float16, 64, softcap=50.0) == "eager"  # no soft-capping
    assert backend.norm_kernel(True, ms.float16) == "composed"  # Gemma's (1 + weight) scale
    with parameter_defaults(ms.float16):
        partial = Attention(_config(head_dim=16, partial_rotary_factor=0.5), 0)
    assert partial.kernel == "flash" and not partial.fused_rotary  # the rotary kernel rotates whole heads


def test_eager_can_be_forced_on_ascend(ascend):
    config = _config()
    config._attn_implementation = "eager"
    with parameter_defaults(ms.float16):
        assert Attention(config, 0).kernel == "eager"


def test_bfloat16_refused_only_on_cpu(ascend):
    backend.check_dtype_supported(ms.bfloat16)  # Ascend: fine


def test_bfloat16_refused_on_cpu():
    with pytest.raises(ValueError, match="bfloat16"):
        backend.check_dtype_supported(ms.bfloat16)
