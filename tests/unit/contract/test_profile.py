"""Firmware profiles are validated; a bad one is refused naming the field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.errors import ProfileError
from edgefleet.profile import default_profiles_dir, load_profile, load_profiles, parse_profile

GOOD = (default_profiles_dir() / "x86-64-gateway-onnx.toml").read_text()


def test_shipped_profiles_all_validate() -> None:
    profiles = load_profiles(default_profiles_dir())
    assert "x86-64-gateway-onnx" in profiles
    assert profiles["x86-64-gateway-onnx"].runtime.name == "onnxruntime"


def test_unknown_key_is_refused_naming_it() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile("max_modle_bytes = 5\n" + GOOD)
    assert caught.value.field == "max_modle_bytes"


def test_typo_inside_a_table_is_refused_naming_its_path() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(GOOD.replace("[runtime]\n", "[runtime]\nverison = '1'\n"))
    assert caught.value.field == "runtime.verison"


def test_wrong_value_is_refused_naming_the_field() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(GOOD.replace('arch = "x86_64"', 'arch = "sparc"'))
    assert caught.value.field == "arch"


def test_missing_field_is_refused_naming_it() -> None:
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith("max_model_bytes"))
    with pytest.raises(ProfileError) as caught:
        parse_profile(text)
    assert caught.value.field == "max_model_bytes"


def test_invalid_toml_is_refused() -> None:
    with pytest.raises(ProfileError, match="not valid TOML"):
        parse_profile("name = ")


def test_file_name_must_match_profile_name(tmp_path: Path) -> None:
    path = tmp_path / "other-name.toml"
    path.write_text(GOOD)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.field == "name"
