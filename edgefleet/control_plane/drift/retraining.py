"""The drift loop in the control plane: verdict -> request -> hook -> gates -> canary.

``check_drift`` turns a firing fleet verdict into at most one retraining request
per model version (policy ``automatic`` approves it at once, ``approval`` waits
for a person, ``off`` ignores drift). ``run_request`` carries an approved request
through: run the hook, register the new version, build its bundle for the drifted
cohort through the converter gates, compare challenger and champion on the same
holdout, and start a canary rollout when the challenger wins. Every step records
its outcome (with numbers) on the request.

Why this module stays over 400 lines: it is one state machine, the retraining
request's lifecycle (created from drift or by hand, decided, run through hook,
build, comparison and canary), and every function writes the same request's state
and outcome; split by step, its transitions would be scattered over modules.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import update
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import (
    ControlPlaneError,
    InvalidRequestError,
    NotFoundError,
)
from edgefleet.control_plane.core.tables import (
    Bundle,
    Device,
    ModelPolicy,
    ModelPolicyUpdate,
    ModelVersion,
    RetrainingRequest,
    utcnow,
)
from edgefleet.control_plane.drift.hook_config import RetrainHookSpec
from edgefleet.control_plane.drift.hook_runner import (
    Comparison,
    HookError,
    RetrainContext,
    compare_models,
    run_hook,
)
from edgefleet.control_plane.drift.reports import fleet_verdicts
from edgefleet.control_plane.drift.rule import CohortVerdict, DriftRule
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.field_data import write_field_data

logger = logging.getLogger(__name__)

BuildFn = Callable[[Session, str, str, str], Bundle]
"""(session, model, version, profile) -> a built and signed bundle."""
RolloutFn = Callable[[Session, Bundle, list[str], int], int]
"""(session, bundle, device ids, canary count) -> rollout id."""
RegisterFn = Callable[[Session, str, str, bytes, bytes], ModelVersion]
"""(session, model, version, onnx bytes, samples .npy bytes) -> the registered version."""


def get_policy(*, session: Session, model: str) -> ModelPolicy:
    """The model's policy, or the default (retrain after approval) when none is set."""
    return session.get(ModelPolicy, model) or ModelPolicy(model=model)


def set_policy(
    *,
    session: Session,
    model: str,
    update: ModelPolicyUpdate,
    hooks: Mapping[str, RetrainHookSpec],
) -> ModelPolicy:
    """Change the fields ``update`` names (PATCH); the rest keep their value.

    A hook is selected by name among ``hooks``, the ones an admin defined.
    """
    if session.exec(select(ModelVersion).where(ModelVersion.name == model)).first() is None:
        raise NotFoundError(f"model {model} not found")
    changes = update.model_dump(exclude_unset=True)
    hook = changes.get("hook")
    if hook is not None and hook not in hooks:
        defined = ", ".join(sorted(hooks)) or "none"
        raise InvalidRequestError(
            f"no retraining hook named {hook!r} on this control plane (defined: {defined}); "
            "an admin defines hooks in EDGEFLEET_RETRAINING_HOOKS(_FILE)"
        )
    policy = session.get(ModelPolicy, model) or ModelPolicy(model=model)
    for field, value in changes.items():
        setattr(policy, field, value)
    policy.updated_at = utcnow()
    session.add(policy)
    session.commit()
    session.refresh(policy)
    return policy


def _rule(policy: ModelPolicy) -> DriftRule:
    return DriftRule(
        enter=policy.drift_enter,
        leave=policy.drift_leave,
        min_devices=policy.drift_min_devices,
        device_share=policy.drift_device_share,
    )


def _describe(verdict: CohortVerdict, rule: DriftRule) -> str:
    return (
        f"drift: {len(verdict.devices_drifted)} of {verdict.devices_reporting} devices "
        f"({verdict.share:.0%}) in cohort {verdict.cohort} drifted on {verdict.model} "
        f"v{verdict.model_version} (rule: {rule.enter} drifted windows in a row, at least "
        f"{rule.min_devices} devices and {rule.device_share:.0%} of the cohort)"
    )


