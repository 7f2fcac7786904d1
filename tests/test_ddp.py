"""Distributed data parallel on the CPU (2 processes, gloo): validation AUC is computed over every
rank's predictions, so it equals the AUC of the whole validation set."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from sklearn.metrics import roc_auc_score

from chestxr.data.datamodule import RadiographDataModule
from chestxr.inference import predict_dataset
from tests.conftest import compose_config
from tests.test_datamodule import make_set
from tests.test_finetuning import model as make_model


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
@pytest.mark.slow  # ~30 s: two processes, each importing the stack
def test_ddp_cpu_gathers_predictions_for_auc(tmp_path):
    cfg = compose_config(
        "train",
        tmp_path,
        [
            "trainer=ddp_cpu",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            "trainer.num_sanity_val_steps=0",
        ],
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    assert trainer.world_size == 2
    dm = RadiographDataModule(
        make_set(tmp_path, n=32),
        task="binary",
        classes=["NEG", "POS"],
        preprocess={"image_size": 32},
        num_workers=0,
        batch_size=2,
        cache="disk",
        cache_dir=tmp_path / "cache",
        report_dir=tmp_path,
        split={"val_fraction": 0.25, "test_fraction": 0.0, "seed": 0},
    )
    L.seed_everything(0)
    m = make_model()
    trainer.fit(m, datamodule=dm)
    logged = float(trainer.callback_metrics["val/auc"])
    # the trainer ran at 32-true: so must the recomputation (predict_dataset's default is bf16 on
    # CPUs with native bf16, whose 8-bit mantissa ties close predictions and changes the AUC)
    val = predict_dataset(
        m.eval(), dm.dataset("val", train=False), batch_size=8, precision="32-true"
    )
    assert len(val["prob"]) % 2 == 0  # no padding duplicates from the distributed sampler
    whole = roc_auc_score(val["target"][:, 0], val["prob"][:, 0])
    assert logged == pytest.approx(whole, abs=1e-5)
    # each rank alone sees one class only (labels alternate within patients and the sampler
    # interleaves), so a per-rank AUC would be undefined (logged as 0.5): the logged value can
    # only be the whole set's because predictions were gathered
    for rank in (0, 1):
        assert len(set(val["target"][rank::2, 0].tolist())) == 1
    assert whole != pytest.approx(0.5)
