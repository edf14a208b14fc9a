"""``edgefleet-agent``: ``run`` the daemon, or print the installed ``status`` from disk."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.config import AgentConfig, load_config
from agent.errors import AgentError, SlotError
from agent.slots import SlotStore

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the agent until SIGTERM/SIGINT"),
        ("status", "print the installed model from disk"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--config", type=Path, required=True, help="path to agent.toml")
        command.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    return parser


def print_status(config: AgentConfig) -> int:
    """Print what is installed according to ``active.json``; exit status 0 either way."""
    store = SlotStore(config.data_dir)
    try:
        record = store.read_active()
    except SlotError as e:
        print(f"device_id: {config.device_id}\ninstalled: unknown ({e})")
        return 1
    lines = [f"device_id: {config.device_id}", f"profile: {config.profile}"]
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
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edgefleet-agent`` and ``python -m agent``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = load_config(args.config)
        if args.command == "status":
            return print_status(config)
        from agent.daemon import Agent

        Agent(config).run()
    except AgentError as e:
        print(f"edgefleet-agent: {e}", file=sys.stderr)
        return 2
    return 0