def create_request(
    *,
    session: Session,
    model: str,
    from_version: str,
    trigger: str,
    reason: str,
    cohort: str | None = None,
    detail: dict[str, object] | None = None,
    requested_by: str | None = None,
    requested_by_token_id: int | None = None,
) -> RetrainingRequest:
    policy = get_policy(session=session, model=model)
    request = RetrainingRequest(
        model=model,
        from_version=from_version,
        cohort=cohort,
        trigger=trigger,
        state="approved" if policy.retrain == "automatic" else "pending_approval",
        reason=reason,
        detail={"trigger_reason": reason, **(detail or {})},
        requested_by=requested_by,
        requested_by_token_id=requested_by_token_id,
    )
    session.add(request)
    if requested_by is not None:
        session.flush()  # the id, for the audit entry that commits with the request
        record_audit(
            session=session,
            actor=requested_by,
            actor_token_id=requested_by_token_id,
            action="retraining.request",
            target=f"request {request.id}",
            reason=reason,
            detail={"model": model, "from_version": from_version, "state": request.state},
        )
    session.commit()
    session.refresh(request)
    logger.info(
        "retraining requested request_id=%s model=%s from_version=%s state=%s",
        request.id,
        model,
        from_version,
        request.state,
    )
    return request


def request_retraining(
    *,
    session: Session,
    model: str,
    version: str,
    reason: str,
    requested_by: str,
    requested_by_token_id: int | None,
) -> RetrainingRequest:
    """A retraining request filed by a person, for a model version that exists."""
    exists = session.exec(
        select(ModelVersion).where(ModelVersion.name == model, ModelVersion.version == version)
    ).first()
    if exists is None:
        known = session.exec(select(ModelVersion).where(ModelVersion.name == model)).first()
        what = f"model {model} has no version {version}" if known else f"model {model} not found"
        raise NotFoundError(f"{what}: register it before asking to retrain it")
    return create_request(
        session=session,
        model=model,
        from_version=version,
        trigger="manual",
        reason=reason,
        requested_by=requested_by,
        requested_by_token_id=requested_by_token_id,
    )


def check_drift(*, session: Session) -> list[RetrainingRequest]:
    """Open a request for each firing verdict that has none yet; the new requests."""
    created = []
    models = {m.name for m in session.exec(select(ModelVersion)).all()}
    for model in sorted(models):
        policy = get_policy(session=session, model=model)
        if policy.retrain == "off":
            continue
        rule = _rule(policy)
        for verdict in fleet_verdicts(session=session, rule=rule, model=model):
            if not verdict.fires:
                continue
            existing = session.exec(
                select(RetrainingRequest).where(
                    RetrainingRequest.model == model,
                    RetrainingRequest.from_version == verdict.model_version,
                    RetrainingRequest.trigger == "drift",
                )
            ).first()
            if existing is not None:
                continue
            created.append(
                create_request(
                    session=session,
                    model=model,
                    from_version=verdict.model_version,
                    cohort=verdict.cohort,
                    trigger="drift",
                    reason=_describe(verdict, rule),
                    detail={
                        "devices_drifted": verdict.devices_drifted,
                        "devices_reporting": verdict.devices_reporting,
                    },
                )
            )
    return created


def decide(
    *, session: Session, request_id: int, approve: bool, by: str, reason: str | None = None
) -> RetrainingRequest:
    """A person approves or rejects a request that waits for approval."""
    request = get_request(session=session, request_id=request_id)
    if request.state != "pending_approval":
        raise InvalidRequestError(f"request {request_id} is {request.state}, not pending_approval")
    request.state = "approved" if approve else "rejected"
    request.decided_by = by
    if not approve:
        request.reason = f"rejected by {by}" + (f": {reason}" if reason else "")
    request.updated_at = utcnow()
    session.add(request)
    session.commit()
    session.refresh(request)
    return request


