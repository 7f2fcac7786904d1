"""Shared fixtures: where the real test data lives, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or ``$CHESTXR_SHARED_DATA``); skips when absent."""
    root = Path(os.environ.get("CHESTXR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real test data not found at {root} (only present beside the project's CI)")
    return root


def compose_config(name: str, tmp: Path, overrides: list[str] | None = None):
    """Compose a real config of ``conf/`` with outputs and caches under ``tmp``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name=name,
            overrides=[f"paths.cache_dir={tmp / 'cache'}", *(overrides or [])],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp / "run")
        cfg.hydra.runtime.output_dir = str(tmp / "run")
    return cfg


TINY_SYNTHETIC = [
    "data.preprocess.image_size=64",
    "data.num_workers=0",
    "data.batch_size=16",
    "evaluation.n_bootstrap=100",
    "report.max_scans=12",
    "report.faithfulness_scans=4",
]
