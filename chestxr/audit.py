"""``python -m chestxr.audit [data=...]``: find leaks, duplicates and shortcuts before training.

Writes ``audit.json`` (schema ``chestxr.audit/1``) and ``audit.txt`` into the run folder and
prints the text. Exit status: 1 when a finding kind listed in ``audit.fail_on`` is present, else 0
(``main`` itself returns normally; the status is set by the ``__main__`` block).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from chestxr.data.audit import audit_manifest, exit_status, format_report
from chestxr.data.manifest import load_manifest
from chestxr.utils.files import atomic_write_json, atomic_write_text, ensure_fresh_run_dir

log = logging.getLogger(__name__)

REPORT_FILES = ("audit.json", "audit.txt")


def audit(cfg: DictConfig) -> dict[str, Any]:
    """Audit the data config's manifest and images; write the report into the run folder.

    The manifest is read with its given splits and without checking files (a leak or a missing
    file is reported, where ``RadiographDataModule.load`` would raise); the remaining rows get
    their splits as the data module assigns them.

    Args:
        cfg: the composed ``audit`` config.

    Returns:
        The report (see :mod:`chestxr.data.audit`).

    Raises:
        FileExistsError: the run folder already holds an audit.
    """
    out_dir = ensure_fresh_run_dir(cfg.paths.output_dir)
    taken = [name for name in REPORT_FILES if (Path(out_dir) / name).exists()]
    if taken:
        raise FileExistsError(f"{out_dir} already holds {taken}; choose another hydra.run.dir")
    dm = instantiate(cfg.data)
    manifest = load_manifest(
        dm.manifest_path(),
        task=dm.task,
        classes=dm.classes,
        no_finding=dm.no_finding,
        uncertain=dm.uncertain,
        check_files=False,
    )
    settings = OmegaConf.to_container(cfg.audit, resolve=True)
    report = audit_manifest(
        manifest,
        task=dm.task,
        classes=dm.classes,
        split=dm.split,
        preprocess=dm.preprocess,
        **settings,
    )
    atomic_write_json(Path(out_dir) / "audit.json", report)
    atomic_write_text(Path(out_dir) / "audit.txt", format_report(report))
    log.info("audit written to %s: %s", out_dir, "FAIL" if report["failed"] else "pass")
    return report


def _audit_and_print(cfg: DictConfig) -> dict[str, Any]:
    report = audit(cfg)
    print(format_report(report), end="")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    _audit_and_print(cfg)


def cli() -> int:
    """Run the audit from the command line; returns the exit status (1: a ``fail_on`` finding).

    Hydra's ``main`` does not hand back its task's return value, so the reports are collected
    here (one per run; several under ``--multirun``).
    """
    reports: list[dict[str, Any]] = []

    def task(cfg: DictConfig) -> None:
        reports.append(_audit_and_print(cfg))

    hydra.main(version_base="1.3", config_path="../conf", config_name="audit")(task)()
    return max((exit_status(r) for r in reports), default=0)


if __name__ == "__main__":
    sys.exit(cli())
