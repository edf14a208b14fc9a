"""Device side of enrolment: trade a one-time token for broker credentials.

``edgefleet-agent enrol --config agent.toml --api URL --token T`` sends the device id
and profile from the config with the token to the control plane. What comes back
depends on the broker:

* a password broker: the username and password are written to
  ``<data_dir>/credentials.json`` (mode 0600, atomically);
* a TLS broker that authenticates devices by certificate (the config has
  ``[tls] cert_file`` and ``key_file``): the device makes its P-256 private key here,
  at ``key_file`` (mode 0600; an existing key is reused), and sends only a CSR. The
  certificate it gets back must name this device, hold this key and chain to the CA
  in the answer; it is written to ``cert_file``, and the CA to ``ca_file`` when that
  file does not exist yet.

The daemon reads these files at start-up (``edgefleet.agent.enrolment.credentials``, which does not
import ``cryptography``) and connects with them. Uses the standard
library's HTTP client and ``cryptography`` so the agent stays free of extra
dependencies. An ``https://`` control plane is verified with ``ca_file`` (the
``--ca-file`` option), else the config's ``[tls] ca_file`` if it exists, else the
system's trust store.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.agent.config import AgentConfig, TlsConfig
from edgefleet.agent.enrolment.credentials import Credentials, credentials_path
from edgefleet.agent.errors import AgentError
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

TIMEOUT_S = 30.0


class EnrolmentError(AgentError):
    """The control plane refused the enrolment, or could not be reached."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"enrolment failed ({status}): {reason}" if status else reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class CertificateCredentials:
    """The device's client certificate and the private key that never left it."""

    username: str
    cert_file: Path
    key_file: Path


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The device's P-256 key at ``path``, made here (mode 0600) if there is none yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(path, pem, mode=0o600)
        logger.info("device key generated path=%s", path)
        return key
    except OSError as e:
        raise EnrolmentError(f"cannot read the device key {path}: {e}") from e
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise EnrolmentError(f"{path} is not an unencrypted PEM private key") from e
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise EnrolmentError(f"{path} does not hold an ECDSA key")
    return loaded


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> str:
    """A PEM CSR for ``key``; the CA decides the certificate's subject, this only asks."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def api_ssl_context(config: AgentConfig, ca_file: Path | None) -> ssl.SSLContext:
    """How an ``https://`` control plane is verified: ``ca_file``, [tls] ca_file, system."""
    configured = config.tls.ca_file if config.tls is not None else None
    if ca_file is None and configured is not None and configured.exists():
        ca_file = configured
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as e:
        raise EnrolmentError(f"cannot use CA file {ca_file}: {e}") from e


def enrol(
    config: AgentConfig, *, api_url: str, token: str, ca_file: Path | None = None
) -> Credentials | CertificateCredentials:
    """Enrol ``config.device_id`` with ``token`` and save the credentials it is given."""
    body: dict[str, Any] = {
        "token": token,
        "device_id": config.device_id,
        "profile": config.profile,
    }
    tls = config.tls if config.tls is not None and config.tls.client_certificate else None
    key = None
    if tls is not None:
        assert tls.key_file is not None
        key = load_or_create_key(tls.key_file)
        body["csr"] = make_csr(key, config.device_id)
    answer = _post(config, api_url, body, ca_file)
    if answer.get("username") != config.device_id:
        raise EnrolmentError(f"control plane issued credentials for {answer.get('username')!r}")
    if tls is not None and key is not None:
        return _save_certificate(config, tls, key, answer)
    if not answer.get("password"):
        raise EnrolmentError("control plane issued no password (does it expect a CSR? see [tls])")
    credentials = Credentials(username=answer["username"], password=answer["password"])
    payload = {"username": credentials.username, "password": credentials.password}
    atomic_write(credentials_path(config.data_dir), json.dumps(payload).encode(), mode=0o600)
    logger.info("device enrolled device_id=%s", config.device_id)
    return credentials


def _post(
    config: AgentConfig, api_url: str, body: dict[str, Any], ca_file: Path | None
) -> dict[str, Any]:
    request = urllib.request.Request(
        api_url.rstrip("/") + "/api/v1/enrol",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    context = api_ssl_context(config, ca_file) if api_url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise EnrolmentError(_detail(e), status=e.code) from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise EnrolmentError(f"cannot reach {api_url}: {e}") from e
    if not isinstance(answer, dict):
        raise EnrolmentError("control plane answered with something other than an object")
    return answer


def _save_certificate(
    config: AgentConfig,
    tls: TlsConfig,
    key: ec.EllipticCurvePrivateKey,
    answer: dict[str, Any],
) -> CertificateCredentials:
    """Check the issued certificate against this device and its CA, then save both."""
    assert tls.cert_file is not None and tls.key_file is not None
    try:
        certificate = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        ca = x509.load_pem_x509_certificate(str(answer["ca_certificate"]).encode())
    except (KeyError, ValueError) as e:
        raise EnrolmentError(f"control plane sent no usable certificate: {e}") from e
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [config.device_id]:
        raise EnrolmentError(f"certificate names {certificate.subject.rfc4514_string()!r}")
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or (
        public.public_numbers() != key.public_key().public_numbers()
    ):
        raise EnrolmentError("certificate is not for this device's key")
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise EnrolmentError("certificate is not signed by the CA sent with it") from e
    atomic_write(tls.cert_file, certificate.public_bytes(serialization.Encoding.PEM))
    if tls.ca_file is not None and not tls.ca_file.exists():
        atomic_write(tls.ca_file, ca.public_bytes(serialization.Encoding.PEM))
    logger.info(
        "device enrolled with a certificate device_id=%s serial=%x not_after=%s",
        config.device_id,
        certificate.serial_number,
        certificate.not_valid_after_utc.isoformat(),
    )
    return CertificateCredentials(config.device_id, tls.cert_file, tls.key_file)


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read()).get("detail", error.reason))
    except (ValueError, AttributeError, OSError):
        return str(error.reason)
