"""Builds tiny random checkpoints with transformers + PyTorch and runs both frameworks on the same inputs."""

import glob
import os
import socket
import subprocess
import sys

import numpy as np
import torch
import transformers

import mindspore as ms

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def save_tiny_llama(directory, seed: int = 0, **overrides):
    """A random Llama written by transformers (safetensors); returns the torch model, in eval mode."""
    config = transformers.LlamaConfig(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


def tiny_llama_pair(directory, seed: int = 0, **overrides):
    """(the PyTorch model, the same checkpoint loaded here) for a random Llama saved in `directory`."""
    from mindone.transformers import LlamaForCausalLM

    reference = save_tiny_llama(directory, seed, **overrides)
    return reference, LlamaForCausalLM.from_pretrained(str(directory))


def random_ids(batch: int, length: int, vocab: int = 99, seed: int = 0, low: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, vocab, size=(batch, length)).astype(np.int64)


def left_padded(lengths, total: int, pad: int = 0, vocab: int = 99, seed: int = 0):
    """(ids, mask) for rows of the given lengths, left padded to `total`."""
    ids = random_ids(len(lengths), total, vocab, seed)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, : total - length] = pad
        mask[row, total - length :] = 1
    return ids, mask


def torch_logits(model, ids, mask=None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {"attention_mask": torch.tensor(mask)} if mask is not None else {}
        return model(torch.tensor(ids), **kwargs).logits.float().numpy()


def torch_generate(model, ids, mask=None, **kwargs) -> list:
    with torch.no_grad():
        extra = {"attention_mask": torch.tensor(mask)} if mask is not None else {}
        return model.generate(torch.tensor(ids), **extra, **kwargs).numpy().tolist()


def ms_tensor(array) -> ms.Tensor:
    return ms.Tensor(np.asarray(array), ms.int64 if np.asarray(array).dtype == np.int64 else ms.int32)


def dequantized_twin(path: str, quantized):
    """The float model of checkpoint `path` with every weight that `quantized` (the same checkpoint loaded
    quantized) holds quantized replaced by its dequantized values."""
    from mindone.transformers import AutoModelForCausalLM
    from mindone.transformers.layers import Conv1D
    from mindone.transformers.quantization.linear import QuantizedCell

    twin = AutoModelForCausalLM.from_pretrained(path)
    cells = dict(twin.cells_and_names())
    for name, cell in quantized.cells_and_names():
        if isinstance(cell, QuantizedCell):
            weight = cell.quantized_weight().dequantize()
            transposed = isinstance(cells[name], Conv1D)  # GPT-2's (in, out) weights were quantized transposed
            cells[name].weight.set_data(ms.Tensor(weight.T if transposed else weight, ms.float32))
    return twin


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_msrun(workers: int, log_dir, script: str, *args, timeout: int = 900) -> subprocess.CompletedProcess:
    """`script args` on `workers` msrun workers of this machine, with this virtualenv's python (msrun starts
    `python` from PATH); the workers' output is in log_dir/worker_N.log."""
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
    env = {**os.environ, "PYTHONPATH": REPO, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    command = [msrun, f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={free_port()}",
               f"--log_dir={log_dir}", "--join=True", script, *map(str, args)]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def worker_logs(log_dir) -> str:
    return "".join(open(path).read()[-3000:] for path in sorted(glob.glob(os.path.join(str(log_dir), "worker_*.log"))))
