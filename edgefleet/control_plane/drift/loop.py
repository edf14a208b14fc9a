"""The scheduled job that closes the drift loop inside the control plane.

Each tick turns firing drift verdicts into retraining requests and carries every
approved request through (see ``services.retraining``). It binds the request
pipeline to the real registration, bundle build (through the converter gates)
and rollout services; ticks never overlap (``max_instances=1`` in the scheduler).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from edgefleet.control_plane.broker.link import FleetLink
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import (
    Bundle,
    ModelVersion,
    RetrainingRequest,
    RolloutCreate,
    RolloutGates,
)
from edgefleet.control_plane.drift import retraining
from edgefleet.control_plane.services import model_registry as model_service
from edgefleet.control_plane.services.build_worker import build_in_child
from edgefleet.control_plane.services.bundle_builder import build_bundle
from edgefleet.control_plane.services.rollouts.lifecycle import create_rollout
from edgefleet.control_plane.trust.repository import SignedRepository

logger = logging.getLogger(__name__)

INTERVAL_S = 10.0
CANARY_SOAK_S = 5.0


class DriftLoop:
    def __init__(
        self, *, engine: Engine, settings: Settings, repository: SignedRepository, link: FleetLink
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._repository = repository
        self._link = link
        self._lock = threading.Lock()

    def tick(self) -> None:
        """One pass: new requests from drift, then every approved request.

        Passes never overlap within a process: one that finds another running returns.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            with Session(self._engine) as session:
                retraining.check_drift(session=session)
                approved = [
                    r.id
                    for r in session.exec(
                        select(RetrainingRequest).where(RetrainingRequest.state == "approved")
                    ).all()
                ]
            for request_id in approved:
                assert request_id is not None
                with Session(self._engine) as session:
                    self.run(session, request_id)
        except Exception:  # top of a scheduled job
            logger.exception("drift loop tick failed")
        finally:
            self._lock.release()

    def run(self, session: Session, request_id: int) -> RetrainingRequest:
        return retraining.run_request(
            session=session,
            request_id=request_id,
            hooks=self._settings.retraining_hooks,
            register=self._register,
            build=self._build,
            roll_out=self._roll_out,
        )

    def _register(
        self, session: Session, model: str, version: str, model_bytes: bytes, samples: bytes
    ) -> ModelVersion:
        return model_service.register_model(
            session=session,
            settings=self._settings,
            name=model,
            version=version,
            model_bytes=model_bytes,
            samples_bytes=samples,
        )

    def _build(self, session: Session, model: str, version: str, profile: str) -> Bundle:
        return build_bundle(
            session=session,
            repository=self._repository,
            settings=self._settings,
            model_name=model,
            model_version=version,
            profile_name=profile,
            measure=build_in_child,  # candidates in a child process, as API builds
        )

    def _roll_out(
        self, session: Session, bundle: Bundle, device_ids: list[str], canary: int
    ) -> int:
        """A canary rollout: ``canary`` devices first, then the rest, both waves gated."""
        waves: list[int | str] = [canary, "100%"] if len(device_ids) > canary else ["100%"]
        rollout = create_rollout(
            session=session,
            publisher=self._link,
            rollout_in=RolloutCreate(
                bundle_id=bundle.id,
                device_ids=device_ids,
                waves=waves,
                soak_seconds=CANARY_SOAK_S,
                gates=RolloutGates(max_install_failure_rate=0.0, max_error_rate=0.05),
            ),
            actor="drift-loop",
        )
        assert rollout.id is not None
        return rollout.id
