"""TLS settings on both sides: mqtts URLs, the agent's [tls] section, the control plane's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefleet.agent.config import parse_config
from edgefleet.agent.errors import ConfigError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.errors import TransportError
from edgefleet.mqtt import BrokerAddress, MqttLink, TlsOptions

BASE = """
device_id = "dev-abc12345"
profile = "x86-64-gateway-onnx"
data_dir = "/var/lib/edgefleet-agent"
trust_root = "/etc/edgefleet/root.json"
"""


def test_mqtts_urls_mean_tls_on_8883_by_default() -> None:
    assert BrokerAddress.parse("mqtts://broker.example") == BrokerAddress(
        "broker.example", 8883, tls=True
    )
    address = BrokerAddress.parse("mqtts://cp-a:pw@10.0.0.5:9883")
    assert (address.port, address.tls, address.username) == (9883, True, "cp-a")
    assert address.url() == "mqtts://10.0.0.5:9883"  # no password in what is logged
    assert not BrokerAddress.parse("mqtt://10.0.0.5").tls


def test_tls_options_refuse_half_a_client_certificate_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        TlsOptions(cert_file=tmp_path / "c.pem")
    with pytest.raises(TransportError, match="cannot set up TLS"):
        TlsOptions(ca_file=tmp_path / "missing.pem").context()
    with pytest.raises(ValueError, match="mqtts://"):
        MqttLink(client_id="dev-abc12345", broker=BrokerAddress("h"), tls=TlsOptions())


def test_agent_tls_section_loads_and_feeds_the_link() -> None:
    config = parse_config(
        BASE + 'broker = "mqtts://broker.example:8883"\n'
        '[tls]\nca_file = "/etc/edgefleet/ca.crt"\n'
        'cert_file = "/var/lib/edgefleet-agent/tls/device.crt"\n'
        'key_file = "/var/lib/edgefleet-agent/tls/device.key"\n'
    )
    assert config.tls is not None and config.tls.client_certificate
    options = config.tls_options
    assert options == TlsOptions(
        Path("/etc/edgefleet/ca.crt"),
        Path("/var/lib/edgefleet-agent/tls/device.crt"),
        Path("/var/lib/edgefleet-agent/tls/device.key"),
    )
    # An mqtts broker without a [tls] section is verified by the system's trust store.
    plain = parse_config(BASE + 'broker = "mqtts://broker.example"\n')
    assert plain.tls_options == TlsOptions()
    assert parse_config(BASE).tls_options is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('broker = "mqtt://127.0.0.1:1883"\n[tls]\nca_file = "/ca.crt"\n', "mqtts://"),
        ('broker = "mqtts://h"\n[tls]\ncert_file = "/c.crt"\n', "go together"),
        ('broker = "mqtts://h"\n[tls]\ncert_file = "/c"\nkey_file = "/c"\n', "different"),
        ('broker = "mqtts://h"\n[tls]\ncafile = "/ca.crt"\n', r"tls\.cafile: .*unknown field"),
    ],
)
def test_agent_tls_section_mistakes_fail_loudly(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE + extra)


def test_control_plane_tls_settings_need_an_mqtts_broker(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        broker_url="mqtts://127.0.0.1:8883",
        broker_ca_file=tmp_path / "ca.crt",
        broker_cert_file=tmp_path / "cp.crt",
        broker_key_file=tmp_path / "cp.key",
    )
    assert settings.mqtt_tls == TlsOptions(
        tmp_path / "ca.crt", tmp_path / "cp.crt", tmp_path / "cp.key"
    )
    assert Settings(data_dir=tmp_path).mqtt_tls is None
    with pytest.raises(ValidationError, match="mqtts://"):
        Settings(data_dir=tmp_path, broker_ca_file=tmp_path / "ca.crt")
    with pytest.raises(ValidationError, match="go together"):
        Settings(data_dir=tmp_path, broker_url="mqtts://h", broker_cert_file=tmp_path / "cp.crt")
