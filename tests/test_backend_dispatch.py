"""Which kernels the model picks per device target. The device target is mocked (no Ascend here): these tests
check the decisions, not the Ascend kernels themselves."""

import pytest
import transformers
from helpers import TINY

from mindone.transformers import backend
from mindone.transformers.layers import Attention, RMSNorm


@pytest.fixture
def ascend(monkeypatch):
    monkeypatch.setattr(backend, "device_target", lambda: "Ascend")


def _config(**overrides):
    return transformers.LlamaConfig(**{**TINY, **overrides})


def test_cpu_uses_composed_kernels():
    assert backend.attention_kernel(None) == "eager" and backend.attention_kernel("sdpa") == "eager"
    assert not backend.uses_fused_norm() and not backend.uses_fused_rotary()
    attention = Attention(_config(), 0)
    assert attention.attention_kernel == "eager" and not attention.fused_rotary and not RMSNorm(8).fused


def test_ascend_uses_fused_kernels(ascend):
    import mindspore as ms

    from mindone.transformers.layers import parameter_defaults

    assert backend.attention_kernel(None, ms.bfloat16, 64) == "flash"
    assert backend.attention_kernel("sdpa", ms.float16, 128) == backend.attention_kernel("flash_attention_2") == "flash"
    assert backend.uses_fused_norm() and backend.uses_fused_rotary()
    with parameter_defaults(ms.float16):
        attention = Attention(_config(head_dim=16), 0)
    assert attention.attention_kernel == "flash" and attention.fused_rotary and RMSNorm(8).fused


def test_flash_kernel_limits_fall_back_to_eager(ascend):
    import mindspore as ms

    assert backend.attention_kernel(None, ms.float32, 64) == "eager"  # the kernel takes fp16/bf16 only
    assert backend.attention_kernel(None, ms.float16, 8) == "eager"  # head_dim must be a multiple of 16


def test_eager_can_be_forced_on_ascend(ascend):
    config = _config()
    config._attn_implementation = "eager"
    assert Attention(config, 0).attention_kernel == "eager"


def test_bfloat16_refused_only_on_cpu(ascend):
    import mindspore as ms

    backend.check_dtype_supported(ms.bfloat16)  # Ascend: fine


def test_bfloat16_refused_on_cpu():
    import mindspore as ms

    with pytest.raises(ValueError, match="bfloat16"):
        backend.check_dtype_supported(ms.bfloat16)
