"""PyPI-ready: the sdist and the wheel build, pass ``twine check`` and carry the data files.

Built without isolation (no download: the build backend is the installed hatchling). That a
fresh virtual environment holding only the wheel and torch runs the quickstart build is
checked by hand (it downloads the dependencies); the figures are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("build")
pytest.importorskip("twine")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_sdist_and_wheel_pass_twine_check(dist: Path):
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    r = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("PASSED") == 2


def test_wheel_carries_the_template_and_entry_point(dist: Path):
    wheel = next(dist.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        entry_points = z.read(entry).decode()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    # The top-level template travels inside the package that reads it (force-include).
    assert "builder/package/dataset_card.md" in names
    assert "dataset_card.md" not in names
    for package in ("builder", "synthesis"):
        assert f"{package}/__init__.py" in names
    assert "fluorobench_c.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)
    assert "fluorobench-c = builder.cli:main" in entry_points
    assert "Requires-Dist: torch>=2.4" in meta and "Project-URL: Source," in meta
    assert "Provides-Extra: dev" in meta
    with tarfile.open(next(dist.glob("*.tar.gz"))) as t:
        tops = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"dataset_card.md", "fluorobench_c.py", "pyproject.toml", "README.md"} <= tops
