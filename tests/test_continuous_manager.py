"""transformers' ContinuousBatchingManager API (init_continuous_batching): requests added while the background
thread runs give the tokens transformers + PyTorch generate for each prompt alone; streaming, cancelling, manual
eviction, failures and stopping behave as transformers documents them."""

import time

import numpy as np
import pytest
from helpers import TINY, random_ids, tiny_llama_pair, torch_generate

from mindone.transformers import GenerationConfig
from mindone.transformers.generation.continuous_batching import ContinuousBatchingManager, RequestStatus

TINY_GENERATION = {key: TINY[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
WAIT = 120  # seconds a result may take at most on a loaded machine


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_llama_manager")
    return tiny_llama_pair(directory, seed=5)


def settings(**fields) -> GenerationConfig:
    return GenerationConfig(**{**TINY_GENERATION, **fields})


def manager_of(model, slots=2, cache=64, streaming=False, manual_eviction=False, **fields) -> ContinuousBatchingManager:
    """A manager over `slots` slots of `cache` positions, decoding greedily unless `fields` say otherwise."""
    return model.init_continuous_batching(settings(do_sample=False, **fields), manual_eviction=manual_eviction,
                                          streaming=streaming, max_batch_size=slots, max_cache_length=cache)  # fmt: skip


def expected_tokens(reference, ids, max_new_tokens):
    tokens = torch_generate(reference, np.array([ids]), max_new_tokens=max_new_tokens, do_sample=False)[0][len(ids) :]
    ends = [i for i, token in enumerate(tokens) if token == TINY["eos_token_id"]]
    return tokens[: ends[0] + 1] if ends else tokens


def finished(manager, count) -> dict:
    results, deadline = {}, time.monotonic() + WAIT
    while len(results) < count and time.monotonic() < deadline:
        result = manager.get_result(timeout=1)
        if result is not None and result.status in (RequestStatus.FINISHED, RequestStatus.FAILED):
            results[result.request_id] = result
    return results


def test_requests_added_while_running_match_pytorch(pair):
    reference, model = pair
    manager = manager_of(model, max_new_tokens=8)
    manager.start()
    try:
        early = [random_ids(1, n, seed=n)[0].tolist() for n in (4, 9, 6)]
        ids = [manager.add_request(prompt) for prompt in early]
        first = finished(manager, 1)
        late = random_ids(1, 5, seed=42)[0].tolist()
        ids.append(manager.add_request(late, max_new_tokens=3))
        results = {**first, **finished(manager, 3)}
    finally:
        manager.stop(block=True, timeout=WAIT)
    assert ids == ["req_0", "req_1", "req_2", "req_3"] and set(results) == set(ids)
    for request_id, prompt, new in zip(ids, early + [late], (8, 8, 8, 3)):
        assert results[request_id].prompt_ids == prompt
        assert results[request_id].generated_tokens == expected_tokens(reference, prompt, new)
    assert not manager.is_running()


def test_streaming_sends_every_step_then_the_finished_output(pair):
    _, model = pair
    manager = manager_of(model, streaming=True, max_new_tokens=5)
    manager.start()
    try:
        request_id = manager.add_request(random_ids(1, 4, seed=3)[0].tolist())
        outputs = list(manager.request_id_iter(request_id))
    finally:
        manager.stop(block=True, timeout=WAIT)
    count = len(outputs)
    assert count >= 3 and [len(output.generated_tokens) for output in outputs] == list(range(1, count + 1))
    assert [output.status for output in outputs] == [RequestStatus.DECODING] * (count - 1) + [RequestStatus.FINISHED]
    assert all(output.generated_tokens == outputs[-1].generated_tokens[: i + 1] for i, output in enumerate(outputs))


def test_a_cancelled_request_sends_nothing_and_the_others_finish(pair):
    _, model = pair
    manager = manager_of(model, slots=1, max_new_tokens=6)
    manager.add_request(random_ids(1, 4, seed=1)[0].tolist(), request_id="kept")
    manager.add_request(random_ids(1, 4, seed=2)[0].tolist(), request_id="cancelled")
    manager.cancel_request("cancelled")
    manager.start()
    manager.stop(block=True, timeout=WAIT)
    assert [output.request_id for output in _drain(manager)] == ["kept"]


def test_manual_eviction_holds_the_slot_until_evicted(pair):
    _, model = pair
    manager = manager_of(model, manual_eviction=True, slots=1, max_new_tokens=3)
    manager.start()
    try:
        manager.add_request(random_ids(1, 4, seed=1)[0].tolist())
        assert set(finished(manager, 1)) == {"req_0"}
        manager.add_request(random_ids(1, 4, seed=2)[0].tolist())
        time.sleep(0.5)
        assert manager.engine.free_slot() is None and manager.get_result(timeout=0.5) is None  # req_0 holds it
        manager.evict_request_from_cache("req_0")
        assert set(finished(manager, 1)) == {"req_1"}
    finally:
        manager.stop(block=True, timeout=WAIT)
    unmanaged = manager_of(model)
    with pytest.raises(RuntimeError, match="Manual eviction is not enabled"):
        unmanaged.evict_request_from_cache("req_0")


def test_a_request_that_does_not_fit_fails_alone(pair):
    _, model = pair
    manager = manager_of(model, cache=16, max_new_tokens=4)
    manager.start()
    try:
        manager.add_request(random_ids(1, 14, seed=1)[0].tolist())
        manager.add_request(random_ids(1, 4, seed=2)[0].tolist())
        results = finished(manager, 2)
    finally:
        manager.stop(block=True, timeout=WAIT)
    assert results["req_0"].status == RequestStatus.FAILED and "needs 18 positions" in results["req_0"].error
    assert results["req_1"].status == RequestStatus.FINISHED and len(results["req_1"].generated_tokens) == 4


def test_stop_finishes_the_queued_requests_first(pair):
    _, model = pair
    manager = manager_of(model, max_new_tokens=4)
    manager.add_requests([random_ids(1, 3, seed=i)[0].tolist() for i in range(5)])
    manager.start()
    manager.stop(block=True, timeout=WAIT)
    outputs = [manager.get_result(timeout=0.1) for _ in range(5)]
    assert sorted(output.request_id for output in outputs) == [f"req_{i}" for i in range(5)]
    assert manager.get_result(timeout=0.1) is None


def test_options_the_engine_cannot_serve_are_refused_when_the_manager_is_made(pair):
    _, model = pair
    with pytest.raises(ValueError, match="generate_batch serves greedy decoding and sampling, not beam_search"):
        model.init_continuous_batching(settings(num_beams=2))
    assert isinstance(manager_of(model), ContinuousBatchingManager)


def test_cancelling_a_running_request_frees_its_slot(pair):
    _, model = pair
    manager = manager_of(model, slots=1, streaming=True, max_new_tokens=40, eos_token_id=98)
    manager.start()
    try:
        running = manager.add_request(random_ids(1, 4, seed=1)[0].tolist())
        waiting = manager.add_request(random_ids(1, 4, seed=2)[0].tolist(), max_new_tokens=3)
        first = next(manager.request_id_iter(running))
        manager.cancel_request(running)
        outputs = list(manager.request_id_iter(waiting))
    finally:
        manager.stop(block=True, timeout=WAIT)
    assert first.status == RequestStatus.DECODING and len(first.generated_tokens) == 1
    assert outputs[-1].status == RequestStatus.FINISHED and len(outputs[-1].generated_tokens) == 3
    leftovers = [output for output in _drain(manager) if output.request_id == running]  # sent before the cancel
    assert all(output.status == RequestStatus.DECODING for output in leftovers)


def _drain(manager) -> list:
    outputs = []
    while (output := manager.get_result(timeout=0.1)) is not None:
        outputs.append(output)
    return outputs
