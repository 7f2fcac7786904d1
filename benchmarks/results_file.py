"""Where a benchmark script leaves its figures: ``benchmarks/results/NAME.json`` (git-ignored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, result: dict[str, Any]) -> None:
    """Print ``result`` and write it to ``benchmarks/results/NAME.json``."""
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")
