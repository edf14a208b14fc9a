"""The broker auth files the control plane generates, checked without a broker."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgefleet.control_plane.broker.mosquitto import broker_user, find_dynsec_plugin, render_config
from edgefleet.control_plane.broker.security import (
    ADMIN_ROLE,
    ADMIN_USER,
    CONTROL_ROLE,
    Admin,
    BrokerAuthFiles,
    add_control_user,
    ensure_admin,
    hash_password,
    read_admin,
    read_password_file,
    render_dynsec_config,
    render_password_file,
    verify_password,
    write_auth_files,
)
from edgefleet.control_plane.services.enrolment import RateLimiter


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


def _config(files: BrokerAuthFiles) -> dict[str, Any]:
    return dict(json.loads(render_dynsec_config(files)))


def _acls(config: dict[str, Any], role: str) -> set[tuple[str, str, bool]]:
    (found,) = [r for r in config["roles"] if r["rolename"] == role]
    return {(a["acltype"], a["topic"], a["allow"]) for a in found["acls"]}


def test_dynsec_config_denies_by_default_and_confines_each_device_to_its_subtree(
    tmp_path: Path,
) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    add_control_user(files, "cp-main")
    write_auth_files(
        files,
        devices={"dev-live0001": hash_password("a"), "dev-cert0001": ""},
        revoked=["dev-gone0001"],
    )
    config = _config(files)
    assert config["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    assert _acls(config, "dev-live0001") == {
        ("publishClientSend", "fleet/dev-live0001/up/#", True),
        ("publishClientReceive", "fleet/dev-live0001/down/#", True),
        ("publishClientReceive", "fleet/all/down/#", True),
        ("subscribePattern", "fleet/dev-live0001/down/#", True),
        ("subscribePattern", "fleet/all/down/#", True),
    }
    assert ("subscribePattern", "$share/+/fleet/#", True) in _acls(config, CONTROL_ROLE)
    clients = {c["username"]: c for c in config["clients"]}
    # A revoked device has no client and no role: everything it tries is refused.
    assert sorted(clients) == ["cp-main", "dev-cert0001", "dev-live0001"]
    assert "dev-gone0001" not in {r["rolename"] for r in config["roles"]}
    # Devices are pinned to their own client id; a certificate device has no password.
    assert clients["dev-live0001"]["clientid"] == "dev-live0001"
    assert "password" not in clients["dev-cert0001"]
    assert clients["cp-main"]["roles"] == [{"rolename": CONTROL_ROLE}]


def test_dynsec_password_fields_are_the_mosquitto_hash_unchanged(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    encoded = hash_password("s3cret")
    write_auth_files(files, devices={"dev-live0001": encoded})
    (client,) = [c for c in _config(files)["clients"] if c["username"] == "dev-live0001"]
    assert encoded == f"$7${client['iterations']}${client['salt']}${client['password']}"
    assert len(base64.b64decode(client["salt"])) == 12  # what the plugin accepts


def test_admin_gets_the_plugin_api_only(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    admin = ensure_admin(files, port=9001)
    assert ensure_admin(files, port=9002).password == admin.password  # kept, port updated
    assert read_admin(files) == Admin(port=9002, password=admin.password)
    config = _config(files)
    (client,) = [c for c in config["clients"] if c["username"] == ADMIN_USER]
    assert client["roles"] == [{"rolename": ADMIN_ROLE}]
    assert {topic for _kind, topic, _allow in _acls(config, ADMIN_ROLE)} == {
        "$CONTROL/dynamic-security/#"
    }
    assert verify_password(admin.password, read_password_file(files.password_file)[ADMIN_USER])


def test_control_users_must_be_cp_names_and_devices_device_ids(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    with pytest.raises(ValueError, match="cp- names"):
        add_control_user(files, "dev-abcdefgh")
    with pytest.raises(ValueError, match="cp- names"):
        add_control_user(files, ADMIN_USER)
    with pytest.raises(ValueError, match="not a device id"):
        write_auth_files(files, devices={"cp-x": ""})


def test_password_file_refuses_entries_that_would_break_its_format() -> None:
    with pytest.raises(ValueError):
        render_password_file({"dev-a:b": hash_password("x")})
    with pytest.raises(ValueError):
        render_password_file({"dev-abcdefgh": "plain"})


def test_auth_files_hold_control_users_and_live_devices_only_at_0600(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    add_control_user(files, "cp-main")
    write_auth_files(
        files,
        devices={"dev-live0001": hash_password("a"), "dev-gone0001": hash_password("b")},
        revoked=["dev-gone0001"],
    )
    users = read_password_file(files.password_file)
    assert sorted(users) == ["cp-main", "dev-live0001"]
    assert files.devices_file.read_text() == "dev-live0001\n"
    for path in (files.password_file, files.devices_file, files.control_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_secured_config_turns_anonymous_access_off_and_loads_the_plugin(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    secured = render_config(port=1883, data_dir=tmp_path, security=files).splitlines()
    assert secured[:2] == ["listener 1883 127.0.0.1", "use_username_as_clientid true"]
    for line in (
        "allow_anonymous false",
        f"plugin {find_dynsec_plugin()}",
        f"plugin_opt_config_file {tmp_path / 'dynamic-security.json'}",
        "max_packet_size 1048576",
        "max_queued_messages 0",
        "persistence true",
        "autosave_interval 2",
        f"log_dest file {tmp_path}/mosquitto.log",
    ):
        assert line in secured
    assert not [line for line in secured if line.startswith(("acl_file", "password_file"))]
    assert "allow_anonymous true" in render_config(port=1883, data_dir=tmp_path).splitlines()


def test_broker_started_by_root_without_its_user_runs_as_root_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        assert broker_user(tmp_path) is None  # it stays whoever started it
        return
    assert broker_user(tmp_path, preferred="edgefleet-no-such-user") == "root"
    assert "runs as root" in caplog.text
    caplog.clear()
    # A parent directory the broker user may not enter: root as well, with the reason.
    blocked = tmp_path / "private"
    blocked.mkdir(mode=0o700)
    assert broker_user(blocked / "broker") == "root"
    assert f"cannot enter {blocked}" in caplog.text
    os.chmod(blocked, 0o711)
    os.chmod(tmp_path, 0o711)
    reachable = all(os.stat(p).st_mode & 0o001 for p in tmp_path.resolve().parents)
    assert broker_user(blocked / "broker") == ("mosquitto" if reachable else "root")


def test_rate_limiter_allows_a_burst_then_refills_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=0.5, burst=2, clock=lambda: now[0])
    assert limiter.allow("a") and limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.allow("b")  # another address has its own bucket
    assert limiter.retry_after("a") == pytest.approx(2.0)
    now[0] = 2.0
    assert limiter.allow("a") and not limiter.allow("a")
