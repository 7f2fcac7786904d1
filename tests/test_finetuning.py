"""Fine-tuning strategies and resuming, on a tiny image set (no learning needed, only mechanics)."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from chestxr.data.datamodule import RadiographDataModule
from chestxr.models.finetuning import backbone_modules
from chestxr.models.module import ChestXRClassifier
from tests.test_datamodule import make_set

OPT = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2}
SCHED = {"_target_": "chestxr.models.schedules.warmup_cosine", "_partial_": True}


def data(tmp, augment=None, workers=0):
    return RadiographDataModule(
        make_set(tmp, n=24),
        task="binary",
        classes=["NEG", "POS"],
        preprocess={"image_size": 32},
        augment=augment,
        num_workers=workers,
        batch_size=8,
        cache="disk",
        cache_dir=tmp / "cache",
        report_dir=tmp,
        split={"val_fraction": 0.25, "test_fraction": 0.0, "seed": 0},
    )


def model(strategy="full", **finetune):
    return ChestXRClassifier(
        task="binary",
        classes=["NEG", "POS"],
        preprocess={"image_size": 32},
        optimizer=OPT,
        scheduler=SCHED,
        finetune={"strategy": strategy, **finetune},
    )


def trainer(tmp, epochs, **kw):
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp,
        **{"enable_checkpointing": False, **kw},
    )


def backbone_state(m):
    return {k: v.clone() for k, v in m.net.state_dict().items() if not k.startswith("fc.")}


def test_linear_probe_leaves_the_backbone_unchanged(tmp_path):
    L.seed_everything(0)
    m = model("linear_probe")
    before, head = backbone_state(m), m.net.fc.weight.clone()
    trainer(tmp_path, 2).fit(m, datamodule=data(tmp_path))
    after = backbone_state(m)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert not torch.equal(head, m.net.fc.weight)


def test_staged_unfreezing_changes_the_backbone_only_from_its_epoch(tmp_path):
    snapshots = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append(
                {
                    k: v.clone()
                    for k, v in pl_module.net.named_parameters()
                    if not k.startswith("fc.")
                }
            )

    L.seed_everything(0)
    m = model("staged", unfreeze_epoch=2, backbone_lr_factor=0.5)
    start = {k: v.clone() for k, v in m.net.named_parameters() if not k.startswith("fc.")}
    trainer(tmp_path, 3, callbacks=[Record()]).fit(m, datamodule=data(tmp_path))
    same = [all(torch.equal(start[k], s[k]) for k in start) for s in snapshots]
    assert same == [True, True, False]
    assert all(p.requires_grad for mod in backbone_modules(m.net) for p in mod.parameters())
    backbone, head = m.optimizers().optimizer.param_groups  # no group added or duplicated
    assert backbone["lr"] == pytest.approx(0.5 * head["lr"])


def test_staged_unfreezing_in_a_run_resumed_past_its_epoch():
    """Setup freezes the backbone again on resume; every epoch from unfreeze_epoch unfreezes it."""
    m = model("staged", unfreeze_epoch=1)
    (callback,) = m.configure_callbacks()
    callback.freeze_before_training(m)
    optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
    callback.finetune_function(m, 0, optimizer)
    assert not any(p.requires_grad for mod in backbone_modules(m.net) for p in mod.parameters())
    callback.finetune_function(m, 3, optimizer)  # resumed at epoch 3
    assert all(p.requires_grad for mod in backbone_modules(m.net) for p in mod.parameters())


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_equals_an_uninterrupted_run(tmp_path, workers):
    aug = {"prob": 0.5}

    class Interrupt(L.Callback):  # the run dies after two of its four epochs
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                trainer.should_stop = True

    def run(folder, epochs, ckpt=None, interrupt=False):
        L.seed_everything(7, workers=True)
        m = model()
        cb = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)
        callbacks = [cb, Interrupt()] if interrupt else [cb]
        t = trainer(folder, epochs, callbacks=callbacks, enable_checkpointing=True)
        t.fit(m, datamodule=data(tmp_path, aug, workers), ckpt_path=ckpt)
        return m, t

    full, t_full = run(tmp_path / "full", 4)
    _, t_part = run(tmp_path / "part", 4, interrupt=True)
    assert t_part.current_epoch == 2
    resumed, t_res = run(tmp_path / "resumed", 4, ckpt=str(tmp_path / "part" / "last.ckpt"))
    assert t_res.current_epoch == t_full.current_epoch == 4
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, equal_nan=True), k
    assert float(t_full.callback_metrics["val/loss"]) == pytest.approx(
        float(t_res.callback_metrics["val/loss"]), abs=1e-6
    )


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="linear_prob'"):
        model("linear_prob")


def test_deep_copy_of_module_is_independent():
    m = model("linear_probe")
    c = copy.deepcopy(m)
    assert c.net is not m.net
