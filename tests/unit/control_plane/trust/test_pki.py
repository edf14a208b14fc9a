"""The control plane's CA and the TLS broker config it feeds, checked without a broker."""

from __future__ import annotations

import ipaddress
import json
import shutil
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.agent.enrolment.enrol import load_or_create_key, make_csr
from edgefleet.control_plane.broker.mosquitto import prepare_tls, render_config
from edgefleet.control_plane.broker.security import (
    CONTROL_ROLE,
    BrokerAuthFiles,
    add_control_identity,
    render_dynsec_config,
    write_auth_files,
)
from edgefleet.control_plane.trust.pki import (
    CertificateAuthority,
    CsrError,
    PkiError,
    PkiFiles,
    cert_to_pem,
    certificate_is_current,
    load_csr,
    read_revoked,
    write_crl,
)

DEVICE = "dev-abcdef0123"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


def _csr(subject: str = DEVICE, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _usage(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_key_is_encrypted_at_rest_and_private(tmp_path: Path) -> None:
    files = PkiFiles(tmp_path / "pki")
    created = CertificateAuthority.load_or_create(files, passphrase=b"s3cret")
    pem = files.ca_key.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o600
    loaded = CertificateAuthority.load(files, passphrase=b"s3cret")
    assert loaded.certificate == created.certificate
    with pytest.raises(PkiError, match="passphrase"):
        CertificateAuthority.load(files, passphrase=b"wrong")
    with pytest.raises(PkiError, match="passphrase"):
        CertificateAuthority.load(files)
    assert read_revoked(files) == []  # created with an empty CRL
    constraints = created.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca and constraints.critical


def test_device_certificate_names_the_device_whatever_the_csr_asks(
    ca: CertificateAuthority,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = ca.sign_device_csr(_csr("cp-controlplane", key), DEVICE)
    assert certificate.subject.rfc4514_string() == f"CN={DEVICE}"
    assert certificate.public_key() == key.public_key()
    assert _usage(certificate) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate.verify_directly_issued_by(ca.certificate)
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(
    "device_id", ["cp-controlplane", "dev-short", "dev-UPPERCASE1", "dev-abc/def#12", "+"]
)
def test_only_device_ids_are_certified(ca: CertificateAuthority, device_id: str) -> None:
    with pytest.raises(ValueError, match="not a device id"):
        ca.sign_device_csr(_csr(device_id), device_id)


def test_malformed_forged_and_weak_csrs_are_refused() -> None:
    with pytest.raises(CsrError, match="not a valid PEM"):
        load_csr("-----BEGIN CERTIFICATE REQUEST-----\nnonsense\n-----END CERTIFICATE REQUEST-----")
    # A CSR whose signature does not match its key proves no possession of the key.
    genuine = x509.load_pem_x509_csr(_csr().encode())
    der = bytearray(genuine.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrError, match="signature"):
        load_csr(forged)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE)])
    rsa_csr = (
        x509.CertificateSigningRequestBuilder().subject_name(name).sign(rsa_key, hashes.SHA256())
    )
    with pytest.raises(CsrError, match="P-256"):
        load_csr(rsa_csr.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CsrError, match="larger"):
        load_csr("x" * 9000)


def test_server_certificate_names_every_host_and_ip(ca: CertificateAuthority) -> None:
    certificate, _key = ca.issue_server_certificate(["broker.example", "10.0.0.7", "127.0.0.1"])
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    assert _usage(certificate) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_control_plane_certificate_is_a_cp_client(ca: CertificateAuthority) -> None:
    certificate, _key = ca.issue_control_certificate("cp-main01")
    assert certificate.subject.rfc4514_string() == "CN=cp-main01"
    assert _usage(certificate) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(ValueError, match="cp- names"):
        ca.issue_control_certificate(DEVICE)


