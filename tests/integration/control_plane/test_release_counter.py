"""Two control-plane replicas on one PostgreSQL database building at the same moment
never hand out the same release counter."""

from __future__ import annotations

import threading

import pytest
from sqlmodel import Session, create_engine

from edgefleet.control_plane.core.db import create_db_and_tables
from edgefleet.control_plane.core.tables import Bundle
from edgefleet.control_plane.services.bundle_builder import next_release

pytestmark = pytest.mark.integration


def bundle(release: int) -> Bundle:
    return Bundle(
        id=f"digits-1-x86-r{release}",
        model="digits",
        model_version="1",
        profile="x86-64-gateway-onnx",
        release=release,
        target=f"digits-1-x86-r{release}.tar",
        sha256="0" * 64,
        length=1,
        path="/nonexistent",
    )


def test_a_second_replica_waits_for_the_first_builds_release_and_takes_the_next(
    pg_url: str,
) -> None:
    engine = create_engine(pg_url)
    create_db_and_tables(engine)
    taken: list[int] = []
    asked = threading.Event()

    def other_replica() -> None:
        with Session(engine) as session:
            asked.set()
            release = next_release(session)
            taken.append(release)
            session.add(bundle(release))
            session.commit()

    with Session(engine) as first:
        release = next_release(first)
        thread = threading.Thread(target=other_replica)
        thread.start()
        assert asked.wait(10)
        thread.join(0.5)  # the other build is held while this one has not committed
        assert taken == []
        first.add(bundle(release))
        first.commit()
    thread.join(30)
    assert (release, taken) == (1, [2])
