"""The control plane's certificate authority: TLS for MQTT (and, optionally, the API).

One ECDSA P-256 CA, built with ``cryptography``, issues

* the broker's (or the API's) server certificate, with a SAN per host name and IP;
* each device's client certificate, from the CSR the device made with a key that never
  left it. The subject is set here, never copied from the CSR: ``CN=<device id>``, and
  the id must match ``^dev-[a-z0-9]{8,32}$``, so no device can hold a ``cp-`` name;
* the control plane's own MQTT client certificate (``CN=cp-...``), key made here;
* the CRL listing revoked serials, which the broker checks on every TLS handshake.

Mosquitto's ``use_identity_as_username`` makes the certificate's CN the MQTT username,
so the ACL's ``%u`` patterns confine a certificate to its own device's topics.

P-256 because every TLS stack a device may carry (OpenSSL 1.1 and 3, mbedTLS, wolfSSL)
takes it for client certificates in TLS 1.2 and 1.3; Ed25519 certificates are not
usable with TLS 1.2 in many of them.

Files in the PKI directory (``PkiFiles``): ``ca.key`` (PKCS#8, encrypted with the
repository passphrase when one is set, like the TUF keys in
``edgefleet.control_plane.trust.keyring``;
mode 0600), ``ca.crt``, ``crl.pem``, ``server.crt`` / ``server.key`` and
``<cp-name>.crt`` / ``<cp-name>.key``. Every write is atomic. Issuing and revoking are
pure functions of the CA and their inputs; which serials are revoked is recorded by
the caller (the database), and ``write_crl`` turns that list into the file.

Why this module stays over 400 lines: ``CertificateAuthority`` and the helpers that
write its files share one set of conventions (the subject names, lifetimes, key
types and the ``PkiFiles`` layout) that must agree for the broker and devices to
accept what it issues; it is the whole certificate authority.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet import topics
from edgefleet.control_plane.core.errors import ControlPlaneError, InvalidRequestError
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

CA_DAYS = 10 * 365
SERVER_DAYS = 825  # what browsers and most TLS stacks still accept for a leaf
CLIENT_DAYS = 825
# OpenSSL refuses every client certificate once the CRL is past its next update. The
# broker reads the CRL from a local file that only the control plane writes, so there
# is no stale copy to guard against: the CRL is good for as long as the CA.
CRL_DAYS = CA_DAYS
CLOCK_SKEW = timedelta(minutes=5)  # certificates and CRLs are valid a little in the past
CSR_MAX_BYTES = 8192
CONTROL_NAME_RE = re.compile(r"^cp-[A-Za-z0-9_-]{1,60}$")
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class PkiError(ControlPlaneError):
    """The CA cannot be loaded or used (missing files, wrong passphrase, bad key)."""


class CsrError(InvalidRequestError):
    """A device's certificate signing request is malformed, unsigned or uses a refused key."""


@dataclass(frozen=True)
class PkiFiles:
    """Where the CA and the certificates it issued for this machine live."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def client_cert(self, name: str) -> Path:
        return self.directory / f"{_control_name(name)}.crt"

    def client_key(self, name: str) -> Path:
        return self.directory / f"{_control_name(name)}.key"


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey, *, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when ``passphrase`` is given."""
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)


def cert_to_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.PEM)


def _control_name(name: str) -> str:
    if not CONTROL_NAME_RE.fullmatch(name):
        raise ValueError(f"control-plane identities must be cp- names, got {name!r}")
    return name


def _now() -> datetime:
    return datetime.now(UTC)


def parse_hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for ``hosts``: an ``IPAddress`` for each IP, a ``DNSName`` otherwise."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts if h.strip()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if not names:
        raise ValueError("a server certificate needs at least one host name or IP")
    return names


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse and check a CSR: PEM, self-signed correctly, with a P-256 or P-384 key.

    The signature proves the sender holds the private key; the key type is restricted
    to curves every TLS stack in the fleet verifies. Raises ``CsrError``.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    if len(data) > CSR_MAX_BYTES:
        raise CsrError(f"CSR larger than {CSR_MAX_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(data)
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm, InvalidSignature) as e:
        raise CsrError(f"not a valid PEM certificate signing request: {e}") from e
    if not valid:
        raise CsrError("CSR signature does not verify")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, _ACCEPTED_CURVES
    ):
        raise CsrError("CSR key must be ECDSA P-256 or P-384")
    return csr