def test_crl_lists_exactly_the_revoked_serials_signed_by_the_ca(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    files = PkiFiles(tmp_path)
    first = ca.sign_device_csr(_csr(), DEVICE)
    second = ca.sign_device_csr(_csr(), "dev-other00001")
    when = datetime(2026, 1, 2, tzinfo=UTC)
    write_crl(files, ca, revoked=[(first.serial_number, when)])
    crl = x509.load_pem_x509_crl(files.crl.read_bytes())
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(second.serial_number) is None
    assert read_revoked(files) == [(first.serial_number, when)]
    assert crl.next_update_utc is not None and crl.next_update_utc > datetime.now(UTC)


def test_openssl_accepts_issued_certificates_until_the_crl_revokes_them(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    """The same check Mosquitto's OpenSSL makes: chain to the CA, then the CRL."""
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("openssl is not installed")
    files = PkiFiles(tmp_path)
    (tmp_path / "ca.crt").write_bytes(ca.certificate_pem)
    certificate = ca.sign_device_csr(_csr(), DEVICE)
    (tmp_path / "dev.crt").write_bytes(cert_to_pem(certificate))

    def verify() -> subprocess.CompletedProcess[str]:
        command = [binary, "verify", "-crl_check", "-CAfile", str(tmp_path / "ca.crt")]
        command += ["-CRLfile", str(files.crl), "-purpose", "sslclient", str(tmp_path / "dev.crt")]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    write_crl(files, ca, revoked=[])
    assert verify().returncode == 0, verify().stderr
    write_crl(files, ca, revoked=[(certificate.serial_number, datetime.now(UTC))])
    refused = verify()
    assert refused.returncode != 0 and "revoked" in (refused.stdout + refused.stderr)


def test_prepare_tls_issues_once_and_reissues_for_a_new_host(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    pki, files = PkiFiles(tmp_path / "pki"), BrokerAuthFiles(tmp_path / "auth")
    ca.save(pki)
    listener = prepare_tls(pki, ca, files, hosts=["127.0.0.1"], control_name="cp-main01")
    # The broker reads its own copies (0600, in its auth directory), never the PKI's.
    assert listener.crl_file == files.crl_file and pki.crl.exists()
    assert listener.key_file.read_bytes() == pki.server_key.read_bytes()
    assert stat.S_IMODE(listener.key_file.stat().st_mode) == 0o600
    server = pki.server_cert.read_bytes()
    prepare_tls(pki, ca, files, hosts=["127.0.0.1"], control_name="cp-main01")
    assert pki.server_cert.read_bytes() == server  # still current: kept
    prepare_tls(pki, ca, files, hosts=["127.0.0.1", "edge.example"], control_name="cp-main01")
    assert pki.server_cert.read_bytes() != server
    assert certificate_is_current(pki.server_cert, ca, hosts=["edge.example"])
    assert not certificate_is_current(pki.server_cert, CertificateAuthority.generate())
    assert certificate_is_current(pki.client_cert("cp-main01"), ca)
    assert stat.S_IMODE(pki.client_key("cp-main01").stat().st_mode) == 0o600


def test_tls_config_requires_client_certificates_and_keeps_the_acl(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    pki, files = PkiFiles(tmp_path / "pki"), BrokerAuthFiles(tmp_path / "auth")
    ca.save(pki)
    listener = prepare_tls(pki, ca, files, hosts=["127.0.0.1"], control_name="cp-main01")
    lines = render_config(
        port=8883, data_dir=tmp_path, security=files, tls=listener, admin_port=9001
    ).splitlines()
    tls_block = [
        "listener 8883 127.0.0.1",
        f"cafile {listener.ca_file}",
        f"certfile {listener.cert_file}",
        f"keyfile {listener.key_file}",
        f"crlfile {listener.crl_file}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
    ]
    # Listener options bind to the listener above them: the block stays together.
    start = lines.index(tls_block[0])
    assert lines[start : start + len(tls_block)] == tls_block
    for line in (
        "allow_anonymous false",
        f"plugin_opt_config_file {tmp_path / 'dynamic-security.json'}",
        "listener 9001 127.0.0.1",
        "max_packet_size 1048576",
    ):
        assert line in lines
    assert lines.index("listener 9001 127.0.0.1") > start + len(tls_block) - 1
    with pytest.raises(ValueError, match="ACL"):
        render_config(port=8883, data_dir=tmp_path, tls=listener)


def test_cert_identities_get_control_rights_without_a_password(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    add_control_identity(files, "cp-main01")
    write_auth_files(files, devices={}, revoked=["dev-gone00001"])
    config = json.loads(render_dynsec_config(files))
    (client,) = config["clients"]
    assert client == {"username": "cp-main01", "roles": [{"rolename": CONTROL_ROLE}]}
    with pytest.raises(ValueError, match="cp- names"):
        add_control_identity(files, DEVICE)


def test_device_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "tls" / "device.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert isinstance(key.curve, ec.SECP256R1)
    again = load_or_create_key(path)
    assert again.private_numbers() == key.private_numbers()
    csr = load_csr(make_csr(key, DEVICE))
    assert csr.public_key() == key.public_key()
