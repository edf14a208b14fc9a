"""One build's candidates and their measurement, in a child process of their own.

Quantizing, compiling and running candidates costs far more memory than the control
plane itself needs (calibration keeps every activation of every sample; converters
load whole frameworks), and Python does not hand freed memory back to the system.
:func:`build_in_child` therefore runs :func:`edgefleet.converters.pipeline.build_for_profile`
in a fresh interpreter (multiprocessing's ``spawn`` context, so nothing of the control
plane is inherited: no sockets, no database connections, no signing keys) and
returns its outcome; when the child exits, all its memory goes with it. Its
arguments reach it through a scratch directory (a pickle, large arrays as ``.npy``
files), streamed to disk rather than copied into one buffer in the control plane.

The child talks back over one pipe, in order::

    ("progress", text)     what the build is doing now
    ("candidate", row)     one row of the candidates table, as it lands
    ("done", outcome, rss) the BuildOutcome and the child's peak RSS in bytes
    ("error", error, rss)  a ConversionError (GateError included), rebuilt in the parent
    ("crash", text, rss)   anything else (a bug): a ControlPlaneError, HTTP 500 with the text

A child that dies without a last word (killed, out of memory) is a ``BuildError``
naming how it ended.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import pickle
import resource
import signal
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edgefleet.control_plane.core.errors import BuildError, ControlPlaneError
from edgefleet.converters.errors import ConversionError
from edgefleet.converters.pipeline import BuildOutcome, Progress
from edgefleet.profile import FirmwareProfile

__all__ = ["BuildProcess", "CandidateRows", "build_in_child"]

logger = logging.getLogger(__name__)

CandidateRows = Callable[[dict[str, Any]], None]
"""Hears each candidate row (``CandidateResult.as_row()``) as the child measures it."""

_CONTEXT = multiprocessing.get_context("spawn")
_JOIN_S = 30.0
_TERMINATE_GRACE_S = 5.0  # SIGTERM ends a healthy child at once; past this it is stuck
_ARRAY_FILE_BYTES = 1 << 20  # arrays from 1 MiB on go to the child as .npy files


def _max_rss_bytes() -> int:
    """This process's peak resident set. ``VmHWM`` where there is ``/proc``: ``ru_maxrss``
    would carry the control plane's own peak over the child's exec."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _portable_error(error: ConversionError) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """What rebuilds ``error`` in the parent: its class, args and attributes.

    Pickling an exception calls its class with ``args`` alone, which breaks classes
    with keyword-only fields (``GateError(reason, candidates=...)``); this does not.
    """
    cls = type(error)
    return cls.__module__, cls.__qualname__, error.args, dict(vars(error))


def _rebuilt_error(
    module: str, qualname: str, args: tuple[Any, ...], state: dict[str, Any]
) -> Exception:
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, ConversionError)):
        return ControlPlaneError(f"build worker sent an unknown error {module}.{qualname}")
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class _ArraysToFiles(pickle.Pickler):
    """Pickles the build's arguments to a file, each large array to an ``.npy`` beside it.

    Streaming: neither the pickle nor an array is ever copied whole into memory, which
    is what handing a sample set of some hundred MB to ``Process(args=...)`` would do
    (it pickles into one buffer first).
    """

    def __init__(self, file: BinaryIO, directory: Path) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._directory = directory
        self._count = 0

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and obj.nbytes >= _ARRAY_FILE_BYTES and obj.dtype != object:
            self._count += 1
            path = self._directory / f"array-{self._count}.npy"
            np.save(path, obj, allow_pickle=False)
            return np.load, (str(path),)
        return NotImplemented


def _write_arguments(directory: Path, arguments: tuple[Any, ...]) -> Path:
    path = directory / "arguments.pickle"
    with path.open("wb") as file:
        _ArraysToFiles(file, directory).dump(arguments)
    return path


def _child(connection: Connection, arguments: str) -> None:
    """The child's whole life: read its arguments, build, report, exit."""
    from edgefleet.converters.pipeline import build_for_profile

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the control plane decides when to stop it
    with open(arguments, "rb") as file:
        model_bytes, profile, options = pickle.load(file)  # written by our parent just now
    try:
        outcome = build_for_profile(
            model_bytes,
            profile,
            progress=lambda text: connection.send(("progress", text)),
            on_candidate=lambda row: connection.send(("candidate", row.as_row())),
            **options,
        )
    except ConversionError as e:
        connection.send(("error", _portable_error(e), _max_rss_bytes()))
    except Exception as e:  # the top of the child: whatever broke, the parent hears of it
        connection.send(("crash", f"{type(e).__name__}: {e}", _max_rss_bytes()))
    else:
        connection.send(("done", outcome, _max_rss_bytes()))
    finally:
        connection.close()


