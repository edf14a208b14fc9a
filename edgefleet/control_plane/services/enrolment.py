"""Device enrolment and revocation: one-time tokens in, broker credentials out.

An operator issues a one-time token (stored as its SHA-256, with an expiry). A device
presents it with the id it chose; the control plane checks the id (``dev-`` + 8-32
lowercase letters/digits, so never a ``cp-`` name), consumes the token in the same
transaction that records the credential (a token can enrol exactly one device, even
under concurrent requests), returns a random password once, records the device in
the broker's auth files (what the broker starts with) and creates its client and role
in the running broker's dynamic-security plugin (``broker_security``).

Revocation marks the credential revoked, drops the device from the auth files and
deletes its client and role from the running broker, which closes its live
connection at once; its reconnects are refused (no such client: CONNACK 135), and
a session that were somehow still there could neither publish nor subscribe.

A revoked id stays revoked: it cannot enrol again (a new device takes a new id).

With the control plane's CA (``IssuingCa``, TLS broker) the device sends a CSR for a
key it made itself; the CA signs it with ``CN=<device id>`` and the response carries
the certificate and the CA instead of a password. The CSR is checked before the token
is spent. Revoking such a device also lists its certificates' serials in the CRL,
which the broker re-reads on SIGHUP, so its certificate no longer completes a
handshake.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from edgefleet import topics
from edgefleet.control_plane.broker.security import (
    BrokerAuthFiles,
    hash_password,
    install_crl,
    new_password,
    reload_broker,
    update_broker_device,
    write_auth_files,
)
from edgefleet.control_plane.core.errors import (
    BrokerError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from edgefleet.control_plane.core.tables import (
    DeviceCertificate,
    DeviceCredential,
    EnrolmentToken,
    EnrolmentTokenIssued,
    EnrolRequest,
    EnrolResponse,
    utcnow,
)
from edgefleet.control_plane.trust.pki import IssuingCa, cert_to_pem, load_csr, write_crl

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "efe_"


class EnrolmentRefusedError(InvalidRequestError):
    """The token is unknown, already used or expired (the API answers 403).

    One message for all three, so a caller probing tokens learns nothing; ``reason``
    is for the log.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("enrolment token is invalid, used or expired")
        self.reason = reason


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def create_token(
    *, session: Session, ttl_seconds: int, note: str | None = None
) -> EnrolmentTokenIssued:
    """A new one-time token valid for ``ttl_seconds``; the secret is returned once.

    Only the secret's SHA-256 is stored, so a lost secret cannot be shown again: issue
    another.

    Args:
        session: the caller's session; committed here.
        ttl_seconds: how long the token may be used, from now.
        note: what the operator says it is for.

    Returns:
        The token's id, its secret (``efe_``...) and its expiry.
    """
    secret = TOKEN_PREFIX + secrets.token_urlsafe(24)
    token = EnrolmentToken(
        token_sha256=_digest(secret),
        note=note,
        expires_at=utcnow() + timedelta(seconds=ttl_seconds),
    )
    session.add(token)
    session.commit()
    session.refresh(token)
    assert token.id is not None
    logger.info("enrolment token issued token_id=%d expires_at=%s", token.id, token.expires_at)
    return EnrolmentTokenIssued(id=token.id, token=secret, expires_at=token.expires_at)


def enrol_device(
    *,
    session: Session,
    files: BrokerAuthFiles,
    request: EnrolRequest,
    issuer: IssuingCa | None = None,
    now: datetime | None = None,
) -> EnrolResponse:
    """Check the token, id (and CSR), record the credential, update the broker.

    Once the token is spent the device gets its credential even when the running
    broker cannot be told of it (``update_broker_device`` failing is logged; the
    broker admits the device from its auth files at its next start).

    Args:
        session: the caller's session; committed here.
        files: the broker's auth files, rewritten from the database.
        request: the token, the device's chosen id, its profile and (with a CA) CSR.
        issuer: the control plane's CA when the broker authenticates devices by
            certificate; None when by password.
        now: the time the token's expiry is judged at (default: now; for tests).

    Returns:
        The device's broker username with its password (shown this once), or with
        ``issuer`` the signed client certificate and the CA certificate.

    Raises:
        EnrolmentRefusedError: the token is unknown, used or expired (also when
            another request spent it concurrently).
        InvalidRequestError: a malformed device id, a CSR missing or sent when not
            wanted, or a CSR that is invalid (``CsrError``).
        ConflictError: the id is already enrolled (or revoked).
    """
    now = now or utcnow()
    device_id = request.device_id
    if not topics.is_device_id(device_id):
        raise InvalidRequestError(
            f"device id must match {topics.DEVICE_ID_RE.pattern} (cp- names are reserved)"
        )
    if issuer is not None and request.csr is None:
        raise InvalidRequestError("this broker authenticates devices by certificate: send a CSR")
    if issuer is None and request.csr is not None:
        raise InvalidRequestError("this broker authenticates devices by password: omit the CSR")
    csr = load_csr(request.csr) if request.csr is not None else None
    token = session.exec(
        select(EnrolmentToken).where(EnrolmentToken.token_sha256 == _digest(request.token))
    ).first()
    if token is None:
        raise EnrolmentRefusedError("unknown token")
    if token.used_at is not None:
        logger.warning("enrolment token reused token_id=%s device_id=%s", token.id, device_id)
        raise EnrolmentRefusedError("token already used")
    if _aware(token.expires_at) <= now:
        raise EnrolmentRefusedError("token expired")
    if session.get(DeviceCredential, device_id) is not None:
        raise ConflictError(f"device {device_id} is already enrolled")

    # Consume the token only if nobody else did in the meantime: one row or none.
    consumed = session.execute(
        update(EnrolmentToken)
        .where(col(EnrolmentToken.id) == token.id, col(EnrolmentToken.used_at).is_(None))
        .values(used_at=now, used_by=device_id)
    )
    if consumed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise EnrolmentRefusedError("token consumed concurrently")
    password: str | None = None
    if issuer is not None and csr is not None:
        certificate = issuer.ca.sign_device_csr(csr, device_id)
        password_hash = ""
        session.add(
            DeviceCertificate(
                serial=f"{certificate.serial_number:x}",
                device_id=device_id,
                not_after=certificate.not_valid_after_utc,
            )
        )
        issued = EnrolResponse(
            device_id=device_id,
            username=device_id,
            certificate=cert_to_pem(certificate).decode(),
            ca_certificate=issuer.ca.certificate_pem.decode(),
        )
    else:
        password = new_password()
        password_hash = hash_password(password)
        issued = EnrolResponse(device_id=device_id, username=device_id, password=password)
    session.add(
        DeviceCredential(device_id=device_id, profile=request.profile, password_hash=password_hash)
    )
    try:
        session.commit()
    except IntegrityError as e:  # the same id enrolled concurrently with another token
        session.rollback()
        raise ConflictError(f"device {device_id} is already enrolled") from e
    try:
        apply_to_broker(session=session, files=files, issuer=issuer)
        update_broker_device(files, device_id, password=password)
    except BrokerError as e:
        # The token is spent and the credential recorded: the device must get it. The
        # broker admits the device once it is reachable and restarted from the record.
        logger.error("broker not updated for new device device_id=%s reason=%s", device_id, e)
    logger.info(
        "device enrolled device_id=%s profile=%s with=%s",
        device_id,
        request.profile,
        "certificate" if issuer else "password",
    )
    return issued


