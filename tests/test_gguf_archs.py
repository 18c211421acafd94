"""GGUF architectures beyond Llama. Tiny random transformers models are written as F32 GGUF files the way llama.cpp's
convert_hf_to_gguf.py writes them (its metadata keys, its tensor changes, a tiny tokenizer of the same kind); the
reader must give back the original config and tensors exactly, and agree with transformers' own GGUF loader.
The real Gemma 3 270M GGUF (Q4_K_M) must generate the same tokens here as in transformers + PyTorch."""

import os
import random

import gguf
import numpy as np
import pytest
import torch
import transformers
from helpers import TINY, random_ids, torch_logits

from mindone.transformers import AutoModelForCausalLM, AutoTokenizer
from mindone.transformers.integrations.gguf import open_gguf

SMALL = {**TINY, "max_position_embeddings": 64}
GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4)
# GGUF architecture -> (model_type, config overrides, tokenizer kind)
CASES = {
    "llama": ("llama", dict(), "gpt2"),
    "qwen2": ("qwen2", dict(), "qwen2"),
    "qwen3": ("qwen3", dict(head_dim=16), "qwen2"),
    "gemma": ("gemma", dict(head_dim=16), "spm"),
    "gemma2": ("gemma2", dict(GEMMA, attn_logit_softcapping=2.0, final_logit_softcapping=3.0), "spm"),
    # six layers so that the default pattern (five sliding, one global) is exercised; linear rope as Gemma 3 4B+
    "gemma3": ("gemma3_text", dict(GEMMA, num_hidden_layers=6, rope_scaling={"rope_type": "linear", "factor": 8.0},
                                   final_logit_softcapping=5.0), "spm"),  # fmt: skip
}
# config fields transformers 4.57's GGUF loader does not read from the metadata (it leaves the class default):
# Qwen3's head_dim (attention.key_length), Gemma's query_pre_attn_scalar, rope scaling
TRANSFORMERS_MISSES = {
    "qwen3": {"head_dim"},
    "gemma2": {"query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"},
    "gemma3": {"query_pre_attn_scalar", "rope_scaling", "final_logit_softcapping"},
}
# fields a GGUF does not carry at all
NOT_IN_GGUF = {"_name_or_path", "architectures", "dtype", "torch_dtype", "transformers_version", "initializer_range",
               "use_cache"}  # fmt: skip

BYTE_LEVEL = "".join(transformers.models.gpt2.tokenization_gpt2.bytes_to_unicode().values())
GPT2_MERGES = ["Ġ t", "h e", "Ġt he", "Ġ w", "o r", "l d", "Ġw or", "Ġwor ld", "H e", "l l", "He ll", "Hell o", "1 2"]
SPM_PIECES = ["▁", *"abcdefghijklmnopqrstuvwxyzHMW,!?", "▁t", "he", "▁the", "▁M", "oo", "oon", "▁Moon", "▁w", "or",
              "ld", "▁wor", "▁world", "ll", "He", "Hell", "Hello"]  # fmt: skip


def gpt2_vocab(pre: str) -> dict:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = list(BYTE_LEVEL) + [m.replace(" ", "") for m in GPT2_MERGES] + specials
    return dict(model="gpt2", pre=pre, tokens=tokens, types=[1] * (len(tokens) - 3) + [3] * 3, merges=GPT2_MERGES,
                ids=dict(bos=len(tokens) - 3, eos=len(tokens) - 1, pad=len(tokens) - 3), add_bos=False)  # fmt: skip


def spm_vocab() -> dict:
    """Gemma's layout: pad, eos, bos, unk, turn markers, user-defined pieces, byte pieces, then scored pieces."""
    head = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "  "]
    tokens = head + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES
    types = [3] * 6 + [4] * 2 + [6] * 256 + [1] * len(SPM_PIECES)
    scores = [-1000.0] * len(head) + [0.0] * 256 + [-float(i) for i in range(len(SPM_PIECES))]
    return dict(model="llama", pre="default", tokens=tokens, types=types, scores=scores,
                ids=dict(pad=0, eos=1, bos=2, unk=3), add_bos=True, add_space_prefix=False)  # fmt: skip


