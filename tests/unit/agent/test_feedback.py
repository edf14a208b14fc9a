"""Ground-truth feedback: labels joined to the answers they correct, in bounded memory."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.inference.feedback import (
    AnswerBook,
    LabelledAnswer,
    request_id_of,
)
from edgefleet.agent.inference.protocol import RequestError
from edgefleet.agent.inference.runtime import ActiveModel

MODEL = ActiveModel(
    name="digits",
    version="1",
    platform="onnxruntime_onnx",
    runtime=None,
    bundle_id="b-r1",  # type: ignore[arg-type]
)


def scores(classes: list[int], n_classes: int = 10) -> dict[str, np.ndarray]:
    out = np.zeros((len(classes), n_classes), np.float32)
    out[np.arange(len(classes)), classes] = 1.0
    return {"probabilities": out}


def feed(rows: int, width: int = 64) -> dict[str, np.ndarray]:
    return {"input": np.ones((rows, width), np.float32)}


def post(book: AnswerBook, body: Any) -> tuple[HTTPStatus, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        return book.handle("digits", raw)
    except RequestError as e:
        return e.status, {"error": e.reason}


def test_label_joins_the_answer_it_corrects_and_counts_correct_rows() -> None:
    seen: list[LabelledAnswer] = []
    book = AnswerBook(on_label=seen.append)
    book.record(MODEL, "req-1", feed(3), scores([1, 2, 3]))
    status, body = post(book, {"id": "req-1", "labels": [1, 2, 9]})
    assert status == HTTPStatus.OK
    assert body["predicted"] == [1, 2, 3] and body["correct"] == 2
    (labelled,) = seen
    assert labelled.bundle_id == "b-r1" and labelled.correct == 2
    assert labelled.feeds["input"].shape == (3, 64)  # the rows, for retraining


def test_feedback_refuses_unknown_repeated_and_mismatched_labels_with_reasons() -> None:
    book = AnswerBook()
    book.record(MODEL, "req-1", feed(2), scores([1, 2]))
    assert post(book, {"id": "nope", "label": 1})[0] == HTTPStatus.NOT_FOUND
    status, body = post(book, {"id": "req-1", "label": 1})
    assert status == HTTPStatus.BAD_REQUEST and "1 labels for an answer of 2 rows" in body["error"]
    assert post(book, {"id": "req-1", "labels": [1, 2]})[0] == HTTPStatus.OK
    status, body = post(book, {"id": "req-1", "labels": [1, 2]})
    assert status == HTTPStatus.CONFLICT and "already labelled" in body["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[" * 10_000 + b"]" * 10_000,
        [1, 2],
        {"label": 1},
        {"id": 5, "label": 1},
        {"id": "x" * 500, "label": 1},
        {"id": "req-1"},
        {"id": "req-1", "label": "cat"},
        {"id": "req-1", "label": True},
        {"id": "req-1", "label": -1},
        {"id": "req-1", "label": 10**40},
        {"id": "req-1", "labels": []},
        {"id": "req-1", "labels": [1, None]},
        {"id": "req-1", "labels": {"a": 1}},
    ],
)
def test_feedback_with_a_bad_body_is_refused_with_400_and_a_reason(body: Any) -> None:
    book = AnswerBook()
    book.record(MODEL, "req-1", feed(1), scores([1]))
    status, answer = post(book, body)
    assert status == HTTPStatus.BAD_REQUEST
    assert answer["error"]


def test_answer_book_forgets_the_oldest_past_its_count_and_byte_bounds() -> None:
    book = AnswerBook(max_answers=3, max_bytes=1 << 20)
    for i in range(5):
        book.record(MODEL, f"r{i}", feed(1), scores([1]))
    assert len(book) == 3 and book.forgotten == 2
    assert post(book, {"id": "r0", "label": 1})[0] == HTTPStatus.NOT_FOUND
    assert post(book, {"id": "r4", "label": 1})[0] == HTTPStatus.OK

    small = AnswerBook(max_answers=1000, max_bytes=4 * 64 * 4 * 10)  # about ten 1-row answers
    for i in range(100):
        small.record(MODEL, f"r{i}", feed(1), scores([1]))
    assert small.nbytes <= small.max_bytes
    assert len(small) < 100


def test_an_answer_too_big_to_keep_keeps_its_prediction_for_accuracy() -> None:
    book = AnswerBook(max_bytes=4096)
    book.record(MODEL, "big", feed(100), scores([1] * 100))  # 25.6 kB of inputs
    status, body = post(book, {"id": "big", "labels": [1] * 100})
    assert status == HTTPStatus.OK and body["correct"] == 100


def test_every_answer_gets_a_request_id_the_clients_own_when_usable() -> None:
    assert request_id_of({"id": "mine"}) == "mine"
    generated = {request_id_of({}), request_id_of({"id": 7}), request_id_of({"id": ""})}
    assert len(generated) == 3 and all(len(i) == 32 for i in generated)
