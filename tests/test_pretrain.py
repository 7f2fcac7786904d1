"""Self-supervised pretraining: views, NT-Xent, unlabelled manifests, pretrain -> fine-tune."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from chestxr.data.manifest import ManifestError, load_manifest
from chestxr.data.ssl_views import RadiographViews
from chestxr.data.unlabelled import write_unlabelled_manifest
from chestxr.models.ssl import nt_xent
from tests.conftest import REPO_ROOT, compose_config

NEUTRAL = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "rotate_degrees": 0.0,
    "jitter_prob": 0.0,
    "blur_prob": 0.0,
    "noise_prob": 0.0,
}


def images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g)


# -- views ---------------------------------------------------------------------------------------
def test_views_are_seeded_in_range_and_differ():
    x = images()
    views = RadiographViews()
    a1, a2 = views(x, torch.Generator().manual_seed(1))
    b1, b2 = views(x, torch.Generator().manual_seed(1))
    c1, _ = views(x, torch.Generator().manual_seed(2))
    assert a1.shape == x.shape and a1.dtype == torch.float32
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, a2) and not torch.allclose(a1, c1)
    assert a1.min() >= 0 and a1.max() <= 1


def test_neutral_view_is_the_image_and_flip_is_the_only_mirror():
    x = images()
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(RadiographViews(**NEUTRAL).view(x, g), x, atol=1e-5)
    flipped = RadiographViews(**NEUTRAL, flip_prob=1.0).view(x, g)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_crop_zooms_into_the_image():
    # a crop of 1/16 of the area is a quarter of the side: the view is a 4x zoom of one region
    x = torch.zeros(64, 1, 32, 32)
    x[..., :16, :] = 1.0  # top half bright
    v = RadiographViews(**{**NEUTRAL, "crop_scale": (0.0625, 0.0625)}).view(
        x, torch.Generator().manual_seed(0)
    )
    means = v.mean(dim=(1, 2, 3))
    # the crop's centre is uniform over the image: some views lie wholly in one half
    assert (means > 0.99).any() and (means < 0.01).any()
    assert ((means > 0.01) & (means < 0.99)).any()


def test_rotation_is_bounded():
    x = torch.zeros(1, 1, 64, 64)
    x[..., 31:33, :] = 1.0  # a horizontal bar through the centre
    for deg in (5.0, 10.0):
        v = RadiographViews(**{**NEUTRAL, "rotate_degrees": deg}).view(
            x.repeat(32, 1, 1, 1), torch.Generator().manual_seed(0)
        )
        # the bar's slope in each view: rows of the brightest pixels at the left and right edges
        left = v[..., :, 4].argmax(dim=-1).float()
        right = v[..., :, 59].argmax(dim=-1).float()
        angles = torch.rad2deg(torch.atan((right - left).abs().squeeze() / 55))
        assert angles.max() <= deg + 2.0 and angles.max() >= deg / 3


def test_blur_and_noise_and_intensity_jitter():
    x = images(8, 32)
    g = torch.Generator().manual_seed(0)
    blurred = RadiographViews(**{**NEUTRAL, "blur_prob": 1.0, "blur_sigma": (0.05, 0.05)}).view(
        x, g
    )
    assert blurred.std() < 0.6 * x.std()  # white noise loses most of its variance
    assert torch.allclose(blurred.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02)
    flat = torch.full((8, 1, 32, 32), 0.5)
    noisy = RadiographViews(**{**NEUTRAL, "noise_prob": 1.0, "noise_std": (0.05, 0.05)}).view(
        flat, g
    )
    assert abs(float((noisy - flat).std()) - 0.05) < 0.005
    jittered = RadiographViews(**{**NEUTRAL, "jitter_prob": 1.0}).view(x, g)
    assert not torch.allclose(jittered, x)


@pytest.mark.parametrize(
    "bad",
    [
        {"crop_scale": (0.5, 0.3)},
        {"crop_scale": (0.0, 1.0)},
        {"rotate_degrees": -1},
        {"flip_prob": 1.5},
        {"blur_sigma": (0.0, 0.5)},
        {"gamma": (1.2, 0.8)},
    ],
)
def test_views_reject_bad_settings(bad):
    value = next(iter(bad.values()))
    with pytest.raises(
        ValueError, match=next(iter(bad)) + r".*" + str(value)[:3].replace("(", r"\(")
    ):
        RadiographViews(**bad)


def test_views_reject_rgb():
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        RadiographViews()(torch.rand(2, 3, 8, 8), torch.Generator())


# -- loss ----------------------------------------------------------------------------------------
def test_nt_xent_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    t = 0.3
    loss, _ = nt_xent(z1, z2, t)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    terms = []
    for i in range(10):
        j = (i + 5) % 10
        others = [k for k in range(10) if k != i]
        logits = torch.stack([z[i] @ z[k] / t for k in others])
        terms.append(-(z[i] @ z[j] / t - torch.logsumexp(logits, 0)))
    assert math.isclose(float(loss), float(torch.stack(terms).mean()), rel_tol=1e-5)


def test_nt_xent_rewards_matching_pairs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 32, generator=g)
    matched, acc = nt_xent(z, z + 0.01 * torch.randn(16, 32, generator=g), 0.1)
    shuffled, _ = nt_xent(z, z[torch.randperm(16, generator=g)], 0.1)
    assert acc == 1.0 and matched < 0.1 * shuffled
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, 0.0)


# -- unlabelled manifests ------------------------------------------------------------------------
def test_unlabelled_manifest_needs_no_label_column(tmp_path):
    for i in range(3):
        (tmp_path / f"im{i}.png").write_bytes(b"x")
    path = tmp_path / "u.csv"
    path.write_text("path,patient_id\n" + "".join(f"im{i}.png,p{i}\n" for i in range(3)))
    with pytest.raises(ManifestError, match="label"):
        load_manifest(path, task="binary", classes=["a", "b"])
    m = load_manifest(path, task="binary", classes=["a", "b"], read_labels=False)
    assert m.targets.shape == (3, 1) and np.isnan(m.targets).all()


def test_unlabelled_manifest_holds_the_train_split_only(tmp_path):
    cfg = compose_config(
        "train", tmp_path, ["data.manifest.n_images=40", "data.manifest.size_range=[64,64]"]
    )
    dm = instantiate(cfg.data)
    out = write_unlabelled_manifest({"syn": dm}, tmp_path / "unl.csv")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    m = dm.load()
    train = dm.rows("train")
    assert sorted(int(r["source_row"]) for r in rows) == sorted(train.tolist())
    held_out = set(m.patient_ids[m.splits != "train"].tolist())
    assert held_out and not {r["patient_id"].split(":", 1)[1] for r in rows} & held_out
    assert {r["split"] for r in rows} == {"train"}
    unl = load_manifest(out, task="binary", classes=["a", "b"], read_labels=False)
    assert len(unl) == len(train) and set(unl.paths) == set(m.paths[train])


# -- pretrain -> fine-tune -----------------------------------------------------------------------
TINY_PRETRAIN = [
    "data.preprocess.image_size=32",
    "data.num_workers=0",
    "data.batch_size=16",
    "data.manifest.n_images=40",
    "data.manifest.size_range=[64,64]",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
]


def test_pretrained_backbone_starts_fine_tuning(tmp_path):
    from chestxr.pretrain import pretrain

    cfg = compose_config("pretrain", tmp_path / "pre", TINY_PRETRAIN)
    ckpt_path, objects = pretrain(cfg)
    pretrained = objects["model"]
    assert objects["trainer"].global_step >= 1
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert saved["chestxr"]["kind"] == "pretrained_backbone"
    assert saved["chestxr"]["data"]["split"] == "train"
    assert saved["chestxr"]["data"]["scans"] == len(objects["datamodule"].rows("train"))

    # the classifier, as chestxr.train builds it, starts from exactly the pretrained backbone
    train_cfg = compose_config(
        "train", tmp_path / "fine", [*TINY_PRETRAIN[:5], f"model.init_checkpoint={ckpt_path}"]
    )
    classifier = instantiate(train_cfg.model)
    pre_state = pretrained.net.state_dict()
    fine_state = classifier.net.state_dict()
    assert set(fine_state) - set(pre_state) == {"fc.weight", "fc.bias"}
    for key, value in pre_state.items():
        assert torch.equal(fine_state[key].cpu(), value.cpu()), key
    # and the random init differs (so the check above can fail)
    scratch = instantiate(compose_config("train", tmp_path / "s", TINY_PRETRAIN[:5]).model)
    assert not torch.equal(scratch.net.state_dict()["conv1.weight"], pre_state["conv1.weight"])
    # normalisation is one fact: the pretraining config's equals the classifier's
    assert dict(cfg.model.normalization) == dict(train_cfg.model.normalization)
    assert float(classifier.mean) == float(pretrained.mean)


# -- the bar: a linear probe on the pretrained backbone beats one on a random backbone ----
PROBE_LOADING = ["data.preprocess.image_size=32", "data.num_workers=0", "data.cache=memory"]
PROBE_DATA = [*PROBE_LOADING, "data.manifest.n_images=200", "data.manifest.size_range=[96,128]"]


def probe_auc(net: torch.nn.Module, dm) -> float:
    """Held-out AUC of a logistic regression on the frozen pooled features of ``net``.

    Batch-norm statistics are first re-estimated on the clean train images (for both backbones:
    a random one has none of its own), then the probe is fitted on train and scored on val + test.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from torch.utils.data import DataLoader

    from chestxr.models.ssl import pooled_features

    def loader(split: str) -> DataLoader:
        return DataLoader(dm.dataset(split, train=False), batch_size=256)

    fc, net.fc = net.fc, None
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    net.train()
    with torch.no_grad():
        for batch in loader("train"):
            net((batch["image"] - 0.5) / 0.25)
    net.fc = fc
    x_train, y_train = pooled_features(net, loader("train"), mean=0.5, std=0.25)
    held = [pooled_features(net, loader(s), mean=0.5, std=0.25) for s in ("val", "test")]
    x_test, y_test = np.concatenate([x for x, _ in held]), np.concatenate([y for _, y in held])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    clf.fit(x_train, y_train[:, 0])
    return float(roc_auc_score(y_test[:, 0], clf.predict_proba(x_test)[:, 1]))


