"""The worker-thread supervisor: a worker that dies is restarted and its death recorded."""

from __future__ import annotations

import threading

from edgefleet.supervisor import Supervisor

TIMEOUT = 10.0


class Crash(BaseException):
    """Not an ``Exception``: the kind nothing inside a worker catches."""


def test_a_worker_that_dies_is_restarted_and_its_death_recorded() -> None:
    supervisor = Supervisor(min_delay=0.01)
    runs: list[int] = []
    second_run = threading.Event()
    release = threading.Event()

    def work() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise Crash("killed in the middle of a burst")
        second_run.set()
        release.wait(TIMEOUT)

    supervisor.start("w", work)
    assert second_run.wait(TIMEOUT)
    (state,) = supervisor.workers()
    assert state.running
    assert state.restarts == 1
    assert state.last_error == "Crash: killed in the middle of a burst"
    assert state.last_death_at is not None
    assert state.troubled(within=60.0)
    assert not state.troubled(within=0.0)
    supervisor.stop()
    release.set()
    assert supervisor.join(TIMEOUT)
    assert len(runs) == 2


def test_a_worker_that_returns_unasked_is_restarted_but_not_once_stopping() -> None:
    supervisor = Supervisor(min_delay=0.01)
    runs = threading.Semaphore(0)
    stop = threading.Event()

    def work() -> None:
        runs.release()
        if not stop.is_set():
            return  # an unasked return is a death too
        stop.wait(TIMEOUT)

    supervisor.start("w", work)
    assert runs.acquire(timeout=TIMEOUT)
    assert runs.acquire(timeout=TIMEOUT)  # restarted after returning
    assert supervisor.workers()[0].last_error == "returned"
    stop.set()
    supervisor.stop()
    assert supervisor.join(TIMEOUT)
    restarts = supervisor.workers()[0].restarts
    assert not supervisor.workers()[0].running
    assert supervisor.workers()[0].restarts == restarts


def test_a_worker_that_keeps_dying_at_once_keeps_being_restarted() -> None:
    supervisor = Supervisor(min_delay=0.01, max_delay=0.08)
    deaths = threading.Semaphore(0)

    def work() -> None:
        deaths.release()
        raise RuntimeError("cannot start")

    supervisor.start("w", work)
    for _ in range(6):
        assert deaths.acquire(timeout=TIMEOUT)
    supervisor.stop()
    assert supervisor.join(TIMEOUT)
    assert supervisor.workers()[0].restarts >= 5  # the sixth run may end while stopping
