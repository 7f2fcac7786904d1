"""Every config group composes and instantiates; bad keys fail with the key named."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

from chestxr.data.datamodule import RadiographDataModule
from chestxr.models.module import ChestXRClassifier
from chestxr.train import instantiate_group
from chestxr.utils.hardware import resolve_precision
from tests.conftest import REPO_ROOT, compose_config

DATA = sorted(p.stem for p in (REPO_ROOT / "conf" / "data").glob("*.yaml") if p.stem != "base")
TRAINERS = sorted(p.stem for p in (REPO_ROOT / "conf" / "trainer").glob("*.yaml"))
EXPERIMENTS = sorted(
    p.stem
    for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml")
    if not p.stem.startswith("pretrain_")  # for chestxr.pretrain: tests/test_pretrain.py
)


@pytest.mark.parametrize("data", DATA)
def test_data_configs_instantiate(tmp_path, data):
    overrides = [f"data={data}"]
    if data not in ("synthetic", "synthetic_multilabel"):
        overrides += ["data.manifest=/nowhere/manifest.csv"]
        if data == "manifest":
            overrides += ["data.classes=[A,B]"]
    cfg = compose_config("train", tmp_path, overrides)
    dm = instantiate(cfg.data)
    assert isinstance(dm, RadiographDataModule)
    model = instantiate(cfg.model)
    assert isinstance(model, ChestXRClassifier)
    assert model.output_names == dm.output_names  # classes referenced once, from the data config


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_callbacks_logger_instantiate(tmp_path, trainer):
    cfg = compose_config("train", tmp_path, [f"trainer={trainer}"])
    if cfg.trainer.accelerator == "gpu":
        pytest.skip("no GPU here")  # the config composes; the Trainer needs a device
    callbacks = instantiate_group(cfg.callbacks)
    loggers = instantiate_group(cfg.logger)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    t = instantiate(cfg.trainer, precision=precision, callbacks=callbacks, logger=loggers)
    assert t.checkpoint_callback.monitor == "val/auc"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(tmp_path, experiment):
    cfg = compose_config("train", tmp_path, [f"experiment={experiment}"])
    assert cfg.data.classes


@pytest.mark.parametrize("name", ["evaluate", "report"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_evaluate_and_report_take_the_experiment_train_took(tmp_path, name, experiment):
    """``experiment=X`` (as in training, no ``+``) gives evaluate and report that experiment's
    data: the held-out scans of the run they judge."""
    trained = compose_config("train", tmp_path, [f"experiment={experiment}"])
    cfg = compose_config(name, tmp_path, [f"experiment={experiment}", "ckpt_path=m.ckpt"])
    assert cfg.data == trained.data


@pytest.mark.parametrize("name", ["evaluate", "report", "predict"])
def test_entry_configs_need_a_checkpoint(tmp_path, name):
    if not (REPO_ROOT / "conf" / f"{name}.yaml").exists():
        pytest.skip(f"conf/{name}.yaml not present")
    cfg = compose_config(name, tmp_path)
    with pytest.raises(MissingMandatoryValue, match="ckpt_path"):
        _ = cfg.ckpt_path


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigCompositionException, match="manifst"):
        compose_config("train", tmp_path, ["data.manifst=foo.csv"])


def test_manifest_without_classes_names_the_key(tmp_path):
    cfg = compose_config("train", tmp_path, ["data=manifest", "data.manifest=x.csv"])
    with pytest.raises(MissingMandatoryValue, match="classes"):
        instantiate(cfg.data)


def test_finding_lists_match_the_adapters(tmp_path):
    from chestxr.data.adapters.chexpert import CHEXPERT_FINDINGS
    from chestxr.data.adapters.nih import NIH_FINDINGS

    for data, findings in [("nih14", NIH_FINDINGS), ("chexpert", CHEXPERT_FINDINGS)]:
        cfg = compose_config("train", tmp_path, [f"data={data}", "data.manifest=x.csv"])
        assert list(cfg.data.classes) == list(findings)


def test_imagenet_model_config_carries_the_grey_normalisation(tmp_path):
    from chestxr.models.pretrained import grey_normalisation

    cfg = compose_config("train", tmp_path, ["model=resnet18_imagenet"])
    mean, std = grey_normalisation()
    assert cfg.model.normalization.mean == pytest.approx(mean, abs=1e-4)
    assert cfg.model.normalization.std == pytest.approx(std, abs=1e-4)
    assert cfg.model.pretrained == "imagenet"


def test_trainer_saves_checkpoints_atomically(tmp_path):
    from chestxr.models.checkpoint_io import AtomicCheckpointIO

    cfg = compose_config("train", tmp_path, ["trainer=cpu"])
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    t = instantiate(cfg.trainer, precision=precision, callbacks=[], logger=False)
    assert isinstance(t.strategy.checkpoint_io, AtomicCheckpointIO)