def tiny_model(arch: str, seed: int = 0):
    model_type, overrides, tokenizer_kind = CASES[arch]
    vocab = spm_vocab() if tokenizer_kind == "spm" else gpt2_vocab("qwen2" if tokenizer_kind == "qwen2" else "smollm")
    ids = {f"{role}_token_id": i for role, i in vocab["ids"].items() if role != "unk"}
    fields = {**SMALL, **overrides, **ids, "vocab_size": len(vocab["tokens"])}
    config = transformers.AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    # norms start at 0 (Gemma) or 1: make them random, on a 1/128 grid so llama.cpp's `+ 1` is exact in float32
    rng = np.random.default_rng(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data = torch.tensor(rng.integers(-96, 96, param.shape) / 128, dtype=torch.float32)
    return model, vocab


QUANT_TYPES = (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q4_0)


def write_gguf(path, model, arch: str, vocab: dict, quantize: bool = False, quant_types=QUANT_TYPES) -> str:
    """What convert_hf_to_gguf.py writes for these architectures, with F32 tensors; with `quantize`, the linear
    and embedding weights whose rows hold whole 32-value blocks are stored as Q8_0, Q4_1 and Q4_0 in turn."""
    c, writer = model.config, gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    if arch == "llama":
        writer.add_vocab_size(c.vocab_size)
        writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    if getattr(c, "head_dim", None):  # written when the HF config has head_dim
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
    if arch in ("gemma2", "gemma3"):
        writer.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(c.attn_logit_softcapping)
    if getattr(c, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(c.final_logit_softcapping)
    if getattr(c, "rope_scaling", None):
        writer.add_rope_scaling_type(gguf.RopeScalingType(c.rope_scaling["rope_type"]))
        writer.add_rope_scaling_factor(c.rope_scaling["factor"])
    writer.add_tokenizer_model(vocab["model"])
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    if "scores" in vocab:
        writer.add_token_scores(vocab["scores"])
    if "merges" in vocab:
        writer.add_token_merges(vocab["merges"])
    for role, token_id in vocab["ids"].items():
        getattr(writer, f"add_{role}_token_id")(token_id)
    writer.add_add_bos_token(vocab["add_bos"])
    if "add_space_prefix" in vocab:
        writer.add_add_space_prefix(vocab["add_space_prefix"])
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        data = tensor.numpy().astype(np.float32)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            data = data + 1  # llama.cpp stores Gemma's (1 + w)
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = c.num_attention_heads if "q_proj" in name else c.num_key_value_heads
            data = data.reshape(heads, 2, -1, data.shape[1]).swapaxes(1, 2).reshape(data.shape)  # llama.cpp's permute
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        linear = "proj" in name or "embed_tokens" in name or name == "lm_head.weight"
        if quantize and linear and data.ndim == 2 and data.shape[1] % 32 == 0:
            qtype = quant_types[len(writer.tensors[0]) % len(quant_types)]
            payload = data.astype(np.int8) if qtype == gguf.GGMLQuantizationType.I8 else gguf.quants.quantize(data, qtype)
            writer.add_tensor(gguf_name, payload, raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.fixture(scope="module", params=sorted(CASES))
def written(request, tmp_path_factory):
    model, vocab = tiny_model(request.param)
    path = tmp_path_factory.mktemp(request.param) / f"tiny-{request.param}.gguf"
    path = write_gguf(path, model, request.param, vocab)
    return request.param, model, path


def _config_fields(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in NOT_IN_GGUF}


def test_config_and_tensors_equal_the_original(written):
    arch, model, path = written
    checkpoint = open_gguf("", path)
    assert _config_fields(checkpoint.config) == _config_fields(model.config)
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del expected["lm_head.weight"]
    ours = dict(checkpoint.tensors(list(model.state_dict())))
    assert sorted(ours) == sorted(expected)
    for name, array in expected.items():
        assert ours[name].dtype == np.float32 and np.array_equal(ours[name], array), name


@pytest.mark.parametrize("arch", sorted(set(CASES) - {"gemma"}))  # transformers reads no `gemma` (1) GGUF
def test_transformers_gguf_loader_agrees(arch, tmp_path):
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model, vocab = tiny_model(arch, seed=1)
    path = write_gguf(tmp_path / "tiny.gguf", model, arch, vocab)
    theirs = transformers.AutoConfig.for_model(**load_gguf_checkpoint(path)["config"])
    ours = open_gguf("", path).config
    assert theirs.model_type == ours.model_type == model.config.model_type
    misses = TRANSFORMERS_MISSES.get(arch, set())
    for key, value in _config_fields(ours).items():
        if key not in misses:  # transformers keeps GGUF's float32 rounding (9.99999997e-07 for 1e-6)
            other = theirs.to_dict()[key]
            assert value == other or np.float32(value) == np.float32(other), key
    skeleton = transformers.AutoModelForCausalLM.from_config(theirs)
    expected = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    mine = dict(open_gguf("", path).tensors(list(expected)))
    assert sorted(mine) == sorted(expected)
    for name, tensor in expected.items():
        assert np.array_equal(mine[name], tensor.numpy()), name


def test_model_from_gguf_matches_pytorch(written):
    arch, model, path = written
    ours = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    assert type(ours).__name__ == type(model).__name__
    ids = random_ids(2, 12, model.config.vocab_size, seed=3)
    import mindspore as ms

    logits = ours(input_ids=ms.Tensor(ids)).logits.asnumpy()
    assert np.abs(logits - torch_logits(model, ids)).max() < 1e-4


def test_model_kept_quantized_equals_its_dequantized_twin(written, tmp_path):
    """dequantize=False keeps Q8_0 / Q4_1 / Q4_0 linear and embedding weights quantized (a tied LM head shares
    the table): the same logits as the same file dequantized, to float32 rounding, and the same greedy tokens on
    the PyNative and the compiled path."""
    import mindspore as ms

    from mindone.transformers.quantization.linear import QuantizedEmbedding, QuantizedLinear

    arch, model, _ = written
    path = write_gguf(tmp_path / "tiny-q.gguf", model, arch, tiny_model(arch)[1], quantize=True)
    kept = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path, dequantize=False)
    twin = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path)
    quantized = [cell for _, cell in kept.cells_and_names() if isinstance(cell, QuantizedLinear)]
    assert len(quantized) >= model.config.num_hidden_layers * 4 and {c.bits for c in quantized} == {4, 8}
    assert isinstance(kept.get_input_embeddings(), QuantizedEmbedding) and isinstance(kept.lm_head, QuantizedLinear)
    if model.config.tie_word_embeddings:
        assert kept.lm_head.weight_scales is kept.get_input_embeddings().weight_scales
    ids = ms.Tensor(random_ids(2, 12, model.config.vocab_size, seed=4))
    assert np.abs(kept(input_ids=ids).logits.asnumpy() - twin(input_ids=ids).logits.asnumpy()).max() < 1e-4
    for cache in (None, "static"):
        tokens = [m.generate(ids, max_new_tokens=8, do_sample=False, cache_implementation=cache).asnumpy()
                  for m in (kept, twin)]  # fmt: skip
        assert np.array_equal(*tokens), cache


def test_block_types_without_a_format_are_dequantized_with_one_warning(tmp_path, caplog):
    """Q5_1 has no internal format: kept quantized, its tensors are dequantized and one warning names the type."""
    import mindspore as ms

    model, vocab = tiny_model("llama")
    path = write_gguf(tmp_path / "q51.gguf", model, "llama", vocab, quantize=True,
                      quant_types=(gguf.GGMLQuantizationType.Q5_1, gguf.GGMLQuantizationType.Q8_0))  # fmt: skip
    with caplog.at_level("WARNING"):
        kept = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path, dequantize=False)
    warnings = [r.getMessage() for r in caplog.records if "were dequantized to float" in r.getMessage()]
    assert len(warnings) == 1 and "Q5_1 (" in warnings[0] and "Q8_0" not in warnings[0]
    twin = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path)
    ids = ms.Tensor(random_ids(1, 8, model.config.vocab_size))
    assert np.abs(kept(input_ids=ids).logits.asnumpy() - twin(input_ids=ids).logits.asnumpy()).max() < 1e-4


