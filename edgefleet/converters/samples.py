"""Sample sets fitted to a model's signature: what calibration, the gate and the smoke
test feed the model, one array per input, checked once and never cast.

A sample set holds ``n`` rows. Each input's array gives them one of two ways:

* **rows**: the array has the input's rank and its leading axis holds the rows
  (``x`` of shape ``[n, 64]`` for an input ``[batch, 64]``). Rows are fed in batches:
  of the model's fixed batch size when it has one (``ModelSignature.batch``), the last
  padded by repeating its final row, else of any size.
* **whole feeds**: the array has one axis more than the input and each item along it
  is one complete value of the input (``sr`` of shape ``[n]`` for an int64 scalar,
  ``state`` of shape ``[n, 2, 1, 128]`` for an input ``[2, batch, 128]``). A set with
  whole feeds is fed one row at a time.

Anything else is refused naming the input, the expected and the given dtype and shape.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from edgefleet.converters.errors import ConversionError
from edgefleet.tensors import NUMPY_TO_OIP, ModelSignature, TensorSpec

LABEL_KEYS = ("labels", "y")
"""Keys of an ``.npz`` that hold the holdout's labels (``y`` is the older spelling)."""
LEGACY_INPUT_KEY = "x"
"""The single input of an older holdout ``.npz`` (``x`` and ``y``)."""


class SampleError(ConversionError):
    """Samples that do not fit the model's signature; the message names the input."""


def _given(array: np.ndarray) -> str:
    return f"{NUMPY_TO_OIP.get(array.dtype, str(array.dtype))}{list(array.shape)}"


@dataclass(frozen=True)
class Samples:
    """Inputs for ``n`` rows, checked against ``signature`` (see the module docstring)."""

    signature: ModelSignature
    arrays: dict[str, np.ndarray]
    whole: frozenset[str]
    n: int

    @classmethod
    def fit(
        cls, signature: ModelSignature, arrays: Mapping[str, np.ndarray], *, what: str
    ) -> Samples:
        """Check ``arrays`` against the signature's inputs; ``SampleError`` names the
        first input that is missing, extra, or of another dtype or shape."""
        names = [s.name for s in signature.inputs]
        extra = sorted(set(arrays) - set(names))
        if extra:
            raise SampleError(f"{what}: {extra[0]!r} is not an input of the model (inputs {names})")
        missing = [n for n in names if n not in arrays]
        if missing:
            raise SampleError(f"{what}: input {missing[0]!r} has no samples (inputs {names})")
        whole: set[str] = set()
        rows: dict[str, int] = {}
        for spec in signature.inputs:
            array = np.asarray(arrays[spec.name])
            rows[spec.name] = _check(spec, array, signature, what=what)
            if array.ndim == len(spec.shape) + 1:
                whole.add(spec.name)
        if len(set(rows.values())) != 1:
            raise SampleError(f"{what}: inputs give different numbers of rows {rows}")
        n = next(iter(rows.values()))
        if n == 0:
            raise SampleError(f"{what}: no rows")
        if whole and signature.batch not in (None, 1):
            batched = sorted(set(names) - whole)
            if batched:
                raise SampleError(
                    f"{what}: input {batched[0]!r} is batched by the fixed batch dim "
                    f"{signature.batch} while {sorted(whole)} are whole feeds; give "
                    f"{batched[0]!r} as whole feeds too"
                )
        return cls(
            signature=signature,
            arrays={k: np.asarray(arrays[k]) for k in names},
            whole=frozenset(whole),
            n=n,
        )

    def head(self, rows: int) -> Samples:
        """The first ``rows`` rows."""
        return Samples(
            signature=self.signature,
            arrays={k: v[:rows] for k, v in self.arrays.items()},
            whole=self.whole,
            n=min(rows, self.n),
        )

    @property
    def batch(self) -> int | None:
        """The rows per feed the model requires: its fixed batch, 1 with whole feeds."""
        if self.whole:
            return 1
        return self.signature.batch

    def feeds(self, batch: int | None = None) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """``(feed, rows)`` pairs covering every row in order, ``rows`` of them real.

        ``batch`` is the rows per feed wanted when the model allows any (default 1);
        a fixed batch or whole feeds override it.
        """
        size = self.batch or batch or 1
        for start in range(0, self.n, size):
            feed: dict[str, np.ndarray] = {}
            real = min(size, self.n - start)
            for name, array in self.arrays.items():
                if name in self.whole:
                    feed[name] = np.asarray(array[start])
                    continue
                chunk = array[start : start + size]
                if len(chunk) < size:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), 0)])
                feed[name] = np.ascontiguousarray(chunk)
            yield feed, real

    def sha256(self) -> str:
        """A hash of every input's name, dtype, shape and bytes."""
        digest = hashlib.sha256()
        for name in sorted(self.arrays):
            array = np.ascontiguousarray(self.arrays[name])
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def float_arrays(self) -> dict[str, np.ndarray]:
        """The floating-point inputs, for drift statistics and finiteness checks."""
        return {k: v for k, v in self.arrays.items() if v.dtype.kind == "f"}


