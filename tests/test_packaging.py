"""The lowest-versions CI run pins every ``>=`` bound of pyproject.toml (``.ci/lowest_pins.py``)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")


def _lowest_pins():
    spec = importlib.util.spec_from_file_location("lowest_pins", REPO_ROOT / ".ci/lowest_pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pins


def _ci_groups() -> list[str]:
    """The optional groups ``.ci/run`` passes to ``lowest_pins.py`` (its one command line that
    runs it; comments aside)."""
    calls = re.findall(
        r"^\s*python \.ci/lowest_pins\.py ([\w ]*?)\s*>", (REPO_ROOT / ".ci/run").read_text(), re.M
    )
    assert len(calls) == 1, f".ci/run runs lowest_pins.py {len(calls)} times, not once"
    return calls[0].split()


def test_ci_tests_the_bounds_of_every_extra() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(_ci_groups()) == sorted(project["optional-dependencies"])


def test_every_dependency_gets_its_lower_bound_pinned() -> None:
    groups = _ci_groups()
    pins = _lowest_pins()(REPO_ROOT / "pyproject.toml", groups)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        r for g in groups for r in project["optional-dependencies"][g]
    ]
    assert sorted(pins) == sorted(r.replace(">=", "==") for r in wanted)
    assert "pydicom==3.0.1" in pins  # the bound the DICOM code needs (pydicom.encaps.get_frame)
    assert any(p.startswith("torch==") for p in pins)  # torch's bound is tested too


@pytest.mark.parametrize(
    "requirement", ["numpy", "numpy<3", "numpy>=1.25,<3", "numpy==1.25", "numpy[extra]>=1.25"]
)
def test_a_requirement_without_a_plain_lower_bound_is_refused(
    tmp_path: Path, requirement: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "x"\ndependencies = ["{requirement}"]\n'
    )
    with pytest.raises(SystemExit, match="not of the form name>=version"):
        _lowest_pins()(tmp_path / "pyproject.toml", [])


def test_an_unknown_group_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no optional dependency group"):
        _lowest_pins()(REPO_ROOT / "pyproject.toml", ["nosuchgroup"])