def test_unreadable_tensors_are_one_line_errors(tmp_path):
    """A tensor type gguf cannot dequantize, and a file cut short inside the quantized tensors."""
    model, vocab = tiny_model("llama")
    path = write_gguf(tmp_path / "i8.gguf", model, "llama", vocab, quantize=True, quant_types=(gguf.GGMLQuantizationType.I8,))
    for dequantize in (True, False):
        with pytest.raises(OSError, match=r"has type I8, which cannot be read") as error:
            AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path, dequantize=dequantize)
        assert "\n" not in str(error.value)
    whole = write_gguf(tmp_path / "whole.gguf", model, "llama", vocab, quantize=True)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(open(whole, "rb").read()[:-2000])
    with pytest.raises(OSError, match="is not a readable GGUF file") as error:
        AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=str(cut), dequantize=False)
    assert "\n" not in str(error.value)


def test_tokenizer(written):
    arch, model, path = written
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=path)
    text = "Hello the world!"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    pieces = tokenizer.convert_ids_to_tokens(ids)
    if CASES[arch][2] == "spm":  # Gemma: <bos> added, SentencePiece pieces (no dummy prefix), whole user-defined pieces
        assert pieces == ["<bos>", "Hello", "▁the", "▁world", "!"]
        spaced = tokenizer("a  b\n", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(spaced) == ["a", "▁▁", "b", "\n"]
        turn = tokenizer("<start_of_turn>user", add_special_tokens=False)["input_ids"]
        assert turn[0] == 4 and tokenizer.decode(turn, skip_special_tokens=True) == "user"
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 1, 0)
        assert tokenizer.unk_token == "<unk>"
    else:  # byte-level BPE from the stored merges; Qwen's pre-tokenizer for `qwen2`, no <bos>
        assert pieces == ["Hello", "Ġthe", "Ġworld", "!"]
        assert tokenizer.tokenize("12") == (["1", "2"] if CASES[arch][2] == "qwen2" else ["12"])  # Qwen splits digits
        assert tokenizer("<|im_start|>")["input_ids"] == [tokenizer.bos_token_id + 1]


