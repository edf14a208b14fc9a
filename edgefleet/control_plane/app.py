"""The FastAPI application: API routes plus the background parts they rely on.

The lifespan creates the tables, opens the signed repository, starts the fleet
MQTT link (which keeps retrying if the broker is down; the API serves regardless)
and the scheduler that runs every periodic job (the list is in
:mod:`edgefleet.control_plane.jobs.scheduler`), and stops them again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session

from edgefleet.control_plane.api.routes import (
    agent_releases,
    audit,
    builds,
    bundles,
    config,
    devices,
    drift,
    enrolment,
    events,
    experiments,
    field_data,
    groups,
    health,
    keys,
    models,
    profiles,
    retraining,
    rollouts,
    tokens,
    trust,
)
from edgefleet.control_plane.api.routes.console import register_console
from edgefleet.control_plane.broker.link import FleetLink, stable_client_id
from edgefleet.control_plane.core.auth import authorize, ensure_admin_token
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.errors import (
    BrokerError,
    BuildError,
    ConflictError,
    ControlPlaneError,
    DeviceTimeoutError,
    InvalidRequestError,
    NotFoundError,
)
from edgefleet.control_plane.core.metrics import router as metrics_router
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.drift.loop import DriftLoop
from edgefleet.control_plane.jobs.scheduler import build_scheduler
from edgefleet.control_plane.services.build_jobs import BuildRunner, interrupt_unfinished
from edgefleet.control_plane.services.experiments.lifecycle import ExperimentRunner
from edgefleet.control_plane.services.rollouts.orchestrator import RolloutOrchestrator
from edgefleet.control_plane.trust.keyring import SigningError
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.mqtt import BrokerAddress

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
ERROR_STATUS: dict[type[ControlPlaneError], int] = {
    NotFoundError: 404,
    ConflictError: 409,
    InvalidRequestError: 422,
    BuildError: 422,
    BrokerError: 503,
    DeviceTimeoutError: 504,
    SigningError: 422,
}


def error_status(exc: Exception) -> int:
    """The HTTP status the API answers ``exc`` with (500 for anything unexpected)."""
    return next((c for t, c in ERROR_STATUS.items() if isinstance(exc, t)), 500)


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options for ``settings``: forwarding headers from the configured proxies only.

    uvicorn's default trusts ``X-Forwarded-For`` from 127.0.0.1, which lets anyone on
    the host pose as any client address (and so slip past per-address rate limits).
    """
    proxies = settings.trusted_proxies
    return {"proxy_headers": bool(proxies), "forwarded_allow_ips": proxies}


def create_app(settings: Settings) -> FastAPI:
    """The control-plane app for ``settings``; nothing starts until the lifespan runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings)
        create_db_and_tables(engine, auto_upgrade=settings.db_auto_upgrade)
        if settings.api_auth:
            with Session(engine) as session:
                ensure_admin_token(session=session, settings=settings)
        replica = settings.client_id or stable_client_id(settings.data_dir)
        interrupt_unfinished(engine=engine, owner=replica)  # builds a crash left behind
        repository = SignedRepository(
            settings.repository_dir,
            engine=engine,
            passphrase=settings.key_passphrase_bytes,
            replica=replica,
            static_tree=settings.static_tree_dir,
        )
        repository.init_or_load()
        repository.refresh_timestamp()
        link = FleetLink(settings=settings, engine=engine, repository=repository)
        link.start()
        drift_loop = DriftLoop(engine=engine, settings=settings, repository=repository, link=link)
        orchestrator = RolloutOrchestrator(
            engine=engine,
            publisher=link,
            replica=replica,
            signer=repository,
        )
        scheduler = build_scheduler(
            settings=settings,
            engine=engine,
            repository=repository,
            drift_loop=drift_loop,
            orchestrator=orchestrator,
            experiments=ExperimentRunner(engine=engine, publisher=link),
        )
        scheduler.start()
        builds_runner = BuildRunner(
            engine=engine,
            repository=repository,
            settings=settings,
            owner=replica,
            error_status=error_status,
        )
        app.state.builds = builds_runner
        app.state.orchestrator = orchestrator
        app.state.settings = settings
        app.state.engine = engine
        app.state.repository = repository
        app.state.link = link
        app.state.drift_loop = drift_loop
        logger.info(
            "control plane started data_dir=%s broker=%s",
            settings.data_dir,
            BrokerAddress.parse(settings.broker_url).url(),  # without any password
        )
        try:
            yield
        finally:
            scheduler.shutdown(wait=False)
            builds_runner.stop()
            link.stop()
            engine.dispose()
            logger.info("control plane stopped")

    app = FastAPI(
        title="edgefleet control plane",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/docs",
    )

    @app.exception_handler(ControlPlaneError)
    async def control_plane_error(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=error_status(exc), content={"detail": str(exc)})

    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(authorize)])
    for module in (
        health,
        models,
        profiles,
        bundles,
        agent_releases,
        builds,
        devices,
        groups,
        config,
        enrolment,
        rollouts,
        experiments,
        audit,
        events,
        field_data,
        drift,
        retraining,
        keys,
        tokens,
        trust,
    ):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(metrics_router)
    register_console(app)
    return app
