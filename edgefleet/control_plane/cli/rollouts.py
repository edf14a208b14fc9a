"""``rollout`` and ``audit``: rolling bundles out in gated waves, and the record of
who started, paused, promoted or stopped them, and why."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edgefleet.control_plane.cli.options import (
    DEFAULT_API,
    ApiOption,
    JsonOption,
    parse_duration,
    parse_labels,
)
from edgefleet.control_plane.cli.output import api_errors, console, print_rows, table
from edgefleet.control_plane.client import ApiClient

rollout_app = typer.Typer(no_args_is_help=True, help="Roll bundles out to devices.")
audit_app = typer.Typer(no_args_is_help=True, help="Who did what to rollouts, and why.")

ReasonOption = Annotated[str | None, typer.Option(help="why: recorded in the audit log")]

_RATE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*(?:([kmgt])(i?))?(b?)(?:/s)?$", re.IGNORECASE)


def parse_bandwidth(text: str) -> int:
    """``50MB/s``, ``1.5GB/s``, ``200KiB/s`` or plain bytes per second, as bytes per second.

    kB, MB, GB are powers of 1,000 (as network rates are quoted), KiB, MiB, GiB powers
    of 1,024. A lowercase ``b`` (bits) is refused rather than guessed, so a budget is
    never off by a factor of eight.
    """
    match = _RATE_RE.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a rate like 50MB/s, 200KiB/s or 1000000")
    number, prefix, binary, byte = match.groups()
    if byte == "b":
        raise typer.BadParameter(f"{text!r}: give bytes (MB/s), not bits (Mb/s)")
    power = "kmgt".index(prefix.lower()) + 1 if prefix else 0
    value = int(float(number) * (1024 if binary else 1000) ** power)
    if value < 1:
        raise typer.BadParameter(f"{text!r} is below one byte per second")
    return value


@rollout_app.command("create")
def rollout_create(
    bundle: Annotated[str, typer.Option(help="bundle id")],
    device: Annotated[
        list[str] | None,
        typer.Option(help="target device id (repeatable); default: all of the profile"),
    ] = None,
    group: Annotated[list[str] | None, typer.Option(help="device group (repeatable)")] = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value the devices carry")] = None,
    waves: Annotated[
        str, typer.Option(help="cumulative waves, counts or shares: 1,10%,50%,100%")
    ] = "100%",
    soak: Annotated[float, typer.Option(help="seconds each wave soaks before its gates")] = 0.0,
    max_install_failure_rate: Annotated[float | None, typer.Option()] = None,
    max_error_rate: Annotated[float | None, typer.Option()] = None,
    max_latency_ratio: Annotated[
        float | None, typer.Option(help="p95 on the new bundle / p95 on the previous one")
    ] = None,
    min_agreement: Annotated[float | None, typer.Option()] = None,
    min_inferences: Annotated[int, typer.Option(help="telemetry a wave needs first")] = 0,
    strategy: Annotated[str, typer.Option(help="canary | blue_green | shadow")] = "canary",
    manual: Annotated[bool, typer.Option("--manual", help="wait for promote after each wave")] = (
        False
    ),
    draft: Annotated[bool, typer.Option("--draft", help="create without starting")] = False,
    install_timeout: Annotated[
        str | None,
        typer.Option(help="each device's install deadline, offer -> active, while online: 30m"),
    ] = None,
    wave_timeout: Annotated[
        str | None, typer.Option(help="how long a wave waits for its installs: 2h")
    ] = None,
    window_cron: Annotated[
        str | None,
        typer.Option(help='maintenance window: when it opens, five-field cron: "0 2 * * *"'),
    ] = None,
    window_duration: Annotated[
        str, typer.Option(help="how long the maintenance window stays open: 2h")
    ] = "1h",
    window_tz: Annotated[
        str, typer.Option(help="the devices' time zone the cron is read in: Europe/Berlin")
    ] = "UTC",
    max_concurrent: Annotated[
        int | None,
        typer.Option(min=1, help="most devices installing at once, fleet-wide: offered N at "
                     "a time, the next as one finishes"),
    ] = None,
    bandwidth: Annotated[
        str | None,
        typer.Option(help="fleet bandwidth budget for the rollout, e.g. 50MB/s: offers are "
                     "paced by the bundle's size"),
    ] = None,
    atomic: Annotated[
        bool, typer.Option("--atomic", help="every device switches at one signed moment")
    ] = False,
    quorum: Annotated[
        str, typer.Option(help="with --atomic: share of devices that must stage: 100% or 90%")
    ] = "100%",
    switch_lead: Annotated[
        str, typer.Option(help="with --atomic: the switch moment, this long after the order")
    ] = "5s",
    late_switch: Annotated[
        str, typer.Option(help="with --atomic: a device back this long after it still switches")
    ] = "10m",
    api: ApiOption = DEFAULT_API,
) -> None:  # fmt: skip
    """Roll a bundle out in waves, with health gates between them.

    A device that misses its install deadline (or its wave's) is timed out and counts
    as failed; offline devices are not timed out until they are back; `rollout retry`
    offers timed-out and failed devices again.

    --max-concurrent and --bandwidth pace the offers across the fleet: a wave's devices
    are offered a few at a time and the wave is judged once all were offered.

    With --window-cron the devices download, verify and stage at once but switch only
    inside the maintenance window (they report `deferred` until then, and while an app
    on the device holds its update lock); the install deadline keeps running, so give
    --install-timeout room for the wait.

    With --atomic (one wave) every device stages and waits `armed`; once the --quorum is
    armed the control plane signs a switch order for now + --switch-lead and they all
    switch at that moment; if staging fails beyond the quorum, nobody switches.
    """
    selector: dict[str, Any] = {}
    if group:
        selector["groups"] = group
    if label:
        selector["labels"] = parse_labels(label)
    gates = {
        "max_install_failure_rate": max_install_failure_rate,
        "max_error_rate": max_error_rate,
        "max_p95_latency_ratio": max_latency_ratio,
        "min_agreement": min_agreement,
        "min_inferences": min_inferences,
    }
    window = None
    if window_cron:
        duration = parse_duration(window_duration)
        window = {"cron": window_cron, "duration_s": duration, "tz": window_tz}
    atomic_options = None
    if atomic:
        try:
            quorum_pct = float(quorum.strip().rstrip("%"))
        except ValueError:
            raise typer.BadParameter(f"{quorum!r} is not a share like 100% or 90%") from None
        atomic_options = {
            "quorum_pct": quorum_pct,
            "switch_lead_s": parse_duration(switch_lead),
            "late_switch_s": parse_duration(late_switch),
        }
    with api_errors(), ApiClient(api) as client:
        rollout = client.create_rollout(
            bundle_id=bundle,
            device_ids=device,
            selector=selector or None,
            waves=[w.strip() for w in waves.split(",") if w.strip()],
            soak_seconds=soak,
            gates={k: v for k, v in gates.items() if v is not None},
            strategy=strategy,
            mode="manual" if manual else "automatic",
            start=not draft,
            install_timeout_s=parse_duration(install_timeout) if install_timeout else None,
            wave_timeout_s=parse_duration(wave_timeout) if wave_timeout else None,
            maintenance_window=window,
            max_concurrent=max_concurrent,
            bandwidth_bytes_per_s=parse_bandwidth(bandwidth) if bandwidth else None,
            atomic=atomic_options,
        )
    sizes = [w["size"] for w in rollout.get("wave_status", [])]
    console.print(
        f"rollout {rollout['id']} {rollout['state']} to {len(rollout['devices'])} devices"
        f" in waves of {sizes}"
    )


_DEVICE_COLUMNS = (
    ("pending", ("pending",)),
    ("downloading", ("offered", "downloading", "verified", "staged", "smoke_tested")),
    ("deferred", ("deferred",)),
    ("armed", ("armed",)),
    ("active", ("active", "shadowing")),
    ("failed", ("failed",)),
    ("timed out", ("timed_out",)),
    ("rolled back", ("rolling_back", "rolled_back")),
    ("other", ("superseded", "cancelled")),
)


def _rollout_table(rollout: dict[str, Any]) -> Table:
    """Per wave: devices by state and gate values against thresholds."""
    title = (
        f"rollout {rollout['id']} · {rollout['bundle_id']} · {rollout['state']}"
        f" · wave {rollout.get('wave', 1)}/{rollout.get('wave_count', 1)}"
        f" {rollout.get('phase', '')} · {rollout.get('strategy', 'canary')}"
        f" {rollout.get('mode', 'automatic')}"
    )
    timeouts = (
        f"install timeout {_seconds(rollout.get('install_timeout_s'))}"
        f" · wave timeout {_seconds(rollout.get('wave_timeout_s'))}"
    )
    window = rollout.get("maintenance_window")
    if window:
        timeouts += (
            f" · window {window['cron']} ({window.get('tz', 'UTC')})"
            f" for {_seconds(window['duration_s'])}"
        )
    atomic = rollout.get("atomic")
    if atomic:
        timeouts += f" · atomic, quorum {atomic['quorum_pct']:g}%"
        order = rollout.get("switch_order")
        if order:
            timeouts += f" · switch order {order['state']} for {_epoch_clock(order['switch_at'])}"
        skew = rollout.get("switch_skew_s")
        if skew is not None:
            timeouts += f" · switch skew {skew * 1000:.1f} ms"
        late = [d for d in rollout.get("devices", []) if (d.get("switch_late_s") or 0) > 1]
        if late:
            timeouts += " · late: " + ", ".join(
                f"{d['device_id']} +{d['switch_late_s']:.1f}s" for d in late
            )
    windows = {
        d["device_id"]: d["maintenance_window"]
        for d in rollout.get("devices", [])
        if d.get("maintenance_window") and not window
    }
    if windows:
        timeouts += f" · group windows on {len(windows)} devices"
    caption = " · ".join(x for x in (rollout.get("reason"), timeouts) if x)
    result = Table(title=title, caption=caption)
    result.add_column("wave")
    result.add_column("size")
    result.add_column("state")
    result.add_column("deadline")
    for name, _states in _DEVICE_COLUMNS:
        result.add_column(name, justify="right")
    result.add_column("gates")
    for wave in rollout.get("wave_status") or []:
        counts = wave.get("counts", {})
        gates = []
        for gate in wave.get("gates", []):
            value = "-" if gate["value"] is None else f"{gate['value']:.3f}"
            mark = Text("ok", "green") if gate["ok"] else Text("BREACH", "red")
            gates.append(Text.assemble(f"{gate['name']} {value} / {gate['threshold']} ", mark))
        result.add_row(
            str(wave["wave"]),
            str(wave["size"]),
            wave["state"],
            _clock(wave.get("deadline")),
            *(str(sum(counts.get(s, 0) for s in states)) for _n, states in _DEVICE_COLUMNS),
            Text("\n").join(gates) if gates else "-",
        )
    return result


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


def _epoch_clock(moment: float) -> str:
    """Epoch seconds as HH:MM:SS.mmm (UTC)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%S.%f")[:-3]


def _clock(moment: str | None) -> str:
    """An ISO time as HH:MM:SS (UTC), '-' for none."""
    if not moment:
        return "-"
    return moment.split("T", 1)[-1][:8]


def _devices_table(rollout: dict[str, Any]) -> Table:
    paused = "paused (offline)"
    rows = [
        d
        | {
            "deadline": paused if d.get("clock_paused") else _clock(d.get("deadline_at")),
            "window": _window_text(d.get("maintenance_window")),
            "switched": (
                f"{_epoch_clock(d['switched_at'])} +{d.get('switch_late_s') or 0:.3f}s"
                if d.get("switched_at") is not None
                else "-"
            ),
        }
        for d in rollout["devices"]
    ]
    columns = ["device_id", "wave", "state", "deadline", "window", "install_seconds"]
    if rollout.get("atomic"):
        columns.append("switched")
    return table(rows, [*columns, "reason", "updated_at"], "devices")


def _window_text(window: dict[str, Any] | None) -> str:
    """A maintenance window as "cron (tz) for 1h", '-' for none."""
    if not window:
        return "-"
    return f"{window['cron']} ({window.get('tz', 'UTC')}) for {_seconds(window['duration_s'])}"


def _timed_out_table(rollout: dict[str, Any]) -> Table | None:
    """The timed-out devices, with the state each last reported (and any later report)."""
    rows = [
        {
            "device_id": d["device_id"],
            "wave": d["wave"],
            "last state": d.get("timed_out_in") or "-",
            "reported later": d.get("late_state") or "-",
            "reason": d.get("reason") or "",
        }
        for d in rollout["devices"]
        if d["state"] == "timed_out"
    ]
    if not rows:
        return None
    return table(rows, ["device_id", "wave", "last state", "reported later", "reason"], "timed out")


@rollout_app.command("status")
def rollout_status(
    rollout_id: int,
    watch: Annotated[
        bool, typer.Option("--watch", help="live view until the rollout ends")
    ] = False,
    devices: Annotated[bool, typer.Option("--devices", help="also list every device")] = False,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Waves, device states and gate values of a rollout."""
    with api_errors(), ApiClient(api) as client:
        rollout = client.get_rollout(rollout_id)
        if as_json:
            console.print_json(json.dumps(rollout))
            return
        if not watch:
            console.print(_rollout_table(rollout))
            if (timed_out := _timed_out_table(rollout)) is not None:
                console.print(timed_out)
            if devices:
                console.print(_devices_table(rollout))
            return
        with Live(_rollout_table(rollout), console=console, refresh_per_second=4) as live:
            while rollout["state"] in ("in_progress", "paused", "draft"):
                time.sleep(0.5)
                rollout = client.get_rollout(rollout_id)
                live.update(_rollout_table(rollout))


def _act(action: str, rollout_id: int, reason: str | None, api: str) -> None:
    with api_errors(), ApiClient(api) as client:
        rollout = client.act_on_rollout(rollout_id, action, reason=reason)
    console.print(
        f"rollout {rollout['id']} {rollout['state']} (wave {rollout['wave']}, {rollout['phase']})"
    )


@rollout_app.command("start")
def rollout_start(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Start a draft rollout."""
    _act("start", rollout_id, reason, api)


@rollout_app.command("pause")
def rollout_pause(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Start no new wave until resumed."""
    _act("pause", rollout_id, reason, api)


@rollout_app.command("resume")
def rollout_resume(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Resume a paused rollout."""
    _act("resume", rollout_id, reason, api)


@rollout_app.command("promote")
def rollout_promote(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Start the next wave of a manual rollout whose wave passed its gates."""
    _act("promote", rollout_id, reason, api)


@rollout_app.command("retry")
def rollout_retry(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Offer the failed and timed-out devices of the waves so far again, with fresh deadlines."""
    _act("retry", rollout_id, reason, api)


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Stop the rollout; the current wave's devices roll back."""
    _act("abort", rollout_id, reason, api)


@rollout_app.command("rollback")
def rollout_rollback(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Roll every device that got the bundle back to its previous one."""
    _act("rollback", rollout_id, reason, api)


@audit_app.command("list")
def audit_list(
    rollout: Annotated[int | None, typer.Option(help="only this rollout")] = None,
    action: Annotated[str | None, typer.Option(help="only this action")] = None,
    limit: int = 100,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Operator actions and automatic decisions, newest first."""
    with api_errors(), ApiClient(api) as client:
        rows = client.list_audit(rollout_id=rollout, action=action, limit=limit)
    columns = ["ts", "actor", "action", "rollout_id", "target", "reason"]
    print_rows(rows, columns, "audit", as_json)