# ---------------------------------------------------------------- the real Gemma 3 270M GGUF (Q4_K_M, base model)
GEMMA3_PROMPTS = [  # Gemma's turn format (the base GGUF has no chat template), and plain text
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "The Moon is the only natural satellite of",
]


@pytest.fixture(scope="module")
def gemma3(gemma3_gguf):
    directory, name = os.path.split(gemma3_gguf)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype="float32")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, torch_dtype=torch.float32, attn_implementation="eager"
    ).eval()
    prompts = [tokenizer([p], return_tensors="np")["input_ids"].astype(np.int64) for p in GEMMA3_PROMPTS]
    return tokenizer, model, reference, prompts


@pytest.mark.slow
def test_gemma3_270m_config_and_prompt_tokens(gemma3):
    tokenizer, model, _, prompts = gemma3
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("gemma3_text", 18, 640)
    assert config.head_dim == 256 and config.vocab_size == 262144 and config.tie_word_embeddings
    assert (config.num_attention_heads, config.num_key_value_heads, config.query_pre_attn_scalar) == (4, 1, 256)
    assert (config.sliding_window, config.rope_theta, config.rope_local_base_freq) == (512, 1e6, 1e4)
    assert config.layer_types.count("full_attention") == 3 and config.layer_types[5] == "full_attention"
    expected = ["<bos>", "The", "▁Moon", "▁is", "▁the", "▁only", "▁natural", "▁satellite", "▁of"]
    assert tokenizer.convert_ids_to_tokens(prompts[1][0]) == expected
    assert prompts[0][0, :4].tolist() == [2, 105, 2364, 107]  # <bos> <start_of_turn> user \n


@pytest.mark.slow
def test_gemma3_270m_greedy_30_tokens_equal_pytorch(gemma3):
    import mindspore as ms

    tokenizer, model, reference, prompts = gemma3
    for ids in prompts:
        with torch.no_grad():
            expected = reference.generate(torch.tensor(ids), max_new_tokens=30, do_sample=False).numpy().tolist()
        ours = model.generate(ms.Tensor(ids), max_new_tokens=30, do_sample=False).asnumpy().tolist()
        print("Gemma 3 270M:", repr(tokenizer.decode(ours[0][ids.shape[1] :])))
        assert ours == expected and len(ours[0]) == ids.shape[1] + 30


@pytest.mark.slow
def test_gemma3_270m_prompt_logits_error_is_fp32_noise(gemma3):
    """Gemma 3's residual stream reaches ~1e5 (fp32 spacing there: 0.008) and its logits ~100, so fp32 max-abs against
    PyTorch is ~1.7e-4, above the 1e-4 of small models. Both are compared with a float64 PyTorch run of the same
    weights: our error must be of the order of PyTorch's own fp32 error (measured: ours 1.2e-4 / 2.3e-5 on the two
    prompts, PyTorch's 1.7e-4 / 2.3e-5)."""
    import copy

    import mindspore as ms

    _, model, reference, prompts = gemma3
    exact = copy.deepcopy(reference).double()
    for ids in prompts:
        with torch.no_grad():
            truth = exact(torch.tensor(ids)).logits.numpy()
            theirs = reference(torch.tensor(ids)).logits.numpy()
        ours = model(input_ids=ms.Tensor(ids)).logits.asnumpy()
        pairs = ((ours, theirs), (ours, truth), (theirs, truth))
        difference, our_error, torch_error = (np.abs(a - b).max() for a, b in pairs)
        print(f"Gemma 3 270M prompt logits ({ids.shape[1]} tokens): max-abs vs PyTorch fp32 {difference:.3g}, "
              f"vs float64: ours {our_error:.3g}, PyTorch fp32 {torch_error:.3g}")  # fmt: skip
        assert our_error <= 2 * torch_error + 1e-5 and difference <= 5e-4


