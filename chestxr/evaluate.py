"""``python -m chestxr.evaluate ckpt_path=PATH [data=...] [experiment=...]``: metrics on held-out
scans.

``ckpt_path=[A,B,...]`` evaluates the seed ensemble of several checkpoints and
``evaluation.tta=standard`` adds test-time augmentation (mean logits). The work is
:func:`chestxr.evaluation.run.evaluate_model`; this module composes the config.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from chestxr.evaluation.run import data_for_model, evaluate_model, load_for_evaluation
from chestxr.utils.files import ensure_fresh_run_dir


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (one checkpoint or a list) on the data's ``cfg.split`` split."""
    out_dir = ensure_fresh_run_dir(cfg.paths.output_dir)
    model = load_for_evaluation(cfg.ckpt_path, cfg.evaluation)
    dm = data_for_model(cfg.data, model)
    return evaluate_model(model, dm, out_dir, cfg.evaluation, split=cfg.split)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point around :func:`evaluate`."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