def get_request(*, session: Session, request_id: int) -> RetrainingRequest:
    request = session.get(RetrainingRequest, request_id)
    if request is None:
        raise NotFoundError(f"retraining request {request_id} not found")
    return request


def list_requests(*, session: Session, model: str | None = None) -> Sequence[RetrainingRequest]:
    query = select(RetrainingRequest)
    if model is not None:
        query = query.where(RetrainingRequest.model == model)
    return session.exec(query.order_by(col(RetrainingRequest.id).desc())).all()


def next_version(*, session: Session, model: str, from_version: str) -> str:
    """The version a retrained model gets: the next free integer, or ``<v>.r<n>``."""
    taken = {
        m.version for m in session.exec(select(ModelVersion).where(ModelVersion.name == model))
    }
    if re.fullmatch(r"\d+", from_version):
        candidate = int(from_version) + 1
        while str(candidate) in taken:
            candidate += 1
        return str(candidate)
    n = 1
    while f"{from_version}.r{n}" in taken:
        n += 1
    return f"{from_version}.r{n}"


def _finish(session: Session, request: RetrainingRequest, state: str, reason: str) -> None:
    request.state = state
    request.reason = reason
    request.updated_at = utcnow()
    session.add(request)
    session.commit()
    logger.info("retraining request_id=%s state=%s reason=%s", request.id, state, reason)