@pytest.mark.slow
def test_linear_probe_on_pretrained_backbone_beats_random(tmp_path):
    from chestxr.models.pretrained import init_from_checkpoint
    from chestxr.models.resnet import build_resnet18
    from chestxr.pretrain import pretrain

    labelled = instantiate(compose_config("train", tmp_path, PROBE_DATA).data)
    unlabelled = write_unlabelled_manifest({"synthetic": labelled}, tmp_path / "unlabelled.csv")
    cfg = compose_config(
        "pretrain",
        tmp_path / "pre",
        [
            *PROBE_LOADING,
            "data=manifest",
            f"data.manifest={unlabelled}",
            "data.batch_size=32",
            "model.views.crop_scale=[0.5,1.0]",  # 32 px: gentler crops than the 224 px default
            "trainer.max_epochs=20",
            "trainer.precision=32-true",
            "trainer.enable_progress_bar=false",
            "seed=0",
        ],
    )
    ckpt, _ = pretrain(cfg)
    pretrained = build_resnet18(1)
    init_from_checkpoint(pretrained, ckpt, num_outputs=1)
    torch.manual_seed(0)
    random_init = build_resnet18(1)
    auc_random, auc_pretrained = probe_auc(random_init, labelled), probe_auc(pretrained, labelled)
    assert auc_pretrained >= auc_random + 0.05, (auc_pretrained, auc_random)


