"""The layers point down (cli -> systems -> train / models / data / diffusion / eval -> config -> utils)
and no module imports itself back through others: checked on the package, and shown to fail on a
copy of it with an upward import or a cycle added."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src"


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the project's contracts (pyproject.toml) on the package under `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=src)


def import_cycles(src: Path) -> list[list[str]]:
    """Groups of modules that import each other (tests/import_cycles.py, in a fresh interpreter so
    that the copy under `src`, not the installed package, is analysed)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("import_cycles.py"))],
                            capture_output=True, text=True, env=env, cwd=src, check=True)
    return json.loads(result.stdout)


@pytest.fixture
def package_copy(tmp_path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(SRC / "worldtune", src / "worldtune", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def test_main_keeps_the_layers_and_has_no_cycles():
    result = lint_imports(SRC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout
    assert import_cycles(SRC) == []


def test_an_upward_import_breaks_the_layers(package_copy):
    lora = package_copy / "worldtune" / "models" / "lora.py"
    lora.write_text(lora.read_text() + "\nfrom worldtune.systems import REGISTRY  # noqa\n")
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert "worldtune.models.lora -> worldtune.systems" in result.stdout


def test_a_sideways_import_between_the_lower_packages_breaks_the_layers(package_copy):
    video = package_copy / "worldtune" / "data" / "video.py"
    video.write_text(video.read_text() + "\nfrom worldtune.models.lora import add_lora  # noqa\n")
    assert lint_imports(package_copy).returncode != 0


def test_a_cycle_is_found(package_copy):
    data = package_copy / "worldtune" / "data"
    (data / "loop_a.py").write_text("from worldtune.data import loop_b  # noqa\n")
    (data / "loop_b.py").write_text("from worldtune.data import loop_a  # noqa\n")
    assert import_cycles(package_copy) == [["worldtune.data.loop_a", "worldtune.data.loop_b"]]
