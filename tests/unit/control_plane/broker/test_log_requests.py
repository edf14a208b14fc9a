"""The control plane's open log requests: chunks assembled in order, only from the
device asked, and answers for requests not open here ignored."""

from __future__ import annotations

from edgefleet.control_plane.broker.log_requests import LogRequests
from edgefleet.messages import LogChunk, LogRecord, LogRequest

DEVICE = "dev-asked0001"
OTHER = "dev-other0001"


def chunk(request: LogRequest, seq: int, *, last: bool, text: str) -> LogChunk:
    record = LogRecord(ts=1.0 + seq, level="INFO", logger="t", message=text)
    return LogChunk(
        request_id=request.request_id, seq=seq, last=last, records=[record], omitted=3,
        truncated=True,
    )  # fmt: skip


def test_chunks_arriving_out_of_order_are_answered_in_order() -> None:
    requests = LogRequests()
    request = LogRequest()
    pending = requests.open(DEVICE, request)
    assert requests.deliver(DEVICE, chunk(request, 2, last=True, text="c"))
    assert not pending.done.is_set()
    assert requests.deliver(DEVICE, chunk(request, 0, last=False, text="a"))
    assert not pending.done.is_set()
    assert requests.deliver(DEVICE, chunk(request, 1, last=False, text="b"))
    assert pending.done.is_set()
    answer = pending.answer()
    assert [r.message for r in answer.records] == ["a", "b", "c"]
    assert answer.truncated and answer.omitted == 3


def test_an_answer_from_another_device_is_dropped() -> None:
    requests = LogRequests()
    request = LogRequest()
    pending = requests.open(DEVICE, request)
    assert not requests.deliver(OTHER, chunk(request, 0, last=True, text="forged"))
    assert not pending.done.is_set()
    assert requests.deliver(DEVICE, chunk(request, 0, last=True, text="real"))
    assert [r.message for r in pending.answer().records] == ["real"]


def test_answers_to_requests_not_open_here_are_ignored() -> None:
    requests = LogRequests()
    request = LogRequest()
    assert not requests.deliver(DEVICE, chunk(request, 0, last=True, text="x"))
    requests.open(DEVICE, request)
    requests.close(request.request_id)
    assert not requests.deliver(DEVICE, chunk(request, 0, last=True, text="late"))
