"""Unknown labels (NaN) are masked in the training loss and in the logged validation AUC."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from chestxr import keys
from chestxr.models.module import ChestXRClassifier

FINDINGS = ["Effusion", "Nodule", "Mass"]


def _model() -> ChestXRClassifier:
    torch.manual_seed(0)
    return ChestXRClassifier(
        task="multilabel",
        classes=FINDINGS,
        preprocess={"image_size": 32},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True},
        channels_last=False,
    )


def _targets(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = (rng.random((n, len(FINDINGS))) < 0.4).astype(np.float32)
    t[rng.random(t.shape) < 0.35] = np.nan
    return torch.as_tensor(t)


def test_training_loss_ignores_unknown_labels() -> None:
    model = _model()
    target = _targets(16)
    known = ~torch.isnan(target)
    logits = torch.randn(16, len(FINDINGS), requires_grad=True)
    loss = model.loss(logits, target)
    expected = F.binary_cross_entropy_with_logits(logits[known], target[known])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[~known] == 0)  # unknown labels teach nothing
    assert torch.all(logits.grad[known] != 0)
    changed = logits.detach().clone()
    changed[~known] += 50.0  # whatever the model says where the label is unknown
    assert model.loss(changed, target).item() == pytest.approx(loss.item(), rel=1e-6)


def test_logged_validation_auc_is_over_known_labels_only() -> None:
    model = _model()
    n = 24
    images = torch.rand(n, 1, 32, 32)
    target = _targets(n, seed=1)
    batches = [
        {keys.IMAGE: images[i : i + 8], keys.TARGET: target[i : i + 8]} for i in range(0, n, 8)
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the batches as they are
    trainer.validate(model, dataloaders=loader)
    with torch.no_grad():
        prob = torch.sigmoid(model.eval()(images)).numpy()
    t = target.numpy()
    per_finding = []
    for k, name in enumerate(FINDINGS):
        known = ~np.isnan(t[:, k])
        auc = roc_auc_score(t[known, k], prob[known, k])
        per_finding.append(auc)
        logged = float(trainer.callback_metrics[f"val/auc_{name}"])
        assert logged == pytest.approx(auc, abs=1e-5)
        # an unmasked AUC (unknown read as negative) is another number: the test can tell
        assert roc_auc_score(np.nan_to_num(t[:, k]), prob[:, k]) != pytest.approx(auc, abs=1e-5)
    assert float(trainer.callback_metrics["val/auc"]) == pytest.approx(
        np.mean(per_finding), abs=1e-5
    )