@dataclass(frozen=True)
class FeedResult:
    """A feed's outputs, how many rows the feed held and how many of them were real."""

    outputs: dict[str, np.ndarray]
    size: int
    real: int


def join_outputs(pieces: list[FeedResult]) -> dict[str, np.ndarray]:
    """One array per output, one leading entry per row, from per-feed outputs.

    An output whose leading axis is the feed's size is cut to the real rows and
    concatenated; any other output (a feed run whole) is stacked, one item per feed.
    """
    if not pieces:
        return {}
    out: dict[str, np.ndarray] = {}
    for name in pieces[0].outputs:
        values = [np.asarray(p.outputs[name]) for p in pieces]
        if all(v.ndim >= 1 and v.shape[0] == p.size for v, p in zip(values, pieces, strict=True)):
            out[name] = np.concatenate([v[: p.real] for v, p in zip(values, pieces, strict=True)])
        else:
            out[name] = np.stack(values)
    return out


def feed_size(feed: Mapping[str, np.ndarray], samples: Samples) -> int:
    """How many rows ``feed`` (one of ``samples.feeds``) holds."""
    if samples.whole:
        return 1
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def run_rows(
    run: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    samples: Samples,
    *,
    batch: int | None = None,
) -> dict[str, np.ndarray]:
    """Every row of ``samples`` through ``run``, outputs joined per row (``join_outputs``)."""
    pieces = [
        FeedResult(outputs=dict(run(feed)), size=feed_size(feed, samples), real=real)
        for feed, real in samples.feeds(batch)
    ]
    return join_outputs(pieces)


def _check(spec: TensorSpec, array: np.ndarray, signature: ModelSignature, *, what: str) -> int:
    """The rows ``array`` gives for ``spec``; ``SampleError`` when it does not fit."""
    expected = spec.describe()
    if array.dtype != spec.dtype:
        raise SampleError(
            f"{what}: input {spec.name!r} expects {expected}, given {_given(array)}: "
            f"dtype {array.dtype} is not {spec.dtype} (samples are never cast)"
        )
    rank = len(spec.shape)
    if array.ndim == rank + 1:  # whole feeds
        if not spec.accepts_shape(array.shape[1:]):
            raise SampleError(
                f"{what}: input {spec.name!r} expects {expected} per feed, "
                f"given {_given(array)} (whole feeds [n, *shape])"
            )
        return int(array.shape[0])
    if array.ndim == rank and rank >= 1:  # rows along the leading axis
        lead = spec.shape[0]
        if lead not in (-1, signature.batch):
            raise SampleError(
                f"{what}: input {spec.name!r} has fixed leading dim {lead} that is not a "
                f"batch of rows ({expected}); give whole feeds of shape "
                f"[n, {', '.join(map(str, spec.shape))}], given {_given(array)}"
            )
        if not spec.accepts_shape([lead if lead != -1 else array.shape[0], *array.shape[1:]]):
            raise SampleError(
                f"{what}: input {spec.name!r} expects {expected}, given {_given(array)}"
            )
        return int(array.shape[0])
    raise SampleError(
        f"{what}: input {spec.name!r} expects {expected} (rows) or [n, *shape] (whole feeds), "
        f"given {_given(array)}"
    )


@dataclass(frozen=True)
class LoadedSet:
    """Arrays read from an upload: one per input, and labels when the file had them."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None


def load_arrays(data: bytes, signature: ModelSignature, *, what: str) -> LoadedSet:
    """Read ``.npy`` (a model with one input) or ``.npz`` keyed by input name, with the
    labels under ``labels`` (or ``y``); an older ``.npz`` with ``x`` for the one input
    reads as before. ``SampleError`` says what is wrong."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SampleError(f"{what}: not a readable .npy or .npz file: {e}") from e
    names = [s.name for s in signature.inputs]
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise SampleError(
                f"{what}: a single .npy array cannot feed {len(names)} inputs {names}; "
                "give an .npz keyed by input name"
            )
        return LoadedSet(arrays={names[0]: loaded}, labels=None)
    try:
        with loaded as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (ValueError, OSError, EOFError) as e:
        raise SampleError(f"{what}: unreadable .npz member: {e}") from e
    labels = None
    for key in LABEL_KEYS:
        if key in arrays and key not in names:
            labels = arrays.pop(key)
            break
    if len(names) == 1 and LEGACY_INPUT_KEY in arrays and names[0] not in arrays:
        arrays[names[0]] = arrays.pop(LEGACY_INPUT_KEY)
    return LoadedSet(arrays=arrays, labels=labels)


def check_labels(labels: np.ndarray, n: int, *, what: str) -> np.ndarray:
    """Labels: one integer or float per row, finite; ``SampleError`` otherwise."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise SampleError(f"{what}: labels must be one per row ({n}), given {list(labels.shape)}")
    if labels.dtype.kind not in "iubf":
        raise SampleError(f"{what}: labels must be numbers, given {labels.dtype}")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise SampleError(f"{what}: labels hold NaN or infinite values")
    return labels
