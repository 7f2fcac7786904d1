"""Exit statuses of the commands that process many files, and running a Hydra task for one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

#: The configs (``conf/`` beside the package).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
#: Every file done; nothing done (or bad arguments); some files done, the others listed.
EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 2


def exit_status(results: list[Mapping[str, Any]], *, done: str, failed: str) -> int:
    """The exit status of runs that each report how many files were ``done`` and ``failed``."""
    if not results or all(r[done] == 0 for r in results):
        return EXIT_FAILED
    return EXIT_PARTIAL if any(r[failed] for r in results) else EXIT_OK


def run_hydra(config_name: str, task: Callable[[DictConfig], Any]) -> tuple[list[Any], int | None]:
    """Run ``task`` under ``@hydra.main`` with ``conf/CONFIG_NAME.yaml``.

    Returns:
        (what each run of ``task`` returned, None) or ([...], EXIT_FAILED) when Hydra exited with
        an error (it logs the failed task and exits 1).
    """
    results: list[Any] = []
    try:
        hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(
            lambda cfg: results.append(task(cfg))
        )()
    except SystemExit as exit_:
        if exit_.code:
            return results, EXIT_FAILED
    return results, None
