"""``edgefleet-agent``: ``run`` the daemon, or print the installed ``status`` from disk."""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from edgefleet.agent import __version__
from edgefleet.agent.config import AgentConfig, load_config
from edgefleet.agent.errors import AgentError, SlotError
from edgefleet.agent.install.slots import SlotStore

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the agent until SIGTERM/SIGINT"),
        ("status", "print the installed model, journal, spool and link state from disk"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--config", type=Path, required=True, help="path to agent.toml")
        command.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    enrol = commands.add_parser("enrol", help="trade a one-time token for broker credentials")
    enrol.add_argument("--config", type=Path, required=True, help="path to agent.toml")
    enrol.add_argument("--api", required=True, help="control plane URL, e.g. http://host:8000")
    enrol.add_argument("--token", required=True, help="one-time enrolment token")
    enrol.add_argument("--ca-file", type=Path, help="CA that verifies an https:// control plane")
    enrol.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    return parser


def print_status(config: AgentConfig) -> int:
    """Print what each hosted model has installed (its ``active.json``) and its journal;
    exit status 0 either way (1 when an ``active.json`` is unreadable)."""
    from edgefleet.agent.install.layout import hosted_models, model_dir

    lines = [f"device_id: {config.device_id}", f"profile: {config.profile}"]
    # Read-only: a one-model layout the daemon has not moved yet is shown where it is.
    dirs = {name: model_dir(config.data_dir, name) for name in hosted_models(config.data_dir)}
    if not dirs and (Path(config.data_dir) / "active.json").exists():
        dirs = {"": Path(config.data_dir)}
    names = list(dirs)
    if not names:
        lines.append("installed: no")
    failed = False
    for name in names:
        store = SlotStore(dirs[name])
        if len(names) > 1:
            lines.append(f"[model {name}]")
        try:
            record = store.read_active()
        except SlotError as e:
            lines.append(f"installed: unknown ({e})")
            failed = True
            continue
        if record is None:
            lines.append("installed: no")
        else:
            lines += [
                "installed: yes",
                f"model: {record.model}",
                f"model_version: {record.model_version}",
                f"bundle_id: {record.bundle_id}",
                f"release: {record.release}",
                f"highest_release: {record.highest()}",
                f"slot: {record.slot}",
                f"slot_dir: {store.slot_dir(record.slot)}",
            ]
        lines += _journal_lines(dirs[name])
    if len(names) > 1:
        lines.append("[device]")
    lines += _lock_lines(config) + _daemon_lines(config) + disk_lines(config)
    print("\n".join(lines))
    return 1 if failed else 0


def _journal_lines(directory: Path) -> list[str]:
    from edgefleet.agent.install.journal import Journal

    record = Journal(directory).read()
    if record is None:
        return ["journal: empty"]
    lines = [
        f"journal_state: {record.state}",
        f"journal_bundle_id: {record.bundle_id}",
        f"journal_history: {' -> '.join(record.history)}",
    ]
    if record.reason:
        lines.append(f"journal_reason: {record.reason}")
    return lines


def _lock_lines(config: AgentConfig) -> list[str]:
    """The update locks applications hold (a deferred switch waits for them)."""
    from edgefleet.agent.install.deferral import UpdateLock

    locks = UpdateLock(config.data_dir).held()
    if not locks:
        return ["update_lock: none"]
    return [f"update_lock: {lock.holder} until {_lock_until(lock.expires_at)}" for lock in locks]


def _lock_until(expires_at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds")


def _daemon_lines(config: AgentConfig) -> list[str]:
    """Spool depth (read from the database) and link state (from the daemon's status file)."""
    from edgefleet.agent.daemon import SPOOL_FILE, status_path

    lines = []
    spool = Path(config.data_dir) / SPOOL_FILE
    if spool.exists():
        try:
            with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
                depth = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            lines.append(f"spool_depth: {depth}")
        except sqlite3.Error as e:
            lines.append(f"spool_depth: unknown ({e})")
    else:
        lines.append("spool_depth: 0")
    try:
        status = json.loads(status_path(config.data_dir).read_text())
        lines += [
            f"link: {status.get('link')} (as of {status.get('updated_at', 0):.0f}, "
            f"pid {status.get('pid')})",
            f"serving: {status.get('serving')}",
        ]
    except (OSError, ValueError):
        lines.append("link: unknown (agent not running)")
    return lines


def disk_lines(config: AgentConfig) -> list[str]:
    """Disk usage per use against its share of ``[disk] budget_mb``, measured now (the
    agent need not run), and from the daemon's status file the spool's cap in force
    and what garbage collection freed."""
    from edgefleet.agent.daemon import status_path
    from edgefleet.agent.storage.budget import DiskBudget

    usage = DiskBudget(config.data_dir, config.disk).usage()
    lines = [
        f"disk: {_mib(usage.used)} used of the {config.disk.budget_mb:g} MiB budget; "
        f"filesystem {_mib(usage.free)} free, {_mib(usage.reserve)} kept free"
    ]
    for use in usage.uses:
        share = "" if use.use == "other" else f" of {_mib(use.share)} share"
        percent = "" if use.use == "other" else f" ({100 * use.used / max(use.share, 1):.0f}%)"
        lines.append(f"disk.{use.use}: {_mib(use.used)}{share}{percent}")
    try:
        disk = json.loads(status_path(config.data_dir).read_text()).get("disk") or {}
    except (OSError, ValueError, AttributeError):
        disk = {}
    if isinstance(disk, dict) and "spool_cap_bytes" in disk:
        lines += [
            f"disk.spool_cap: {_mib(int(disk['spool_cap_bytes']))}",
            f"disk.gc: {disk.get('gc_runs', 0)} runs, {_mib(int(disk.get('gc_freed_bytes', 0)))} "
            "freed",
        ]
    return lines


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edgefleet-agent`` and ``python -m edgefleet.agent``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = load_config(args.config)
        if args.command == "status":
            return print_status(config)
        if args.command == "enrol":
            from edgefleet.agent.enrolment.enrol import (
                CertificateCredentials,
                credentials_path,
                enrol,
            )

            issued = enrol(config, api_url=args.api, token=args.token, ca_file=args.ca_file)
            saved = (
                issued.cert_file
                if isinstance(issued, CertificateCredentials)
                else credentials_path(config.data_dir)
            )
            print(f"enrolled {config.device_id}; credentials in {saved}")
            return 0
        from edgefleet.agent.daemon import Agent

        Agent(config).run()
    except AgentError as e:
        print(f"edgefleet-agent: {e}", file=sys.stderr)
        return 2
    return 0
