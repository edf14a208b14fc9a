"""Ground truth that arrives after the answer: ``POST /v2/models/{name}/feedback``.

A device often learns the true label of an input later (a person corrects it, the
outcome happens). Every answer of the local endpoint carries a request id (OIP's
``id``: the client's own when it sent a usable one, else a fresh one), and the
``AnswerBook`` remembers the most recent answers by id: the predicted class of each
row and the inputs. An application then posts ``{"id": "<request id>", "label": 3}``
(or ``"labels": [3, 1, ...]``, one per row); the book joins it to the answer it gave
and hands the labelled answer on (``on_label``: the drift monitor counts accuracy per
window and keeps labelled rows for retraining).

Memory is bounded: at most ``max_answers`` answers and ``max_bytes`` of their inputs,
the oldest forgotten first (an answer whose inputs alone exceed a quarter of the
bound keeps its prediction only). Feedback for a forgotten or unknown id is refused
with 404 and says so; a second label for the same answer with 409.

Whatever the body, the route answers with a status and ``{"error": reason}``: not
JSON, too deep, a missing or non-string id, a label that is not an integer, or a
label count that is not the answer's row count are 400, never an exception.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np

from edgefleet.agent.inference.protocol import RequestError, decode_json_body
from edgefleet.agent.inference.runtime import ActiveModel
from edgefleet.tensors import shown, top1_classes

logger = logging.getLogger(__name__)

DEFAULT_MAX_ANSWERS = 4096
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
MAX_REQUEST_ID = 128
MAX_LABEL = 2**31


def request_id_of(request: dict[str, Any]) -> str:
    """The id an answer carries: the client's, when a string of 1 to ``MAX_REQUEST_ID``
    characters, else a fresh one (so every answer can be labelled later)."""
    given = request.get("id")
    if isinstance(given, str) and 0 < len(given) <= MAX_REQUEST_ID:
        return given
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Answer:
    """What the endpoint answered to one request, kept until feedback or eviction."""

    model: str
    model_version: str
    bundle_id: str
    predicted: np.ndarray
    feeds: dict[str, np.ndarray]
    nbytes: int
    labelled: bool = False


@dataclass(frozen=True)
class LabelledAnswer:
    """An answer joined to its true labels, one per row."""

    request_id: str
    model: str
    model_version: str
    bundle_id: str
    predicted: np.ndarray
    labels: np.ndarray
    feeds: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def correct(self) -> int:
        return int(np.sum(self.predicted == self.labels))


class AnswerBook:
    """Recent answers by request id, joined to labels when they come."""

    def __init__(
        self,
        *,
        max_answers: int = DEFAULT_MAX_ANSWERS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_label: Callable[[LabelledAnswer], None] | None = None,
    ) -> None:
        self.max_answers = max_answers
        self.max_bytes = max_bytes
        self.on_label = on_label
        self._answers: OrderedDict[tuple[str, str], Answer] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.forgotten = 0
        self.joined = 0

    def __len__(self) -> int:
        return len(self._answers)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def record(
        self,
        model: ActiveModel,
        request_id: str,
        feeds: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        """Remember one answer (on the request path: cheap, never raises for odd outputs)."""
        try:
            predicted = top1_classes(outputs)
        except ValueError:
            return  # no class to compare a label with: nothing to remember
        size = sum(int(a.nbytes) for a in feeds.values())
        kept = feeds if size * 4 <= self.max_bytes else {}
        nbytes = (size if kept else 0) + int(predicted.nbytes)
        answer = Answer(model.name, model.version, model.bundle_id, predicted, kept, nbytes)
        key = (model.name, request_id)
        with self._lock:
            previous = self._answers.pop(key, None)
            if previous is not None:
                self._bytes -= previous.nbytes
            self._answers[key] = answer
            self._bytes += nbytes
            while len(self._answers) > self.max_answers or self._bytes > self.max_bytes:
                _, old = self._answers.popitem(last=False)
                self._bytes -= old.nbytes
                self.forgotten += 1

    def join(self, model_name: str, request_id: str, labels: np.ndarray) -> LabelledAnswer:
        """The answer ``request_id`` got, with ``labels``; ``RequestError`` when it cannot."""
        key = (model_name, request_id)
        with self._lock:
            answer = self._answers.get(key)
            if answer is None:
                raise RequestError(
                    HTTPStatus.NOT_FOUND,
                    f"no answer with id {shown(request_id)} for model {shown(model_name)}: "
                    f"unknown, or older than the last {self.max_answers} answers kept",
                )
            if answer.labelled:
                raise RequestError(
                    HTTPStatus.CONFLICT, f"the answer {shown(request_id)} is already labelled"
                )
            if len(labels) != len(answer.predicted):
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"{len(labels)} labels for an answer of {len(answer.predicted)} rows",
                )
            self._answers[key] = Answer(
                answer.model,
                answer.model_version,
                answer.bundle_id,
                answer.predicted,
                {},
                int(answer.predicted.nbytes),
                labelled=True,
            )
            self._bytes -= answer.nbytes - int(answer.predicted.nbytes)
            self.joined += 1
        return LabelledAnswer(
            request_id=request_id,
            model=answer.model,
            model_version=answer.model_version,
            bundle_id=answer.bundle_id,
            predicted=answer.predicted,
            labels=labels,
            feeds=answer.feeds,
        )

    def handle(self, model_name: str, body: bytes) -> tuple[HTTPStatus, dict[str, Any]]:
        """``POST /v2/models/{model_name}/feedback``: refusals raise ``RequestError``."""
        request = decode_json_body(body)
        if not isinstance(request, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "feedback must be a JSON object")
        request_id = request.get("id")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"'id' must be the answer's request id, a string of 1 to {MAX_REQUEST_ID} "
                "characters",
            )
        labels = parse_labels(request)
        labelled = self.join(model_name, request_id, labels)
        if self.on_label is not None:
            self.on_label(labelled)
        return HTTPStatus.OK, {
            "id": request_id,
            "model_name": labelled.model,
            "model_version": labelled.model_version,
            "predicted": labelled.predicted.tolist(),
            "labels": labels.tolist(),
            "correct": labelled.correct,
        }


def _is_label(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_LABEL


def parse_labels(request: dict[str, Any]) -> np.ndarray:
    """``label`` (one row) or ``labels`` (one per row): class indices, as int64."""
    if "label" in request:
        value = request["label"]
        if not _is_label(value):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"'label' must be a class index (an integer from 0), given {shown(value)}",
            )
        return np.array([value], dtype=np.int64)
    values = request.get("labels")
    if not isinstance(values, list) or not values:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "give 'label' (a class index) or 'labels' (one per row)"
        )
    for i, value in enumerate(values):
        if not _is_label(value):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"labels[{i}] must be a class index (an integer from 0), given {shown(value)}",
            )
    return np.asarray(values, dtype=np.int64)