def revoke_device(
    *,
    session: Session,
    files: BrokerAuthFiles,
    device_id: str,
    issuer: IssuingCa | None = None,
) -> DeviceCredential:
    """Revoke ``device_id``'s credential and certificates; the broker drops its live session.

    Revoking again is harmless: the first revocation time stays, and the broker is
    told again (a retry after a ``BrokerError``).

    Args:
        session: the caller's session; committed here.
        files: the broker's auth files, rewritten from the database.
        device_id: the device to revoke.
        issuer: the control plane's CA, whose CRL then lists the device's
            certificates; None for a password broker.

    Returns:
        The credential as committed, ``revoked_at`` set.

    Raises:
        NotFoundError: the device was never enrolled.
        BrokerError: the running broker could not be told (reload not permitted, or
            its dynamic-security plugin refused or did not answer); the revocation
            is recorded, and the broker applies it at its next start.
    """
    credential = session.get(DeviceCredential, device_id)
    if credential is None:
        raise NotFoundError(f"device {device_id} is not enrolled")
    if credential.revoked_at is None:
        credential.revoked_at = utcnow()
        session.add(credential)
    certificates = session.exec(
        select(DeviceCertificate).where(DeviceCertificate.device_id == device_id)
    ).all()
    for certificate in certificates:
        if certificate.revoked_at is None:
            certificate.revoked_at = credential.revoked_at
            session.add(certificate)
    session.commit()
    session.refresh(credential)
    # The CRL first (and the SIGHUP that re-reads it), then the client: once the
    # broker has closed the live session, a reconnect already meets the new CRL.
    apply_to_broker(session=session, files=files, issuer=issuer)
    update_broker_device(files, device_id, revoked=True)
    logger.warning("device revoked device_id=%s", device_id)
    return credential


def apply_to_broker(
    *, session: Session, files: BrokerAuthFiles, issuer: IssuingCa | None = None
) -> bool:
    """Write the broker's device record (and the CRL) from the database; with a CA,
    SIGHUP the broker so it re-reads the CRL.

    The record is what the broker's dynamic-security configuration is rendered from
    when it starts; a running broker is changed by ``update_broker_device``.

    Returns:
        True when a broker was signalled; False without a CA, or when no broker
        runs from a pid file here (one managed elsewhere must be reloaded by hand).

    Raises:
        BrokerError: the broker's pid could not be signalled (permission).
    """
    rows = session.exec(select(DeviceCredential)).all()
    write_auth_files(
        files,
        devices={r.device_id: r.password_hash if issuer is None else "" for r in rows},
        revoked=[r.device_id for r in rows if r.revoked_at is not None],
    )
    if issuer is None:
        return False
    revoked_certificates = session.exec(
        select(DeviceCertificate).where(col(DeviceCertificate.revoked_at).is_not(None))
    ).all()
    write_crl(
        issuer.files,
        issuer.ca,
        revoked=[(int(c.serial, 16), c.revoked_at) for c in revoked_certificates if c.revoked_at],
    )
    install_crl(files, issuer.files.crl)
    return reload_broker(files)


class RateLimiter:
    """A token bucket per key (the client address): ``burst`` at once, then ``rate``/s.

    In memory, so per process: behind several replicas each enforces its own
    bucket; a shared limiter belongs in the reverse proxy.
    """

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            if len(self._buckets) >= self._max_keys and key not in self._buckets:
                self._forget_full_buckets(now)
            self._buckets[key] = (tokens, now)
        return allowed

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` has a token again."""
        with self._lock:
            tokens, _last = self._buckets.get(key, (self._burst, 0.0))
        return max(0.0, (1.0 - tokens) / self._rate)

    def _forget_full_buckets(self, now: float) -> None:
        # A bucket that has refilled completely carries no information.
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self._rate >= self._burst:
                del self._buckets[key]