class CertificateAuthority:
    """The CA's certificate and private key, held in memory while issuing."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self._key = key

    # -- creation and storage ----------------------------------------------------

    @classmethod
    def generate(
        cls, *, common_name: str = "edgefleet CA", days: int = CA_DAYS
    ) -> CertificateAuthority:
        """A new self-signed CA (in memory; ``save`` writes it)."""
        key = generate_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    def save(self, files: PkiFiles, *, passphrase: bytes | None = None) -> None:
        """Write ``ca.key`` (0600, encrypted with ``passphrase``) and ``ca.crt``."""
        files.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(files.ca_key, key_to_pem(self._key, passphrase=passphrase), mode=0o600)
        atomic_write(files.ca_cert, cert_to_pem(self.certificate))

    @classmethod
    def load(cls, files: PkiFiles, *, passphrase: bytes | None = None) -> CertificateAuthority:
        """Read the CA from ``files``; ``PkiError`` when absent or the passphrase is wrong."""
        try:
            certificate = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
            key_pem = files.ca_key.read_bytes()
        except FileNotFoundError as e:
            raise PkiError(f"no CA in {files.directory}: {e.filename} is missing") from e
        except ValueError as e:
            raise PkiError(f"{files.ca_cert} is not a PEM certificate") from e
        try:
            key = load_pem_private_key(key_pem, password=passphrase)
        except (ValueError, TypeError) as e:
            raise PkiError(f"cannot open {files.ca_key}: wrong or missing passphrase") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{files.ca_key} does not hold an ECDSA key")
        if key.public_key() != certificate.public_key():
            raise PkiError(f"{files.ca_key} does not belong to {files.ca_cert}")
        return cls(certificate, key)

    @classmethod
    def load_or_create(
        cls, files: PkiFiles, *, passphrase: bytes | None = None
    ) -> CertificateAuthority:
        """The CA in ``files``, created (with an empty CRL) on first use."""
        if files.ca_key.exists() or files.ca_cert.exists():
            return cls.load(files, passphrase=passphrase)
        ca = cls.generate()
        ca.save(files, passphrase=passphrase)
        write_crl(files, ca, revoked=())
        logger.info("certificate authority created directory=%s", files.directory)
        return ca

    @property
    def certificate_pem(self) -> bytes:
        return cert_to_pem(self.certificate)

    # -- issuing -------------------------------------------------------------------

    def _leaf(
        self,
        *,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        usage: x509.ObjectIdentifier,
        days: int,
        sans: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + timedelta(days=days), self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def issue_server_certificate(
        self, hosts: Sequence[str], *, days: int = SERVER_DAYS
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A server certificate (and its new key) valid for every name and IP in ``hosts``."""
        sans = parse_hosts(hosts)
        key = generate_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(sans[0].value))])
        certificate = self._leaf(
            subject=subject,
            public_key=key.public_key(),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            days=days,
            sans=sans,
        )
        return certificate, key

    def sign_device_csr(
        self,
        csr: x509.CertificateSigningRequest | str | bytes,
        device_id: str,
        *,
        days: int = CLIENT_DAYS,
    ) -> x509.Certificate:
        """A client certificate with ``CN=device_id`` for the key in ``csr``.

        The CSR's own subject and extensions are ignored: the CA decides what the
        certificate says. ``device_id`` must be a device id (``dev-...``), so the CN
        can never be a control-plane name.
        """
        if not topics.is_device_id(device_id):
            raise ValueError(
                f"not a device id: {device_id!r} (must match {topics.DEVICE_ID_RE.pattern})"
            )
        request = csr if isinstance(csr, x509.CertificateSigningRequest) else load_csr(csr)
        public_key = request.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CsrError("CSR key must be ECDSA P-256 or P-384")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
        return self._leaf(
            subject=subject,
            public_key=public_key,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            days=days,
        )

    def issue_control_certificate(
        self, name: str, *, days: int = CLIENT_DAYS
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The control plane's own MQTT client certificate (``CN=cp-...``) and its new key."""
        key = generate_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _control_name(name))])
        certificate = self._leaf(
            subject=subject,
            public_key=key.public_key(),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            days=days,
        )
        return certificate, key

    def build_crl(
        self, revoked: Iterable[tuple[int, datetime]], *, days: int = CRL_DAYS
    ) -> x509.CertificateRevocationList:
        """A CRL listing ``(serial, revoked_at)`` pairs, valid for ``days``."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - CLOCK_SKEW)
            .next_update(now + timedelta(days=days))
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        for serial, revoked_at in sorted(set(revoked)):
            when = revoked_at if revoked_at.tzinfo else revoked_at.replace(tzinfo=UTC)
            entry = (
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self._key, hashes.SHA256())


@dataclass(frozen=True)
class IssuingCa:
    """The CA loaded for issuing, and the directory its CRL is written to."""

    files: PkiFiles
    ca: CertificateAuthority

    @classmethod
    def load(cls, directory: Path, *, passphrase: bytes | None = None) -> IssuingCa:
        files = PkiFiles(Path(directory))
        return cls(files, CertificateAuthority.load(files, passphrase=passphrase))


# -- files on this machine -------------------------------------------------------------


def write_crl(
    files: PkiFiles, ca: CertificateAuthority, *, revoked: Iterable[tuple[int, datetime]]
) -> None:
    """Rewrite ``crl.pem`` with exactly the ``revoked`` serials (readable by the broker)."""
    crl = ca.build_crl(revoked)
    atomic_write(files.crl, crl.public_bytes(Encoding.PEM), mode=0o644)
    logger.info("crl written revoked=%d", len(list(crl)))


def read_revoked(files: PkiFiles) -> list[tuple[int, datetime]]:
    """The ``(serial, revoked_at)`` pairs in the current CRL (none if it is missing)."""
    try:
        crl = x509.load_pem_x509_crl(files.crl.read_bytes())
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise PkiError(f"{files.crl} is not a PEM CRL") from e
    return [(entry.serial_number, entry.revocation_date_utc) for entry in crl]


def write_server_files(
    files: PkiFiles, ca: CertificateAuthority, hosts: Sequence[str], *, days: int = SERVER_DAYS
) -> tuple[Path, Path]:
    """Issue a server certificate for ``hosts`` into ``server.crt`` / ``server.key``."""
    certificate, key = ca.issue_server_certificate(hosts, days=days)
    atomic_write(files.server_key, key_to_pem(key), mode=0o600)
    atomic_write(files.server_cert, cert_to_pem(certificate))
    logger.info("server certificate issued hosts=%s", ",".join(hosts))
    return files.server_cert, files.server_key


def ensure_server_files(
    files: PkiFiles, ca: CertificateAuthority, hosts: Sequence[str]
) -> tuple[Path, Path]:
    """``server.crt`` / ``server.key`` for ``hosts``, issued again only when not current."""
    if not certificate_is_current(files.server_cert, ca, hosts=hosts):
        write_server_files(files, ca, hosts)
    return files.server_cert, files.server_key


def write_control_files(
    files: PkiFiles, ca: CertificateAuthority, name: str, *, days: int = CLIENT_DAYS
) -> tuple[Path, Path]:
    """Issue the control plane's client certificate ``name`` into ``<name>.crt`` / ``.key``."""
    certificate, key = ca.issue_control_certificate(name, days=days)
    atomic_write(files.client_key(name), key_to_pem(key), mode=0o600)
    atomic_write(files.client_cert(name), cert_to_pem(certificate))
    logger.info("control-plane client certificate issued name=%s", name)
    return files.client_cert(name), files.client_key(name)


def certificate_is_current(
    path: Path, ca: CertificateAuthority, *, hosts: Sequence[str] = (), margin_days: int = 30
) -> bool:
    """True when ``path`` holds a certificate from ``ca``, good for ``margin_days`` more,
    naming every one of ``hosts``: otherwise it is time to issue a new one."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        certificate.verify_directly_issued_by(ca.certificate)
    except (FileNotFoundError, ValueError, TypeError, InvalidSignature):
        return False
    if certificate.not_valid_after_utc < _now() + timedelta(days=margin_days):
        return False
    if not hosts:
        return True
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(name in list(san) for name in parse_hosts(hosts))
