"""Two repository replicas on one PostgreSQL database, signing at the same time.

Each replica has its own engine (its own connections), as two control-plane processes
would; the shared directory is one. Steps must queue on the repository lock: every
version signed once, every target in the final metadata, python-tuf's client happy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, create_engine, select
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from edgefleet.control_plane.core.db import create_db_and_tables
from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.core.tables import RepositoryMetadata
from edgefleet.control_plane.trust.repository import (
    SignedRepository,
    raise_trust_floor,
    trust_floors,
)

pytestmark = pytest.mark.integration

CUSTOM = {"bundle_id": "b", "release": 1}
PER_REPLICA = 6


class RepositoryFetcher(FetcherInterface):
    """Serves the shared directory through one replica's chunk reader, as the fleet link does."""

    def __init__(self, repository: SignedRepository) -> None:
        self.repository = repository

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            data, _ = self.repository.read_chunk(url.removeprefix("mqtt://repo/"), 0, 1 << 30)
        except NotFoundError as e:
            raise DownloadHTTPError(str(e), 404) from e
        return iter([data])


def test_replicas_signing_at_once_queue_on_the_lock_and_lose_nothing(
    tmp_path: Path,
    pg_url: str,
) -> None:
    engines = [create_engine(pg_url), create_engine(pg_url)]
    create_db_and_tables(engines[0])
    replicas = [
        SignedRepository(tmp_path / "shared", engine=engine, replica=f"cp-{n}")
        for n, engine in enumerate(engines)
    ]
    starters = [threading.Thread(target=r.init_or_load) for r in replicas]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join()
    assert replicas[0].root_bytes() == replicas[1].root_bytes()  # initialised once
    assert len(list((tmp_path / "shared" / "keys").glob("*.pem"))) == 6

    errors: list[BaseException] = []

    def sign(n: int) -> None:
        try:
            for i in range(PER_REPLICA):
                replicas[n].add_target(f"r{n}-{i}.tar", f"{n} {i}".encode(), CUSTOM)
                replicas[n].refresh_timestamp()
        except BaseException as e:  # reported below
            errors.append(e)

    signers = [threading.Thread(target=sign, args=(n,)) for n in range(2)]
    for thread in signers:
        thread.start()
    for thread in signers:
        thread.join()
    assert errors == []

    with Session(engines[0]) as session:
        rows = session.exec(
            select(
                RepositoryMetadata.role, RepositoryMetadata.version, RepositoryMetadata.signed_by
            )
        ).all()
    for role in ("targets", "snapshot", "timestamp"):
        versions = sorted(v for r, v, _ in rows if r == role)
        assert versions == list(range(1, len(versions) + 1)), role
    assert {by for _, _, by in rows} == {"cp-0", "cp-1"}

    client_dir = tmp_path / "device"
    (client_dir / "metadata").mkdir(parents=True)
    updater = Updater(
        metadata_dir=str(client_dir / "metadata"),
        metadata_base_url="mqtt://repo/metadata/",
        target_dir=str(client_dir),
        target_base_url="mqtt://repo/targets/",
        fetcher=RepositoryFetcher(replicas[1]),
        bootstrap=replicas[1].root_bytes(),
    )
    updater.refresh()
    for n in range(2):
        for i in range(PER_REPLICA):
            info = updater.get_targetinfo(f"r{n}-{i}.tar")
            assert info is not None, f"r{n}-{i}.tar missing"

    # Devices' trusted versions on PostgreSQL: an upsert per role that only goes up.
    with Session(engines[1]) as session:
        raise_trust_floor(session=session, device_id="dev-pgfloor01", versions={"targets": 3})
        raise_trust_floor(
            session=session, device_id="dev-pgfloor02", versions={"targets": 2, "timestamp": 4}
        )
        session.commit()
        assert trust_floors(session) == {
            "targets": (3, "dev-pgfloor01"),
            "timestamp": (4, "dev-pgfloor02"),
        }
    for engine in engines:
        engine.dispose()
