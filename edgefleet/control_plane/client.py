"""HTTP client for the control-plane API, used by the CLI and the demo.

An ``https://`` control plane is verified against ``ca_file`` (or the file named by
``EDGEFLEET_API_CA_FILE``, which is how the CLI is pointed at a private CA such as
the control plane's own), else against the system's trust store.
"""

from __future__ import annotations

import io
import os
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgefleet.control_plane.core.errors import ControlPlaneError
from edgefleet.states.build import FINISHED_BUILD_STATES

BUILD_POLL_S = 0.5


class ApiError(ControlPlaneError):
    """The API answered with an error; ``status`` is the HTTP code, ``detail`` its reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def find_token() -> str | None:
    """``EDGEFLEET_TOKEN``, else the admin token ``edgefleet up`` wrote in the data dir."""
    if token := os.environ.get("EDGEFLEET_TOKEN"):
        return token
    path = Path(os.environ.get("EDGEFLEET_DATA_DIR", ".edgefleet")) / "admin.token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def tls_verification(ca_file: Path | None = None) -> ssl.SSLContext | bool:
    """What httpx verifies the API's certificate with: ``ca_file``, the env's, or the system."""
    configured = os.environ.get("EDGEFLEET_API_CA_FILE")
    path = ca_file or (Path(configured) if configured else None)
    if path is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as e:
        raise ApiError(0, f"cannot use CA file {path}: {e}") from e


class ApiClient:
    """Thin typed wrapper over ``/api/v1``; every call raises ``ApiError`` on a 4xx/5xx."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        ca_file: Path | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        token = token or find_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api/v1",
            timeout=timeout,
            headers=headers,
            verify=tls_verification(ca_file),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ApiError(0, f"control plane at {self.base_url} unreachable: {e}") from e
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, str(detail))
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health"))

    def register_model(
        self,
        *,
        name: str,
        version: str,
        model: bytes,
        samples: np.ndarray | Mapping[str, np.ndarray] | bytes,
        holdout_x: np.ndarray | Mapping[str, np.ndarray] | None = None,
        holdout_y: np.ndarray | None = None,
        holdout: bytes | None = None,
        task: str | None = None,
        companion: bytes | None = None,
    ) -> dict[str, Any]:
        """Register a model with its samples, sent as given (never cast): an array for a
        one-input model, a dict keyed by input name, or the bytes of an ``.npy``/``.npz``.
        The holdout is ``holdout_x`` (array or dict) with ``holdout_y`` labels, or the
        bytes of a holdout file; ``task`` says what the outputs mean."""
        files = {
            "model": ("model.onnx", model, "application/octet-stream"),
            "samples": _array_file("samples", samples),
        }
        if companion is not None:  # the same model in the other format
            files["companion"] = ("companion.model", companion, "application/octet-stream")
        if holdout is not None:
            files["holdout"] = _array_file("holdout", holdout)
        elif holdout_x is not None:
            arrays = dict(holdout_x) if isinstance(holdout_x, Mapping) else {"x": holdout_x}
            if holdout_y is not None:
                arrays["labels" if isinstance(holdout_x, Mapping) else "y"] = holdout_y
            files["holdout"] = _array_file("holdout", arrays)
        form = {"name": name, "version": version}
        if task:
            form["task"] = task
        return dict(self._call("POST", "/models", data=form, files=files))

    def list_models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/models"))

    def start_build(
        self,
        *,
        model: str,
        version: str,
        profile: str,
        max_accuracy_drop: float | None = None,
        holdout_x: np.ndarray | None = None,
        holdout_y: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Queue a build on the control plane; the build job (follow it with ``wait_build``)."""
        body: dict[str, Any] = {"model": model, "version": version, "profile": profile}
        if max_accuracy_drop is not None:
            body["max_accuracy_drop"] = max_accuracy_drop
        if holdout_x is not None:
            body["holdout"] = {
                "x": np.asarray(holdout_x, dtype=np.float32).tolist(),
                "y": None if holdout_y is None else np.asarray(holdout_y).astype(int).tolist(),
            }
        return dict(self._call("POST", "/builds", json=body))

    def get_build(self, build_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/builds/{build_id}"))

    def list_builds(self, *, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._call("GET", "/builds", params={"limit": limit}))

    def wait_build(
        self,
        build_id: int,
        *,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = BUILD_POLL_S,
    ) -> dict[str, Any]:
        """Follow build ``build_id`` until it ends; the finished job (succeeded or failed).

        Each request is short, so a long build never runs into the client's timeout;
        ``on_update`` sees the job after every poll.
        """
        while True:
            job = self.get_build(build_id)
            if on_update is not None:
                on_update(job)
            if job["state"] in FINISHED_BUILD_STATES:
                return job
            time.sleep(poll_s)

    def build_bundle(
        self,
        *,
        model: str,
        version: str,
        profile: str,
        max_accuracy_drop: float | None = None,
        holdout_x: np.ndarray | None = None,
        holdout_y: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Build as a job and wait for it: the bundle, or ``ApiError`` with the build's error."""
        job = self.wait_build(
            self.start_build(
                model=model,
                version=version,
                profile=profile,
                max_accuracy_drop=max_accuracy_drop,
                holdout_x=holdout_x,
                holdout_y=holdout_y,
            )["id"]
        )
        if job["state"] != "succeeded":
            raise ApiError(job.get("error_status") or 500, job.get("error") or "build failed")
        return self.get_bundle(job["bundle_id"])

    def add_agent_release(
        self, *, version: str, profile: str, wheels: Sequence[Path]
    ) -> dict[str, Any]:
        """Sign ``wheels`` as agent release ``version`` for ``profile``: its bundle."""
        files = [
            ("wheels", (path.name, path.read_bytes(), "application/octet-stream"))
            for path in wheels
        ]
        form = {"version": version, "profile": profile}
        return dict(self._call("POST", "/agent-releases", data=form, files=files))

    def get_bundle(self, bundle_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/bundles/{bundle_id}"))

    def list_bundles(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/bundles"))

    def list_devices(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/devices"))

    def get_device(self, device_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/devices/{device_id}"))

    def create_rollout(
        self, *, bundle_id: str, device_ids: list[str] | None = None, **options: Any
    ) -> dict[str, Any]:
        """``options``: selector, strategy, waves, soak_seconds, gates, mode, start,
        install_timeout_s, wave_timeout_s, maintenance_window, atomic."""
        body: dict[str, Any] = {"bundle_id": bundle_id}
        if device_ids:
            body["device_ids"] = device_ids
        body.update({k: v for k, v in options.items() if v is not None})
        return dict(self._call("POST", "/rollouts", json=body))

    def act_on_rollout(
        self, rollout_id: int, action: str, *, reason: str | None = None
    ) -> dict[str, Any]:
        """``start | pause | resume | promote | retry | abort | rollback``."""
        body = {"reason": reason} if reason else None
        return dict(self._call("POST", f"/rollouts/{rollout_id}/{action}", json=body))

    def list_audit(
        self, *, rollout_id: int | None = None, action: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if rollout_id is not None:
            params["rollout_id"] = rollout_id
        if action:
            params["action"] = action
        return list(self._call("GET", "/audit", params=params))

    def list_events(
        self, *, kind: str | None = None, device_id: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        params.update({k: v for k, v in {"kind": kind, "device_id": device_id}.items() if v})
        return list(self._call("GET", "/events", params=params))

    def event_summary(self, *, kind: str = "inference") -> list[dict[str, Any]]:
        """Per device: stored ``kind`` events and the sum of their ``data.count``."""
        return list(self._call("GET", "/events/summary", params={"kind": kind}))

    def revoke_device(self, device_id: str) -> dict[str, Any]:
        """Revoke a device's broker credentials; ``device_id`` and ``revoked_at`` come back."""
        return dict(self._call("POST", f"/devices/{device_id}/revoke"))

    def device_logs(
        self, device_id: str, *, since_s: int, max_bytes: int | None = None, timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """The device's recent log (``lines``, ``truncated``, ``omitted``); HTTP 504 when it
        is offline or does not answer within ``timeout_s``."""
        params: dict[str, Any] = {"since": since_s, "timeout": timeout_s}
        if max_bytes is not None:
            params["max_bytes"] = max_bytes
        return dict(self._call("GET", f"/devices/{device_id}/logs", params=params))

    def create_enrolment_token(
        self, *, ttl_seconds: int = 3600, note: str | None = None
    ) -> dict[str, Any]:
        """A one-time enrolment token; its secret (``token``) is in this answer only."""
        body = {"ttl_seconds": ttl_seconds, "note": note}
        return dict(self._call("POST", "/enrolment/tokens", json=body))

    def set_device_labels(self, device_id: str, labels: dict[str, str]) -> dict[str, Any]:
        return dict(self._call("PUT", f"/devices/{device_id}/labels", json={"labels": labels}))

    def set_group(
        self, name: str, device_ids: list[str], description: str | None = None
    ) -> dict[str, Any]:
        body = {"device_ids": device_ids, "description": description}
        return dict(self._call("PUT", f"/groups/{name}", json=body))

    def set_group_window(self, name: str, window: dict[str, Any] | None) -> dict[str, Any]:
        """``PUT /groups/{name}/window``: ``{cron, duration_s, tz}``, or None to clear it."""
        body = {"maintenance_window": window}
        return dict(self._call("PUT", f"/groups/{name}/window", json=body))

    def list_groups(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/groups"))

    def get_config(self, scope_path: str) -> Any:
        """``GET /config/<scope_path>``: ``fleet``, ``groups/<name>``, ``devices[/<id>]``."""
        return self._call("GET", f"/config/{scope_path}")

    def change_config(
        self,
        scope_path: str,
        values: dict[str, Any],
        unset: list[str],
        reason: str | None = None,
    ) -> dict[str, Any]:
        """``PATCH /config/<scope_path>``: set ``values`` and unset ``unset`` in one version."""
        body = {"set": values, "unset": unset, "reason": reason}
        return dict(self._call("PATCH", f"/config/{scope_path}", json=body))

    def get_rollout(self, rollout_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/rollouts/{rollout_id}"))

    def list_rollouts(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/rollouts"))

    def drift_series(
        self, *, model: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"model": model, "version": version}.items() if v}
        return list(self._call("GET", "/drift/series", params=params))

    def drift_status(self, *, model: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/drift/status", params={"model": model} if model else {}))

    def list_retraining(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/retraining"))

    def decide_retraining(
        self, request_id: int, *, approve: bool, reason: str | None = None
    ) -> dict[str, Any]:
        """Approve or reject; the control plane records the caller's token as who decided."""
        action = "approve" if approve else "reject"
        body: dict[str, Any] = {}
        if reason and not approve:
            body["reason"] = reason
        return dict(self._call("POST", f"/retraining/{request_id}/{action}", json=body))

    def get_policy(self, model: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/policies/{model}"))

    def set_policy(self, model: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change only the policy fields in ``changes`` (``hook`` names an admin's hook)."""
        return dict(self._call("PATCH", f"/policies/{model}", json=changes))

    def list_hooks(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/hooks"))

    def request_retraining(
        self, *, model: str, version: str, reason: str | None = None
    ) -> dict[str, Any]:
        body = {"model": model, "version": version} | ({"reason": reason} if reason else {})
        return dict(self._call("POST", "/retraining", json=body))

    def list_keys(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/keys"))

    def rotate_key(self, role: str, keyid: str | None = None) -> dict[str, Any]:
        body = {"role": role} | ({"keyid": keyid} if keyid else {})
        return dict(self._call("POST", "/keys/rotate", json=body))

    def revoke_key(self, keyid: str) -> dict[str, Any]:
        return dict(self._call("POST", "/keys/revoke", json={"keyid": keyid}))

    def create_token(
        self, *, name: str, role: str, expires_in_s: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "role": role}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        return dict(self._call("POST", "/tokens", json=body))

    def list_tokens(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/tokens"))

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/tokens/{token_id}/revoke"))

    def trust_root(self) -> bytes:
        response = self._http.get("/trust/root")
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        return response.content

    def create_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        """An A/B experiment (``ExperimentCreate``'s fields); each arm goes out as a rollout."""
        return dict(self._call("POST", "/experiments", json=body))

    def get_experiment(self, experiment_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/experiments/{experiment_id}"))

    def list_experiments(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/experiments"))

    def stop_experiment(self, experiment_id: int, *, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else None
        return dict(self._call("POST", f"/experiments/{experiment_id}/stop", json=body))


def _array_file(
    stem: str, value: np.ndarray | Mapping[str, np.ndarray] | bytes
) -> tuple[str, bytes, str]:
    """A multipart file for arrays: ``.npy`` bytes for one array, ``.npz`` for a dict,
    file bytes as they are (named by their content)."""
    if isinstance(value, bytes):
        suffix = ".npz" if value.startswith(b"PK\x03\x04") else ".npy"
        return f"{stem}{suffix}", value, "application/octet-stream"
    buffer = io.BytesIO()
    if isinstance(value, Mapping):
        np.savez(buffer, **{k: np.asarray(v) for k, v in value.items()})  # type: ignore[arg-type]  # numpy stubs: kwargs
        return f"{stem}.npz", buffer.getvalue(), "application/octet-stream"
    np.save(buffer, np.asarray(value), allow_pickle=False)
    return f"{stem}.npy", buffer.getvalue(), "application/octet-stream"
