"""The distributions: `python -m build` makes an sdist and, from it, a wheel; the wheel installs in a fresh
venv whose `pipeline-ex` command validates and runs a workflow.

The build is isolated, as a user's or a packager's is (hatchling comes from the package index). The
fresh venv is a new `python -m venv` without this environment's site-packages; the wheel is installed
into it by pip with `--no-deps --no-index`, and its dependencies (haystack and the rest, which take
minutes to install) are made visible by one `.pth` line naming this environment's site-packages, after
the venv's own. A `.pth` line only adds a directory to `sys.path`, so the editable install of this
checkout found there is not activated: the `pipeline_ex` that runs is the one the wheel installed, as
each command checks.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

import pipeline_ex

SLOW = pytest.mark.slow  # about 25 s in all: an isolated build, a venv and the commands

ROOT = Path(__file__).resolve().parent.parent
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"  # apache.org's LICENSE-2.0.txt
NAME = "pipeline_ex"

WORKFLOW = """\
workflow:
  name: packaged
  steps:
    - id: greet
      type: llm
      provider: mock
      prompt: "Say hello."
      mock_response: "Hello from the wheel."
"""


def clean_env() -> dict[str, str]:
    """The environment without anything that points Python at this checkout."""
    return {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith("PIPELINE_")
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    # the default build makes the sdist first and the wheel from the unpacked sdist
    assert "Building wheel from sdist" in build.stdout + build.stderr, build.stdout + build.stderr
    return out


def version() -> str:
    return pipeline_ex.__version__


def wheel_path(dist: Path) -> Path:
    (wheel,) = dist.glob(f"{NAME}-{version()}-py3-none-any.whl")
    return wheel


def sdist_path(dist: Path) -> Path:
    (sdist,) = dist.glob(f"{NAME}-{version()}.tar.gz")
    return sdist


def metadata(text: str) -> Any:
    return email.parser.Parser().parsestr(text)


def test_the_version_is_declared_once() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in project["dynamic"] and "version" not in project
    assert re.fullmatch(r"\d+\.\d+\.\d+", version())
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{version()}] - " in changelog and "## [Unreleased]" in changelog


def test_the_license_file_is_apache_2_unmodified() -> None:
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"


@SLOW
def test_the_wheel_holds_the_package_its_typing_marker_and_license(dist: Path) -> None:
    with zipfile.ZipFile(wheel_path(dist)) as wheel:
        names = wheel.namelist()
        info = f"{NAME}-{version()}.dist-info"
        meta = metadata(wheel.read(f"{info}/METADATA").decode())
        license_text = wheel.read(f"{info}/licenses/LICENSE")
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert f"{NAME}/py.typed" in names
    assert f"{NAME}/cli.py" in names and f"{NAME}/workflow/runner.py" in names
    outside = {n.split("/")[0] for n in names} - {NAME, info}
    assert not outside, f"the wheel ships more than the package: {sorted(outside)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert meta["Name"] == "pipeline-ex" and meta["Version"] == version()
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    for expected in (
        "Framework :: AsyncIO",
        "Typing :: Typed",
        "Programming Language :: Python :: 3.11",
        "Intended Audience :: Developers",
    ):
        assert expected in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the expression says it (PEP 639)
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Source", "Issues", "Changelog"}
    assert "pipeline-ex = pipeline_ex.cli:main" in entry_points
    assert "pipeline_ex = pipeline_ex.testing.pytest_plugin" in entry_points


@SLOW
def test_the_sdist_holds_the_sources_and_tests_and_no_junk(dist: Path) -> None:
    with tarfile.open(sdist_path(dist)) as sdist:
        names = [m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name]
        top = f"{NAME}-{version()}"
        pkg_info = metadata(sdist.extractfile(f"{top}/PKG-INFO").read().decode())  # type: ignore[union-attr]
    tops = {n.split("/")[0] for n in names}
    assert {"pipeline_ex", "tests", "workflows", "LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"} <= tops
    junk = [
        n
        for n in names
        if re.search(r"(^|/)(\.venv|__pycache__|\.mypy_cache|\.ruff_cache|\.pytest_cache|\.git)(/|$)", n)
    ]
    assert not junk
    assert not tops & {"bench", "docs", ".ci", "outputs", "dist", "build"}
    assert "pipeline_ex/py.typed" in names
    assert pkg_info["License-Expression"] == "Apache-2.0"


@pytest.fixture(scope="module")
def fresh_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=clean_env())
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.strip()
    # this environment's dependencies, after the venv's own site-packages (see the module docstring)
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            str(wheel_path(dist)),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


def run_in(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, env=clean_env(), timeout=120
    )


@SLOW
def test_the_installed_wheel_is_the_package_that_runs(fresh_venv: Path, tmp_path: Path) -> None:
    found = run_in(
        fresh_venv,
        "python",
        "-c",
        "import pathlib, pipeline_ex; p = pathlib.Path(pipeline_ex.__file__).parent; "
        "print(p); print((p / 'py.typed').exists())",
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    where, typed = found.stdout.split()
    assert Path(where).is_relative_to(fresh_venv), where
    assert typed == "True"


@SLOW
def test_the_installed_command_prints_its_version_validates_and_runs(fresh_venv: Path, tmp_path: Path) -> None:
    (tmp_path / "packaged.yaml").write_text(WORKFLOW)
    shown = run_in(fresh_venv, "pipeline-ex", "--version", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.strip() == f"pipeline-ex {version()}", shown
    checked = run_in(fresh_venv, "pipeline-ex", "validate", "packaged.yaml", "--mock", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = run_in(fresh_venv, "pipeline-ex", "run", "packaged.yaml", "--mock", "--json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert '"Hello from the wheel."' in ran.stdout
    # the command's script was written by pip for the venv's interpreter, not this environment's
    assert (fresh_venv / "bin" / "pipeline-ex").read_text().startswith(f"#!{fresh_venv}/bin/python")
