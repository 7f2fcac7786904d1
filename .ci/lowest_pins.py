"""Print ``name==X`` for every ``name>=X`` requirement of pyproject.toml (its dependencies and
the optional groups named on the command line), for a run on the lowest versions it admits.

torch is pinned too: its lowest admitted release comes from PyPI as a CUDA build (~3 GB to
download with its NVIDIA libraries, ~5.5 GB installed), which also runs without a GPU. A
requirement in any other form is refused, so that no bound goes untested unnoticed.

    python .ci/lowest_pins.py dev serve dicom tracking sweep export > lowest.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

LOWER = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)>=([0-9][0-9A-Za-z.]*)$")


def pins(pyproject: Path, groups: list[str]) -> list[str]:
    """The ``==`` pins of the ``>=`` bounds of the core dependencies and ``groups``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(groups) - set(optional))
    if unknown:
        raise SystemExit(f"no optional dependency group {unknown} in {pyproject}")
    out = []
    for req in project["dependencies"] + [r for g in groups for r in optional[g]]:
        m = LOWER.match(req.replace(" ", ""))
        if m is None:
            raise SystemExit(f"{pyproject}: {req!r} is not of the form name>=version")
        out.append(f"{m.group(1)}=={m.group(2)}")
    return out


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print("\n".join(pins(root / "pyproject.toml", sys.argv[1:])))
