"""The installed wheel: built from this tree, installed into a fresh virtualenv, run from there.

What an install must (not) do: claim one top-level import name, the project's own ``hvdm`` (the
checkout's ``services/`` directory installed under that name: no ``services``, ``bench`` or
``tests``), carry the SPDX license expression without setuptools' deprecation warning,
the classifiers and the Faust pin, and work: ``hvdm --help``, ``--version``, ``decode`` and ``config
show`` run from the virtualenv's own ``bin/hvdm``, importing ``hvdm`` from its site-packages.

Offline and fast: the wheel is built with ``--no-build-isolation`` (setuptools >= 77 is a dev
dependency) and installed with ``--no-deps``; the fresh virtualenv reaches the dependencies through a
``.pth`` line naming the project venv's site-packages (a path, so that directory's own ``.pth``
files, among them the editable install's finder, are not run: ``hvdm`` can only come from the
wheel).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "services", src / "services", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "bench", src / "bench", ignore=shutil.ignore_patterns("__pycache__"))  # must stay out
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (built,) = (tmp / "dist").glob("hvdm-*.whl")
    return built, out.stdout + out.stderr


def test_the_package_list_names_every_directory_of_services() -> None:
    """``[tool.setuptools] packages`` is written out (a mapped directory cannot be found by name)."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = {
        ".".join(("hvdm", *module.parent.relative_to(ROOT / "services").parts))
        for module in (ROOT / "services").rglob("*.py")
    }
    assert sorted(listed) == sorted(on_disk)


def test_the_wheel_claims_only_hvdm_and_says_its_license(wheel: tuple[Path, str]) -> None:
    path, log = wheel
    assert "deprecated" not in log.lower() and "License classifiers" not in log, log[-2000:]
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = zf.read(metadata).decode()
    top = {n.split("/")[0] for n in names}
    assert top == {"hvdm", metadata.split("/")[0]}, top
    assert "hvdm/py.typed" in names and "hvdm/cli/main.py" in names
    assert "License-Expression: GPL-2.0-or-later" in meta
    assert "Classifier: Programming Language :: Python :: 3.13" in meta
    assert "Classifier: License ::" not in meta  # the SPDX expression replaces license classifiers
    assert "Requires-Dist: faust-streaming<0.16,>=0.15" in meta


def test_the_installed_wheel_runs_from_a_fresh_virtualenv(wheel: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    assert (site / "hvdm" / "cli" / "main.py").exists()
    assert not (site / "services").exists() and not (site / "bench").exists()
    (site / "hvdm-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    def hvdm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "hvdm"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )

    where = subprocess.run([str(py), "-c", "import hvdm; print(hvdm.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True)  # fmt: skip
    assert where.stdout.strip() == str(site / "hvdm" / "__init__.py"), where
    hidden = subprocess.run([str(py), "-c", "import services"], cwd=tmp_path, capture_output=True, text=True)
    assert hidden.returncode != 0 and "No module named 'services'" in hidden.stderr
    helped = hvdm("--help")
    assert helped.returncode == 0, helped.stderr
    assert "decode" in helped.stdout and "config" in helped.stdout
    assert hvdm("--version").stdout.strip() == "hvdm 0.1.0"
    decoded = hvdm("decode", "01001000010000000000020000000000")
    assert decoded.returncode == 0, decoded.stderr
    assert "DM_VERSION_REQUEST" in decoded.stdout
    shown = hvdm("config", "show", "--format", "json", "run")
    assert shown.returncode == 0 and '"guests": 0' in shown.stdout, shown.stderr
    module = subprocess.run([str(py), "-m", "hvdm", "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert module.stdout.strip() == "hvdm 0.1.0", module.stderr  # python -m hvdm (how workers are started)
    benched = hvdm("bench", "ranges")  # the benchmarks live in the source tree only
    assert benched.returncode == 2 and benched.stderr.startswith("hvdm: error: bench: ")
