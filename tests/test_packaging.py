"""The package as pip builds it: one version, the licence, every package, the data cards."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import bitkit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (whl,) = out.glob("bitkit-*.whl")
    return whl


def test_the_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    from importlib.metadata import version

    assert version("bitkit") == bitkit.__version__


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("bitkit", "widgets")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found | {"bitkit.data_cards"} == listed


def test_the_wheel_carries_licence_version_cards_and_runs_from_elsewhere(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    cards = sorted(n for n in names if n.startswith("bitkit/data_cards/") and n.endswith(".yaml"))
    assert [Path(n).name for n in cards] == sorted(p.name for p in (ROOT / "data_cards").glob(
        "*.yaml"))
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)
    assert f"bitkit-{bitkit.__version__}-" in wheel.name
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = ("import bitkit.data.cards as c; print(c.CARD_DIR); "
            "print(len(c.card_files()), c.get_card('cifar10').paper.bit_l)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(target)})
    card_dir, counts = out.stdout.splitlines()
    assert Path(card_dir) == target / "bitkit" / "data_cards"  # the installed copy, not the repo
    assert counts == f"{len(cards)} 99.37"


def test_the_wheel_carries_the_bundled_photos(wheel):
    # the files of the bundled photos card (lesson 09), as package data of bitkit.data
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(Path(n).name for n in names if n.startswith("bitkit/data/photos/"))
    assert shipped == sorted(p.name for p in (ROOT / "bitkit" / "data" / "photos").glob("*.jpg"))
    assert shipped and "bitkit/data/bundled.py" in names


def test_the_licence_is_the_one_pyproject_names():
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == \
        "Apache-2.0"


def test_the_wheel_enables_the_save_hook_for_jupyter(wheel):
    # pip puts <name>.data/data/etc/jupyter/... under the environment's prefix, where Jupyter
    # finds server extensions to enable: notebooks saved from JupyterLab keep static panel
    # views (bitkit.jupyter_extension registers bitkit.runs.pre_save_hook)
    import json

    with zipfile.ZipFile(wheel) as z:
        (config,) = [n for n in z.namelist()
                     if n.endswith(".data/data/etc/jupyter/jupyter_server_config.d/bitkit.json")]
        assert json.loads(z.read(config)) == {
            "ServerApp": {"jpserver_extensions": {"bitkit.jupyter_extension": True}}}
        # ... and inside the package, where `python -m bitkit.jupyter_extension` copies it from
        assert z.read("bitkit/jupyter_config/bitkit.json") == z.read(config)
