"""Bundle builds as jobs: started at once, run in the background, followed by id.

``POST /builds`` records a ``BuildJob`` (``queued``) and hands it to the
:class:`BuildRunner`, which runs :func:`bundle_builder.build_bundle` on a worker thread
with the candidates built and measured in a child process
(:mod:`edgefleet.control_plane.services.build_worker`). The job row is the record a
client follows: its state (``edgefleet.states.build``), what it is doing now, each
candidate with its numbers and verdict as it lands, and at the end the bundle id or
the error with the HTTP status the synchronous ``POST /bundles`` answers with.

A job belongs to the replica that runs it (``owner``). A control plane that stops
mid-build ends the child and marks its unfinished jobs failed (interrupted); one that
crashed does so for its own jobs when it starts again (:func:`interrupt_unfinished`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import ControlPlaneError, NotFoundError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import BuildJob, ModelVersion, utcnow
from edgefleet.control_plane.services.build_worker import BuildProcess
from edgefleet.control_plane.services.bundle_builder import build_bundle, get_profile
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.converters.pipeline import Holdout
from edgefleet.states.build import UNFINISHED_BUILD_STATES, next_build_state

__all__ = ["BuildRequest", "BuildRunner", "get_build", "interrupt_unfinished", "list_builds"]

logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the control plane stopped during the build"
RESTARTED = "interrupted: the control plane restarted during the build"
INTERRUPTED_STATUS = 503  # not the request's fault: the same build may well pass again

ErrorStatus = Callable[[Exception], int]


@dataclass(frozen=True)
class BuildRequest:
    """What to build: a registered model version for one firmware profile."""

    model: str
    version: str
    profile: str
    max_accuracy_drop: float | None = None
    holdout: Holdout | None = None


def get_build(*, session: Session, build_id: int) -> BuildJob:
    job = session.get(BuildJob, build_id)
    if job is None:
        raise NotFoundError(f"build {build_id} not found")
    return job


def list_builds(*, session: Session, limit: int = 100) -> Sequence[BuildJob]:
    """The newest ``limit`` build jobs, newest first."""
    query = select(BuildJob).order_by(col(BuildJob.id).desc()).limit(limit)
    return session.exec(query).all()


def interrupt_unfinished(*, engine: Engine, owner: str, reason: str = RESTARTED) -> list[int]:
    """Mark ``owner``'s queued and running jobs failed with ``reason``; their ids."""
    with Session(engine) as session:
        jobs = session.exec(
            select(BuildJob).where(
                BuildJob.owner == owner, col(BuildJob.state).in_(UNFINISHED_BUILD_STATES)
            )
        ).all()
        for job in jobs:
            job.state = next_build_state(job.state, "interrupt")
            job.error, job.error_status, job.finished_at = reason, INTERRUPTED_STATUS, utcnow()
            session.add(job)
        session.commit()
        ids = [job.id for job in jobs if job.id is not None]
    if ids:
        logger.warning("build jobs interrupted owner=%s ids=%s", owner, ids)
    return ids


