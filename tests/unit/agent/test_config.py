"""The agent's TOML config: valid files load, typos and bad values fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.config import load_config, parse_config
from edgefleet.agent.errors import ConfigError

VALID = """
device_id = "dev-abc12345"
profile = "x86-64-gateway-onnx"
broker = "mqtt://127.0.0.1:1883"
data_dir = "/var/lib/edgefleet-agent"
trust_root = "/etc/edgefleet/root.json"
[inference]
host = "127.0.0.1"
port = 8501
max_concurrency = 4
"""


def test_valid_config_loads_every_field(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(VALID)
    config = load_config(path)
    assert config.device_id == "dev-abc12345"
    assert config.profile == "x86-64-gateway-onnx"
    assert config.broker_address.host == "127.0.0.1"
    assert config.broker_address.port == 1883
    assert config.data_dir == Path("/var/lib/edgefleet-agent")
    assert config.trust_root == Path("/etc/edgefleet/root.json")
    assert config.inference.port == 8501
    assert config.inference.max_concurrency == 4


def test_config_rejects_unknown_top_level_field_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(VALID.replace('profile = "', 'profle = "x"\nprofile = "'))
    assert caught.value.field == "profle"


def test_config_names_the_typo_rather_than_the_field_it_hides() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(VALID.replace('profile = "', 'profle = "'))
    assert caught.value.field == "profle"


def test_config_rejects_unknown_inference_field_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(VALID + "max_concurency = 8\n")
    assert caught.value.field == "inference.max_concurency"


@pytest.mark.parametrize("value", ["70000", '"8501"'])
def test_config_rejects_a_bad_value_in_a_section_naming_it(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(VALID.replace("port = 8501", f"port = {value}"))
    assert caught.value.field == "inference.port"
    assert str(caught.value).startswith("inference.port: Expected `int`")


def test_config_rejects_malformed_device_id() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(VALID.replace("dev-abc12345", "cp-controlplane"))
    assert caught.value.field == "device_id"


def test_config_rejects_broker_url_with_wrong_scheme() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(VALID.replace("mqtt://127.0.0.1:1883", "http://127.0.0.1:1883"))
    assert caught.value.field == "broker"


def test_config_requires_trust_root() -> None:
    text = "\n".join(line for line in VALID.splitlines() if not line.startswith("trust_root"))
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.field == "trust_root"


def test_config_rejects_invalid_toml() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("device_id = ")


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_mirrors_and_the_link_budget_are_read_and_a_mirror_must_be_http() -> None:
    text = (
        VALID.replace(
            'trust_root = "/etc/edgefleet/root.json"',
            'trust_root = "/etc/edgefleet/root.json"\nmirrors = ["https://cdn.example/fleet"]',
        )
        + "[fetch]\nlink_bytes_per_s = 65536\nlink_bytes_per_day = 50000000\n"
    )
    config = parse_config(text)
    assert config.mirrors == ["https://cdn.example/fleet"]
    assert (config.fetch.link_bytes_per_s, config.fetch.link_bytes_per_day) == (65536, 50_000_000)
    assert config.fetch.blobs and parse_config(VALID).mirrors == []
    with pytest.raises(ConfigError) as caught:
        parse_config(text.replace("https://cdn.example/fleet", "ftp://cdn.example/fleet"))
    assert caught.value.field is not None and caught.value.field.startswith("mirrors")
