"""The engine's admission rule without a model: what is refused, queued, shed and admitted.

Runs in a fresh interpreter check too: the policy module must not import torch."""

from __future__ import annotations

import math
import subprocess
import sys
from concurrent.futures import Future

import pytest

from facestream.llm.admission import (Queued, RequestQueue, check_admissible, shared_length,
                                      shares_prefix, shed_result)
from facestream.llm.requests import GenerationRequest, QueueFull, RequestError


def _queued(name: str, *, urgent: bool = False, at: float = 0.0) -> Queued:
    return Queued(GenerationRequest(name, (1, 2, 3), urgent=urgent), Future(), at)


def test_a_full_queue_sheds_its_oldest_request_that_is_not_urgent():
    queue = RequestQueue(3)
    for item in (_queued("u1", urgent=True), _queued("a"), _queued("b")):
        assert queue.push(item) is None
    shed = queue.push(_queued("c"))
    assert shed is not None and shed.request.request_id == "a"        # oldest non-urgent
    assert [q.request.request_id for q in queue] == ["u1", "b", "c"]  # FIFO otherwise
    assert len(queue) == 3


def test_a_queue_of_urgent_requests_refuses_the_arrival_and_keeps_them_all():
    queue = RequestQueue(2)
    queue.push(_queued("u1", urgent=True))
    queue.push(_queued("u2", urgent=True))
    with pytest.raises(QueueFull, match="llm_queue_size"):
        queue.push(_queued("late"))
    assert [q.request.request_id for q in queue] == ["u1", "u2"]


def test_the_oldest_requests_take_the_free_slots_in_order():
    queue = RequestQueue(8)
    for name in "abcd":
        queue.push(_queued(name))
    pairs = queue.admit([5, 2])
    assert [(slot, q.request.request_id) for slot, q in pairs] == [(5, "a"), (2, "b")]
    assert queue.admit([0, 1, 3]) and len(queue) == 0
    assert queue.admit([0]) == []


def test_a_shed_request_has_no_tokens_and_its_wait():
    result = shed_result(_queued("a", at=10.0), now=12.5)
    assert (result.request_id, result.text, result.token_ids, result.finish_reason) == \
        ("a", "", (), "shed")
    assert math.isnan(result.ttft_s) and result.latency_s == pytest.approx(2.5)


@pytest.mark.parametrize("request_, message", [
    (GenerationRequest("long", tuple(range(10)), max_new_tokens=7), "exceeds max_seq_len 16"),
    (GenerationRequest("vocab", (1, 99), max_new_tokens=4), "token id 99 is outside the vocab"),
    (GenerationRequest("stop", (1,), max_new_tokens=4, stop=(".",)), "stop strings need a tok"),
])
def test_requests_that_can_never_run_are_refused(request_, message):
    with pytest.raises(RequestError, match=message):
        check_admissible(request_, max_seq_len=16, vocab=50, hidden=8, image_token_id=None,
                         has_tokenizer=False)
    check_admissible(GenerationRequest("fits", (1, 2), max_new_tokens=14), max_seq_len=16,
                     vocab=50, hidden=8, image_token_id=None, has_tokenizer=False)


def test_only_a_prompt_that_goes_on_past_the_prefix_reuses_it():
    assert shares_prefix((1, 2, 3), (1, 2))
    assert not shares_prefix((1, 2), (1, 2))          # nothing left to prefill after it
    assert not shares_prefix((1, 3, 3), (1, 2))
    assert not shares_prefix((1, 2, 3), ())


def test_the_policy_imports_no_torch():
    code = ("import sys, facestream.llm.admission, facestream.llm.requests, "
            "facestream.llm.backends; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_a_prompt_shares_the_common_prefix_that_covers_its_image_placeholders():
    img = -200
    prompt = (1, 2, img, img, 3, 4, 5)
    assert shared_length(prompt, (1, 2, img, img, 3, 9), image_token_id=img) == 5
    assert shared_length(prompt, prompt + (8,), image_token_id=img) == 6    # last one computed
    assert shared_length(prompt, (1, 2, img, 7), image_token_id=img) == 0   # a placeholder left
    assert shared_length(prompt, (1, 2), image_token_id=img) == 0