def _holdout(path: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return data["x"].astype(np.float32), data["y"]


def _write_field_data(
    session: Session, request: RetrainingRequest, context: RetrainContext
) -> None:
    """What the drifted version's devices saw, for the hook; recorded on the request."""
    assert context.field_data_dir is not None
    manifest = write_field_data(
        session=session,
        model=request.model,
        version=request.from_version,
        directory=context.field_data_dir,
    )
    request.detail = {
        **request.detail,
        "field_data": {
            "rows": manifest["rows"],
            "labelled_rows": manifest["labelled_rows"],
            "devices": len(manifest["devices"]),
        },
    }
    session.add(request)
    session.commit()


def _record_hook_run(
    session: Session, request: RetrainingRequest, name: str, output: str, exit_code: int | None
) -> None:
    request.detail = {
        **request.detail,
        "hook": name,
        "hook_exit_code": exit_code,
        "hook_output": output,
    }
    session.add(request)
    session.commit()


def run_request(
    *,
    session: Session,
    request_id: int,
    hooks: Mapping[str, RetrainHookSpec],
    register: RegisterFn,
    build: BuildFn,
    roll_out: RolloutFn,
    champion_holdout: Callable[[ModelVersion], Path | None] = lambda _m: None,
    scratch_dir: Path | None = None,
) -> RetrainingRequest:
    """Carry an approved request through hook, registration, gates, comparison, canary.

    The hook is the one the model's policy selects among ``hooks`` (the admin's);
    it runs in a fresh directory under ``scratch_dir`` (default: the system's temp
    directory, never the data directory), removed when the request is done with it.
    """
    claimed = session.exec(
        update(RetrainingRequest)
        .where(col(RetrainingRequest.id) == request_id, col(RetrainingRequest.state) == "approved")
        .values(state="running", updated_at=utcnow())
    )
    session.commit()
    request = get_request(session=session, request_id=request_id)
    if claimed.rowcount != 1:
        # Not approved, or another pass (or replica) claimed it first.
        raise InvalidRequestError(f"request {request_id} is {request.state}, not approved")
    policy = get_policy(session=session, model=request.model)
    if policy.hook is None:
        _finish(
            session,
            request,
            "failed",
            f"the policy of {request.model} selects no retraining hook "
            f"(edgefleet policy set {request.model} --hook NAME)",
        )
        return request
    spec = hooks.get(policy.hook)
    if spec is None:
        _finish(
            session,
            request,
            "failed",
            f"retraining hook {policy.hook!r} is not defined on this control plane",
        )
        return request
    champion = session.exec(
        select(ModelVersion).where(
            ModelVersion.name == request.model, ModelVersion.version == request.from_version
        )
    ).first()
    if champion is None:
        _finish(session, request, "failed", f"champion v{request.from_version} is not registered")
        return request

    request.new_version = next_version(
        session=session, model=request.model, from_version=request.from_version
    )
    request.updated_at = utcnow()
    session.add(request)
    session.commit()
    assert request.id is not None
    with tempfile.TemporaryDirectory(
        prefix="edgefleet-hook-", dir=scratch_dir, ignore_cleanup_errors=True
    ) as scratch:
        workspace = Path(scratch)
        context = RetrainContext(
            request_id=request.id,
            model=request.model,
            version=request.from_version,
            new_version=request.new_version,
            output_dir=workspace / "output",
            field_data_dir=workspace / "field-data",
        )
        _write_field_data(session, request, context)
        try:
            output = run_hook(spec, context, workspace=workspace, name=policy.hook)
        except HookError as e:
            _record_hook_run(session, request, policy.hook, e.output, e.exit_code)
            _finish(session, request, "failed", str(e))
            return request
        _record_hook_run(session, request, policy.hook, output.output, output.exit_code)
        if output.model_path is None or output.samples_path is None:
            _finish(session, request, "awaiting_model", "webhook called; waiting for the trainer")
            return request
        try:
            challenger_bytes = output.model_path.read_bytes()
            challenger = register(
                session,
                request.model,
                request.new_version,
                challenger_bytes,
                output.samples_path.read_bytes(),
            )
            profile = request.cohort or _cohort_of(session, champion)
            bundle = build(session, request.model, challenger.version, profile)
            comparison = _compare(
                champion,
                challenger_bytes,
                champion_holdout,
                output.holdout_path,
                policy.comparison_margin,
            )
        except (ControlPlaneError, OSError, ValueError, KeyError) as e:
            _finish(session, request, "failed", str(e))
            return request

    request.detail = {
        **request.detail,
        "comparison": comparison.describe(),
        "bundle_id": bundle.id,
        "champion_accuracy": comparison.champion_accuracy,
        "challenger_accuracy": comparison.challenger_accuracy,
    }
    if not comparison.challenger_wins:
        _finish(session, request, "rejected", comparison.describe())
        return request
    devices = [
        d.id
        for d in session.exec(
            select(Device).where(Device.profile == bundle.profile, Device.model == request.model)
        ).all()
    ]
    if not devices:
        _finish(session, request, "failed", f"no devices of {bundle.profile} run {request.model}")
        return request
    try:
        request.rollout_id = roll_out(session, bundle, devices, policy.canary_device_count)
    except ControlPlaneError as e:
        _finish(session, request, "failed", f"rollout: {e}")
        return request
    _finish(session, request, "rolled_out", f"{comparison.describe()}; canary rollout started")
    return request


def _cohort_of(session: Session, champion: ModelVersion) -> str:
    bundle = session.exec(
        select(Bundle)
        .where(Bundle.model == champion.name, Bundle.model_version == champion.version)
        .order_by(col(Bundle.release).desc())
    ).first()
    if bundle is None:
        raise InvalidRequestError(f"champion v{champion.version} was never built into a bundle")
    return bundle.profile


def _compare(
    champion: ModelVersion,
    challenger_bytes: bytes,
    champion_holdout: Callable[[ModelVersion], Path | None],
    challenger_holdout: Path | None,
    margin: float,
) -> Comparison:
    """Both models on one holdout: the champion's fixed one joined with the hook's, if any."""
    parts = [h for h in (_holdout(champion_holdout(champion)), _holdout(challenger_holdout)) if h]
    if not parts:
        raise InvalidRequestError("no holdout to compare champion and challenger on")
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return compare_models(
        champion=Path(champion.path).read_bytes(),
        challenger=challenger_bytes,
        holdout_x=x,
        holdout_y=y,
        margin=margin,
    )