PRETRAIN_EXPERIMENTS = sorted(
    p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("pretrain_*.yaml")
)


@pytest.mark.parametrize("experiment", PRETRAIN_EXPERIMENTS)
def test_pretrain_experiments_instantiate(tmp_path, experiment):
    from chestxr.models.ssl import SimCLRPretraining

    cfg = compose_config("pretrain", tmp_path, [f"experiment={experiment}"])
    assert cfg.data.read_labels is False and cfg.data.augment is None
    assert isinstance(instantiate(cfg.model), SimCLRPretraining)
    instantiate(cfg.data)  # the manifest is read only when the run starts


@pytest.mark.parametrize("experiment", ["kermany", "nih_pneumonia"])
def test_ssl_experiments_start_where_pretraining_writes(tmp_path, experiment):
    pre = compose_config("pretrain", tmp_path, ["experiment=pretrain_shared"])
    written = f"{pre.hydra.run.dir}/checkpoints/backbone.ckpt"
    for variant in ("ssl", "ssl_probe"):
        cfg = compose_config("train", tmp_path, [f"experiment={experiment}_{variant}"])
        base = compose_config("train", tmp_path, [f"experiment={experiment}"])
        assert cfg.model.init_checkpoint == written
        assert cfg.data == base.data  # same scans, split and seed as the from-scratch run
        assert cfg.model.finetune.strategy == ("linear_probe" if variant == "ssl_probe" else "full")
    # pretraining sees these scans as fine-tuning does
    assert pre.data.preprocess.image_size == base.data.preprocess.image_size


def test_resume_refuses_another_runs_folder(tmp_path):
    """``ckpt_path=`` of one run into a folder holding another run's outputs is refused before
    anything is read or written, as chestxr.train refuses it."""
    from chestxr.pretrain import pretrain

    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, ckpt)
    cfg = compose_config("pretrain", tmp_path / "second", [*TINY_PRETRAIN, f"ckpt_path={ckpt}"])
    (Path(cfg.paths.output_dir) / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="belongs to another run"):
        pretrain(cfg)
    assert not list((Path(cfg.paths.output_dir) / "checkpoints").iterdir())


def test_pretraining_keeps_a_resumable_checkpoint_of_every_epoch(tmp_path):
    """An hour of pretraining killed in its last epoch resumes from the one before: last.ckpt is
    written after every epoch (Lightning's save_last alone writes it only when training ends)."""
    from chestxr.pretrain import pretrain

    overrides = [*TINY_PRETRAIN, "trainer.max_epochs=3"]
    overrides += ["+callbacks.probe._target_=tests.helpers.checkpoints.LastCheckpointProbe"]
    overrides += [f"+callbacks.probe.path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"]
    cfg = compose_config("pretrain", tmp_path, overrides)
    path, objects = pretrain(cfg)
    probe = next(c for c in objects["trainer"].callbacks if hasattr(c, "seen"))
    assert probe.seen == [0, 1]
    assert sorted(p.name for p in path.parent.iterdir()) == ["backbone.ckpt", "last.ckpt"]
