"""Values transformers accepts silently although they cannot mean anything (it then skips the option, so the user
believes it worked) are a one-line ValueError here, in generate(), generate_batch() and the batch job's rows;
values at the edges of their ranges still work."""

import pytest
from helpers import ms_tensor, random_ids, save_tiny_llama

from mindone.transformers import LlamaForCausalLM
from mindone.transformers.batch.rows import Request, RowError, prepare
from mindone.transformers.generation import GenerationConfig

MEANINGLESS = [
    (dict(do_sample=True, top_p=1.5), "top_p=1.5 is outside (0, 1]"),
    (dict(do_sample=True, typical_p=2.0), "typical_p=2.0 is outside (0, 1]"),
    (dict(do_sample=True, epsilon_cutoff=1.0), "epsilon_cutoff=1.0 is outside [0, 1)"),
    (dict(do_sample=True, eta_cutoff=-0.1), "eta_cutoff=-0.1 is outside [0, 1)"),
    (dict(temperature=-1.0), "temperature=-1.0 is outside [0, inf)"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size=-2 is outside [0, inf)"),
    (dict(min_new_tokens=-1), "min_new_tokens=-1 is outside [0, inf)"),
    (dict(max_time=0.0), "max_time=0.0 is outside (0, inf)"),
    (dict(diversity_penalty=-1.0), "diversity_penalty=-1.0 is outside [0, inf)"),
    (dict(assistant_early_exit=0), "assistant_early_exit=0 is outside [1, inf)"),
    (dict(prefill_chunk_size=0), "prefill_chunk_size=0 is outside [1, inf)"),
]


# transformers' processors refuse these themselves (same messages here); a batch row gets this library's message
REFUSED_BY_TRANSFORMERS = [
    (dict(do_sample=True, top_k=-3), "top_k=-3 is outside [0, inf)"),
    (dict(do_sample=True, min_p=1.5), "min_p=1.5 is outside [0, 1]"),
    (dict(repetition_penalty=-1.0), "repetition_penalty=-1.0 is outside (0, inf)"),
    (dict(encoder_repetition_penalty=0.0), "encoder_repetition_penalty=0.0 is outside (0, inf)"),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    save_tiny_llama(directory)
    return LlamaForCausalLM.from_pretrained(directory)


@pytest.mark.parametrize("options, message", MEANINGLESS)
def test_generate_refuses_meaningless_values(model, options, message):
    with pytest.raises(ValueError) as refused:
        model.generate(ms_tensor(random_ids(1, 4)), max_new_tokens=3, **options)
    assert message in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("options, message", MEANINGLESS[:2] + REFUSED_BY_TRANSFORMERS)
def test_generate_batch_and_batch_rows_refuse_them_too(model, options, message):
    with pytest.raises(ValueError):
        model.generate_batch([[5, 6, 7]], max_new_tokens=2, **options)
    request = Request(line=1, id="r", prompt="w5 w6", messages=None, overrides=options)
    with pytest.raises(RowError, match="invalid generation options: " + message.split(" is ")[0]):
        prepare(request, _tokenizer(), GenerationConfig(max_new_tokens=2), 128)


def test_values_at_the_edges_of_their_ranges_work(model):
    ids = ms_tensor(random_ids(1, 4))
    for options in (dict(do_sample=True, top_p=1.0, top_k=0, min_p=0.0), dict(temperature=0.0), dict(no_repeat_ngram_size=0)):
        assert model.generate(ids, max_new_tokens=3, **options).shape == (1, 7)


def _tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(99)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w2", pad_token="w0")