class BuildProcess:
    """Runs builds in child processes and can stop every one still running.

    The control plane holds one; :meth:`build` is what ``build_bundle`` calls in
    place of ``build_for_profile``, and :meth:`stop_all` ends the children when the
    control plane stops (their jobs are then marked interrupted).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[multiprocessing.process.BaseProcess] = set()
        self._stopping = False

    def stop_all(self) -> None:
        """End every running child: SIGTERM, then SIGKILL for one that outlives the grace.

        A child that is stopped (SIGSTOP, a debugger) or stuck in native code never
        acts on SIGTERM; without the kill its build thread, and so shutdown, would wait
        for ever.
        """
        with self._lock:
            self._stopping = True
            running = list(self._running)
        for process in running:
            if process.is_alive():
                process.terminate()
        for process in running:
            process.join(_TERMINATE_GRACE_S)
            if process.is_alive():
                process.kill()

    def build(
        self,
        model_bytes: bytes,
        profile: FirmwareProfile,
        *,
        progress: Progress | None = None,
        on_candidate: CandidateRows | None = None,
        on_rss: Callable[[int], None] | None = None,
        **options: Any,
    ) -> BuildOutcome:
        """``build_for_profile(model_bytes, profile, **options)``, run in a child process.

        Raises:
            ConversionError: what the build raised in the child (``GateError`` included).
            BuildError: the child died before it answered (killed, out of memory), or the
                control plane is stopping.
        """
        with tempfile.TemporaryDirectory(prefix="edgefleet-build-") as scratch:
            arguments = _write_arguments(Path(scratch), (model_bytes, profile, options))
            receiver, sender = _CONTEXT.Pipe(duplex=False)
            process = _CONTEXT.Process(
                target=_child,
                args=(sender, str(arguments)),
                name=f"edgefleet-build-{profile.name}",
                daemon=True,
            )
            with self._lock:
                if self._stopping:
                    raise BuildError("interrupted: the control plane is stopping")
                process.start()
                self._running.add(process)
            sender.close()  # the child holds the only writing end now
            logger.info("build worker started pid=%s profile=%s", process.pid, profile.name)
            try:
                return self._follow(process, receiver, progress, on_candidate, on_rss)
            finally:
                receiver.close()
                process.join(_JOIN_S)
                if process.is_alive():
                    process.kill()
                    process.join()
                with self._lock:
                    self._running.discard(process)

    def _follow(
        self,
        process: multiprocessing.process.BaseProcess,
        receiver: Connection,
        progress: Progress | None,
        on_candidate: CandidateRows | None,
        on_rss: Callable[[int], None] | None,
    ) -> BuildOutcome:
        while True:
            try:
                message = receiver.recv()
            except EOFError:
                break  # the child closed its end: it exited
            kind = message[0]
            if kind == "progress" and progress is not None:
                progress(message[1])
            elif kind == "candidate" and on_candidate is not None:
                on_candidate(message[1])
            elif kind in ("done", "error", "crash"):
                if on_rss is not None:
                    on_rss(int(message[2]))
                if kind == "done":
                    outcome: BuildOutcome = message[1]
                    return outcome
                if kind == "crash":
                    raise ControlPlaneError(f"internal error in the build: {message[1]}")
                raise _rebuilt_error(*message[1])
        process.join(_JOIN_S)
        raise BuildError(_death(process.exitcode, stopping=self._stopping))


def _death(exitcode: int | None, *, stopping: bool) -> str:
    if stopping:
        return "interrupted: the control plane stopped during the build"
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the build process was ended by {name}{hint} before it finished"
    return f"the build process exited with code {exitcode} before it finished"


_default = BuildProcess()


def build_in_child(model_bytes: bytes, profile: FirmwareProfile, **options: Any) -> BuildOutcome:
    """:meth:`BuildProcess.build` on a process-wide :class:`BuildProcess`."""
    return _default.build(model_bytes, profile, **options)
