"""The wheel ``python -m build`` makes installs and finds its firmware profiles.

A source checkout can find files next to the code by walking up from ``__file__``; an
installed wheel has only what the package data declares. So this builds the wheel from a
copy of the sources (building in the checkout would leave ``build/`` and ``*.egg-info``
behind), installs it into a fresh virtualenv, and loads the shipped profiles from there.

The fresh virtualenv gets the project's dependencies from the running one through a
``.pth`` line: that adds the directory to ``sys.path`` after the virtualenv's own
site-packages but runs none of its ``.pth`` files, so the editable install of the checkout
stays out and ``edgefleet`` can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
# What the build reads: the project table, the readme it names, and the packages it finds.
BUILD_INPUTS = ("pyproject.toml", "README.md", "edgefleet", "edgefleet_demo")
SHIPPED_PROFILES = sorted(p.stem for p in (REPO / "edgefleet" / "firmware_profiles").glob("*.toml"))

CHECK = """
import json
from edgefleet import profile
from edgefleet.control_plane.api.routes.console import CONSOLE_DIR

profiles = profile.load_profiles(profile.default_profiles_dir())
print(json.dumps({
    "module": profile.__file__,
    "profiles": sorted(profiles),
    "console_index": (CONSOLE_DIR / "index.html").is_file(),
}))
"""


def _run(args: list[str | Path], cwd: Path | None = None) -> str:
    """Run a command without the checkout's PYTHONPATH; its stdout, or a failure showing stderr."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=240, env=env, cwd=cwd
    )
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources, with the running environment's setuptools."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_INPUTS:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, source / name, ignore=ignore)
        else:
            shutil.copy2(item, source / name)
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source],
        cwd=source,
    )
    (built,) = dist.glob("edgefleet-*.whl")
    return built


def test_the_wheel_ships_profiles_and_console_under_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"edgefleet", "edgefleet_demo"}
    assert not top_level & {"agent", "control_plane", "converters", "firmware_profiles"}
    shipped = sorted(
        n.removeprefix("edgefleet/firmware_profiles/").removesuffix(".toml")
        for n in names
        if n.startswith("edgefleet/firmware_profiles/") and n.endswith(".toml")
    )
    assert shipped == SHIPPED_PROFILES
    assert "edgefleet/control_plane/console/index.html" in names
    assert any(n.startswith("edgefleet/control_plane/console/views/") for n in names)
    assert "edgefleet/py.typed" in names
    migrations = "edgefleet/control_plane/core/migrations/"
    assert f"{migrations}env.py" in names and f"{migrations}script.py.mako" in names
    shipped_revisions = sorted(n for n in names if n.startswith(f"{migrations}versions/"))
    in_tree = sorted(
        f"{migrations}versions/{p.name}" for p in (REPO / migrations / "versions").glob("*.py")
    )
    assert shipped_revisions == in_tree


def test_an_installed_wheel_finds_every_shipped_profile(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel])
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run([python, "-I", "-c", purelib]).strip())
    (site / "edgefleet-test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    # -I: no PYTHONPATH, no user site, and not the working directory on sys.path.
    found = json.loads(_run([python, "-I", "-c", CHECK], cwd=tmp_path))

    assert Path(found["module"]).resolve().is_relative_to(site.resolve())
    assert found["profiles"] == SHIPPED_PROFILES
    assert found["console_index"] is True
