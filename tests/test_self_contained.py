"""A checkpoint is self-contained: it loads and predicts after its initialisation source is gone."""

from __future__ import annotations

import hashlib

import lightning as L
import torch

from chestxr.inference import load_model
from chestxr.models import pretrained
from chestxr.models.module import ChestXRClassifier
from chestxr.models.pretrained import (
    IMAGENET_RGB_STD,
    fold_rgb_stem,
    grey_normalisation,
    init_from_imagenet,
)
from chestxr.models.resnet import build_resnet18
from tests.test_finetuning import OPT, SCHED, data
from tests.test_pretrained import fake_torchvision_state_dict


def classifier(**kw) -> ChestXRClassifier:
    mean, std = grey_normalisation()
    return ChestXRClassifier(
        task="binary",
        classes=["NEG", "POS"],
        preprocess={"image_size": 32},
        optimizer=OPT,
        scheduler=SCHED,
        normalization={"mean": mean, "std": std},
        **kw,
    )


def fine_tune(m: ChestXRClassifier, tmp, name: str):
    t = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=2,
        limit_val_batches=1,
        enable_checkpointing=False,
        default_root_dir=tmp,
    )
    t.fit(m, datamodule=data(tmp))
    path = tmp / name
    t.save_checkpoint(path)
    return path


def test_imagenet_fold_through_the_classifier(tmp_path):
    """``ChestXRClassifier(pretrained=FILE)`` holds exactly the folded ImageNet weights."""
    state = fake_torchvision_state_dict(seed=3)
    weights = tmp_path / "resnet18.pth"
    torch.save(state, weights)
    m = classifier(pretrained=str(weights), channels_last=False)
    expected = build_resnet18(1)
    init_from_imagenet(expected, state, num_outputs=1)
    got = m.net.state_dict()
    for key, value in expected.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    stem = fold_rgb_stem(state["conv1.weight"], 1, rgb_std=IMAGENET_RGB_STD)
    torch.testing.assert_close(got["conv1.weight"], stem, rtol=0, atol=0)
    assert not torch.equal(got["bn1.running_mean"], state["bn1.running_mean"])  # offset folded
    assert got["layer4.1.conv2.weight"].equal(state["layer4.1.conv2.weight"])
    assert m.hparams.init_source == {
        "kind": "imagenet",
        "path": str(weights),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }


def test_fine_tuned_from_imagenet_loads_after_the_weights_are_deleted(tmp_path, monkeypatch):
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch.save(fake_torchvision_state_dict(seed=1), weights)
    reads = []
    real_read = pretrained.read_state_file
    monkeypatch.setattr(pretrained, "read_state_file", lambda p: reads.append(p) or real_read(p))
    L.seed_everything(0)
    m = classifier(pretrained=str(weights))
    ckpt = fine_tune(m, tmp_path, "imagenet.ckpt")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    weights.unlink()
    # and no download: the hub is not reachable from a hospital's offline machine
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: 1 / 0)
    loaded = load_model(ckpt, device=torch.device("cpu"))
    assert [str(p) for p in reads] == [
        str(weights)
    ]  # read once, at the start of the run; not on load
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["init_source"]["sha256"] == digest and hp["pretrained"] == str(weights)
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m.eval()(x))


def test_fine_tuned_from_a_checkpoint_loads_after_it_is_deleted(tmp_path):
    L.seed_everything(0)
    parent = fine_tune(classifier(), tmp_path, "parent.ckpt")
    child_model = classifier(init_checkpoint=str(parent))
    torch.testing.assert_close(
        child_model.net.layer1[0].conv1.weight,
        load_model(parent, device=torch.device("cpu")).net.layer1[0].conv1.weight,
    )
    child = fine_tune(child_model, tmp_path, "child.ckpt")
    record = child_model.hparams.init_source
    assert record["kind"] == "chestxr_checkpoint" and record["path"] == str(parent)
    assert record["sha256"] == hashlib.sha256(parent.read_bytes()).hexdigest()
    parent.unlink()
    loaded = load_model(child, device=torch.device("cpu"))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), child_model.eval()(x))
