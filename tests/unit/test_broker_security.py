"""The broker auth files the control plane generates, checked without a broker."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from control_plane.broker import render_config
from control_plane.broker_security import (
    BrokerAuthFiles,
    add_control_user,
    hash_password,
    read_password_file,
    render_acl,
    render_password_file,
    verify_password,
    write_auth_files,
)
from control_plane.services.enrolment import RateLimiter


def test_password_hash_matches_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        pytest.skip("mosquitto_passwd is not installed")
    path = tmp_path / "passwd"
    subprocess.run([binary, "-c", "-b", str(path), "dev-abcdefgh", "s3cret"], check=True)
    encoded = read_password_file(path)["dev-abcdefgh"]
    _, seven, iterations, salt, _digest = encoded.split("$")
    assert seven == "7"
    ours = hash_password("s3cret", salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == encoded
    assert verify_password("s3cret", encoded) and not verify_password("s3cret!", encoded)


def test_password_hash_is_salted_and_verifies() -> None:
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second and first.startswith("$7$1000$")
    assert verify_password("pw", first) and verify_password("pw", second)
    assert not verify_password("pw", "plaintext")


def test_acl_confines_devices_to_their_subtree_and_denies_revoked_ones() -> None:
    acl = render_acl(control_users=["cp-main"], revoked=["dev-revoked01"])
    assert "pattern read fleet/%u/down/#" in acl
    assert "pattern write fleet/%u/up/#" in acl
    assert "topic read fleet/all/down/#" in acl
    assert "user cp-main\ntopic readwrite fleet/#" in acl
    assert "user dev-revoked01\ntopic deny #" in acl
    # Nothing grants a device write access beyond its own up subtree.
    assert "pattern readwrite" not in acl and "topic write" not in acl


def test_acl_refuses_control_users_without_cp_prefix_and_malformed_device_ids() -> None:
    with pytest.raises(ValueError, match="cp- names"):
        render_acl(control_users=["dev-abcdefgh"])
    with pytest.raises(ValueError, match="not a device id"):
        render_acl(control_users=[], revoked=["cp-x"])


def test_password_file_refuses_entries_that_would_break_its_format() -> None:
    with pytest.raises(ValueError):
        render_password_file({"dev-a:b": hash_password("x")})
    with pytest.raises(ValueError):
        render_password_file({"dev-abcdefgh": "plain"})


def test_auth_files_hold_control_users_and_live_devices_only(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    add_control_user(files, "cp-main")
    write_auth_files(
        files,
        devices={"dev-live0001": hash_password("a"), "dev-gone0001": hash_password("b")},
        revoked=["dev-gone0001"],
    )
    users = read_password_file(files.password_file)
    assert sorted(users) == ["cp-main", "dev-live0001"]
    assert "user dev-gone0001\ntopic deny #" in files.acl_file.read_text()
    for path in (files.password_file, files.acl_file, files.control_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_secured_config_turns_anonymous_access_off(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    secured = render_config(port=1883, data_dir=tmp_path, security=files)
    for line in (
        "allow_anonymous false",
        f"password_file {files.password_file}",
        f"acl_file {files.acl_file}",
        "use_username_as_clientid true",
        "max_packet_size 1048576",
    ):
        assert line in secured.splitlines()
    assert "allow_anonymous true" in render_config(port=1883, data_dir=tmp_path).splitlines()


def test_rate_limiter_allows_a_burst_then_refills_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=0.5, burst=2, clock=lambda: now[0])
    assert limiter.allow("a") and limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.allow("b")  # another address has its own bucket
    assert limiter.retry_after("a") == pytest.approx(2.0)
    now[0] = 2.0
    assert limiter.allow("a") and not limiter.allow("a")