class BuildRunner:
    """Runs this replica's build jobs, ``workers`` at a time, each in a child process.

    Args:
        engine: The database the job rows live in.
        repository: Signs the bundles.
        settings: The control plane's settings.
        owner: This replica's id, recorded on every job it runs.
        error_status: The HTTP status the API gives an error (recorded with a failure).
        workers: Builds run at once; more wait ``queued``.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        repository: SignedRepository,
        settings: Settings,
        owner: str,
        error_status: ErrorStatus,
        workers: int = 1,
    ) -> None:
        self._engine = engine
        self._repository = repository
        self._settings = settings
        self.owner = owner
        self._error_status = error_status
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="build")
        self._process = BuildProcess()
        self._stopping = False

    def start(
        self, *, session: Session, request: BuildRequest, actor: str | None
    ) -> tuple[BuildJob, Future[str]]:
        """Record a job for ``request`` and queue it: the job as recorded, and its future.

        The future's result is the bundle id; it raises the build's own error
        (``BuildError``, ``NotFoundError``...), which is what a synchronous caller waits on.

        Raises:
            NotFoundError: no such profile or model version (nothing is recorded).
        """
        get_profile(self._settings, request.profile)
        found = session.exec(
            select(ModelVersion).where(
                ModelVersion.name == request.model, ModelVersion.version == request.version
            )
        ).first()
        if found is None:
            raise NotFoundError(f"model {request.model} version {request.version} not found")
        job = BuildJob(
            model=request.model,
            model_version=request.version,
            profile=request.profile,
            max_accuracy_drop=request.max_accuracy_drop,
            owner=self.owner,
            created_by=actor,
        )
        session.add(job)
        session.commit()
        session.refresh(job)
        assert job.id is not None
        future = self._executor.submit(self._run, job.id, request)
        logger.info("build queued build_id=%d model=%s profile=%s", job.id, job.model, job.profile)
        return job, future

    def stop(self) -> None:
        """End running builds and drop queued ones; their jobs fail as interrupted."""
        self._stopping = True
        self._process.stop_all()
        self._executor.shutdown(wait=True, cancel_futures=True)
        interrupt_unfinished(engine=self._engine, owner=self.owner, reason=INTERRUPTED)

    def _update(self, build_id: int, *, event: str | None = None, **changes: Any) -> None:
        """Set ``changes`` on the job (and move its state on ``event``), committed at once."""
        with Session(self._engine) as session:
            job = session.get(BuildJob, build_id)
            if job is None:
                return
            if event is not None:
                job.state = next_build_state(job.state, event)
            for name, value in changes.items():
                setattr(job, name, value)
            session.add(job)
            session.commit()

    def _add_candidate(self, build_id: int, row: dict[str, Any]) -> None:
        with Session(self._engine) as session:
            job = session.get(BuildJob, build_id)
            if job is None:
                return
            job.candidates = [*job.candidates, row]  # a new list: the JSON column is rewritten
            session.add(job)
            session.commit()

    def _run(self, build_id: int, request: BuildRequest) -> str:
        self._update(
            build_id, event="start", started_at=utcnow(), stage="starting the build worker"
        )
        try:
            with Session(self._engine) as session:
                bundle = build_bundle(
                    session=session,
                    repository=self._repository,
                    settings=self._settings,
                    model_name=request.model,
                    model_version=request.version,
                    profile_name=request.profile,
                    max_accuracy_drop=request.max_accuracy_drop,
                    holdout=request.holdout,
                    progress=lambda text: self._update(build_id, stage=text),
                    measure=lambda *args, **kwargs: self._process.build(
                        *args,
                        on_candidate=lambda row: self._add_candidate(build_id, row),
                        on_rss=lambda rss: self._update(build_id, worker_max_rss_bytes=rss),
                        **kwargs,
                    ),
                )
                bundle_id = bundle.id
        except Exception as e:  # the top of a background job: every failure lands in its row
            status = self._error_status(e)
            if self._stopping:  # the child was ended under it: not the build's fault
                logger.warning("build interrupted build_id=%d", build_id)
                message, status = INTERRUPTED, INTERRUPTED_STATUS
            elif isinstance(e, ControlPlaneError) and status < 500:
                logger.info("build failed build_id=%d status=%d error=%s", build_id, status, e)
                message = str(e)
            else:
                logger.exception("build failed build_id=%d", build_id)
                message = str(e) if isinstance(e, ControlPlaneError) else f"internal error: {e!r}"
            self._update(
                build_id,
                event="fail",
                error=message,
                error_status=status,
                stage=None,
                finished_at=utcnow(),
            )
            raise
        self._update(
            build_id, event="succeed", bundle_id=bundle_id, stage=None, finished_at=utcnow()
        )
        logger.info("build succeeded build_id=%d bundle_id=%s", build_id, bundle_id)
        return bundle_id