def sentencepiece_from_gguf(meta: dict):
    """SentencePiece itself, given the pieces, scores and types a GGUF keeps (llama.cpp's type numbers are
    SentencePiece's), with Gemma's and Llama's settings: BPE, byte fallback, digits split, no normalization."""
    import sentencepiece
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    proto.trainer_spec.model_type, proto.trainer_spec.byte_fallback, proto.trainer_spec.split_digits = 2, True, True
    proto.trainer_spec.unk_id = meta["tokenizer.ggml.unknown_token_id"]
    proto.normalizer_spec.name, proto.normalizer_spec.remove_extra_whitespaces = "identity", False
    proto.normalizer_spec.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    columns = (meta[f"tokenizer.ggml.{key}"] for key in ("tokens", "scores", "token_type"))
    for i, (token, score, kind) in enumerate(zip(*columns)):
        piece = proto.pieces.add()
        piece.piece, piece.score = (token.replace(" ", "▁") if kind == 4 else token), score
        piece.type = 2 if i == proto.trainer_spec.unk_id else kind  # llama.cpp marks <unk> as a control token
    return sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())


def assert_tokenizes_as_sentencepiece(checkpoint, texts):
    reference, tokenizer = sentencepiece_from_gguf(checkpoint.metadata), checkpoint.tokenizer()
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == reference.encode(text), text
        assert tokenizer.decode(ids) == reference.decode(ids) == text.replace("▁", " "), text  # "▁" decodes as " "


def random_texts(count: int) -> list:
    rng = random.Random(0)
    alphabet = [*"abcXYZ0123456789 .,;:!?'\"()<>/\\-_=+*&#@~|\t\n", *"éüßøñあ日本語中文한αβдж🤗—…", "  ", "\n\n", "▁"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def test_sentencepiece_tokenizer_with_dummy_prefix(tmp_path):
    """Llama 2 / Mistral GGUFs: SentencePiece with its dummy prefix (no add_space_prefix key: llama.cpp's default)
    and, like their vocabularies, no user-defined pieces."""
    model, vocab = tiny_model("llama")
    vocab = {key: value for key, value in spm_vocab().items() if key != "add_space_prefix"}
    keep = [i for i, kind in enumerate(vocab["types"]) if kind != 4]
    vocab.update({key: [vocab[key][i] for i in keep] for key in ("tokens", "types", "scores")})
    model.resize_token_embeddings(len(vocab["tokens"]))
    checkpoint = open_gguf("", write_gguf(tmp_path / "spm.gguf", model, "llama", vocab))
    tokenizer = checkpoint.tokenizer()
    assert tokenizer.tokenize("Hello the world!") == ["▁", "Hello", "▁the", "▁world", "!"]
    assert_tokenizes_as_sentencepiece(checkpoint, ["Hello the world!", " the  Moon ", "x\n the"] + random_texts(300))


@pytest.mark.slow
def test_gemma3_tokenizer_equals_sentencepiece(gemma3_gguf):
    """The tokenizer rebuilt as a BPE with merges from scores tokenizes as SentencePiece does, on the docs and on
    random strings (transformers' own GGUF loader builds a Unigram model here, splitting words into near-characters)."""
    docs = os.path.join(os.path.dirname(__file__), os.pardir, "docs")
    texts = [part for name in sorted(os.listdir(docs)) for part in open(os.path.join(docs, name)).read().split("\n\n")]
    assert_tokenizes_as_sentencepiece(open_gguf("", gemma3_gguf), texts + random_texts(2000))


def test_gemma3_270m_kept_quantized_generates_the_dequantized_tokens(gemma3, gemma3_gguf):
    """Gemma 3 270M Q4_K_M kept quantized (Q4_K, Q5_0, Q6_K and Q8_0 projections): its dequantized form's tokens."""
    import mindspore as ms

    _, twin, _, prompts = gemma3
    directory, name = os.path.split(gemma3_gguf)
    kept = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype="float32", dequantize=False)
    for ids in prompts:
        tokens = [m.generate(ms.Tensor(ids), max_new_tokens=20, do_sample=False).asnumpy() for m in (kept, twin)]
        assert np.array_equal(*tokens)
