"""Speed and memory measurements of chestxr: a script run by hand, not a test.

Every figure is measured against its baseline in the same run (the machine is shared and noisy:
read the ratios), warm-up excluded, median over repeats. Sections:

1. training step: a bare PyTorch loop in four precisions / memory formats, then chestxr's Lightning
   path (disk cache, workers, augmentation) over the bare loop with the same settings;
2. data pipeline per worker, in a fresh process: DICOM decode, a naive MONAI chain, chestxr's
   first (caching) pass, its cached pass, and the cached pass with the training augmentation;
3. inference: ``predict_dataset`` with and without Grad-CAM over a bare forward, each in a fresh
   process for its peak resident memory, over a stream of scans (reading overlaps the network);
4. manifest scale: ``bench_manifest.main`` (200,000 rows) in a fresh process, and the patient
   bootstrap of an evaluation: ``bench_bootstrap.main`` (1,000 resamples of 1,000 and 25,000 scans);
5. cache scale: ``bench_cache.main`` (a 200,000-entry store of 32 x 32 images) in a fresh process;
6. report: ``bench_report.main``, size per scan and opening time in headless Chromium of
   ``report.html`` for 100 and 2,000 scans;
7. end to end: the README's main command from an empty data and cache folder, its wall time split
   into data generation, first epoch, later epochs, test, evaluation and report.

Run: ``python benchmarks/run.py`` (~9 min on 2 idle cores) or ``--quick`` (tiny sizes, < 4 min).
Writes ``benchmarks/results/benchmarks.json`` (``benchmarks_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from monai.data import Dataset
from monai.transforms import Compose, LoadImage, Resize, ScaleIntensity
from omegaconf import OmegaConf

from chestxr import keys
from chestxr.data.batch_augment import BatchAugment
from chestxr.data.cache import CachedDataset, CacheStore
from chestxr.data.datamodule import RadiographDataModule, make_items
from chestxr.data.manifest import load_manifest
from chestxr.data.synthetic import ensure_synthetic
from chestxr.data.transforms import compose, preprocessing
from chestxr.explain.cam import compute_cams
from chestxr.inference import infer_batches, predict_dataset
from chestxr.models.module import ChestXRClassifier
from chestxr.models.resnet import build_resnet18
from chestxr.utils.hardware import autocast, best_precision, cpu_supports_bf16

log = logging.getLogger("benchmarks")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2
CLASSES = ["normal", "opacity"]
OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
VARIANTS = {  # name: (Lightning precision, channels_last)
    "fp32": ("32-true", False),
    "fp32 + channels_last": ("32-true", True),
    "bf16 autocast": ("bf16-mixed", False),
    "bf16 + channels_last": ("bf16-mixed", True),
}


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is (the full run, or ``--quick`` for smoke tests)."""

    px: int = 224  # network input side
    batch: int = 32
    steps: int = 3  # timed training steps per variant (after one warm-up step)
    slow_batch: int = 4  # batch and steps for bf16 where the CPU emulates it
    slow_steps: int = 2
    fit_batches: int = 41  # Lightning batches per fit; the first is warm-up
    fit_block: int = 5  # bare-loop steps run after every fit_block-th batch (interleaved)
    fit_repeats: int = 2  # fits of each kind (interleaved), to report the spread
    n_dicoms: int = 40  # large DICOMs of sections 2 and 3
    dicom_size: tuple[int, int] = (1536, 2048)
    repeats: int = 3  # passes over the DICOMs (median)
    inference_turns: int = 5  # runs of each inference way, each between two bare runs
    stream_passes: int = 3  # section 3 reads the DICOMs this many times over (a longer stream)
    main_command_overrides: tuple[str, ...] = ()  # section 6: the README's command as it is
    manifest_rows: int = 200_000
    bootstrap_scans: tuple[int, ...] = (1000, 25_000)  # section 4: scans per bootstrap
    cache_entries: int = 200_000  # section 5: entries of 32 x 32 px in one store


QUICK = Sizes(
    px=32,
    batch=4,
    steps=1,
    slow_batch=2,
    slow_steps=1,
    fit_batches=3,
    fit_block=1,
    fit_repeats=1,
    n_dicoms=4,
    dicom_size=(256, 320),
    repeats=1,
    inference_turns=1,
    stream_passes=1,
    main_command_overrides=("debug=fast",),
    manifest_rows=20_000,
    bootstrap_scans=(1000,),
    cache_entries=20_000,
)


# -- helpers --------------------------------------------------------------------------------------
def measure(
    ways: dict[str, Callable[[], Any]],
    repeats: int | dict[str, int],
    warmups: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per timed call of each way, after one untimed warm-up call of each.

    The ways take turns (round robin), so a change in the machine's load hits them all alike and
    their ratios stay fair.

    Args:
        ways: name -> the work to time.
        repeats: timed calls of each way (or name -> count).
        warmups: name -> the untimed first call (default: the way itself); a small piece of the
            same work saves time where the whole is long.
    """
    counts = repeats if isinstance(repeats, dict) else dict.fromkeys(ways, repeats)
    for name, fn in ways.items():
        (warmups or {}).get(name, fn)()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for turn in range(max(counts.values())):
        for name, fn in ways.items():
            if turn < counts[name]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def rate(items: int, times: list[float]) -> float:
    """Items per second from the median of the timings."""
    return float(items / statistics.median(times))


def over(items: list[Any], work: Callable[[Any], Any]) -> Callable[[int], None]:
    """A function doing ``work`` on the first ``k`` items (``k`` small for the warm-up)."""

    def run(k: int) -> None:
        for item in items[:k]:
            work(item)

    return run


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process so far, in MB, read two ways.

    ``ru_maxrss`` (``getrusage``) survives ``fork`` and ``exec``: a child of a big process starts
    at its parent's size, so :func:`in_subprocess` starts children through a shell that forks.
    ``VmHWM`` (``/proc/self/status``) belongs to the current address space only: the cross-check.
    """
    hwm = float("nan")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return {
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vmhwm": hwm,
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "python": platform.python_version(),
    }


def synthetic_set(folder: str, n: int, size_range: tuple[int, int]) -> Path:
    """A synthetic DICOM set under ``results/folder``, generated once and reused."""
    return ensure_synthetic(RESULTS / folder, n_images=n, size_range=size_range, seed=0)


def big_dicoms(sizes: Sizes) -> Path:
    """The large DICOMs of sections 2 and 3 (``results/dicom_cache``)."""
    return synthetic_set("dicom_cache", sizes.n_dicoms, sizes.dicom_size)


def data_defaults(sizes: Sizes) -> tuple[dict[str, Any], dict[str, Any]]:
    """chestxr's default preprocessing and augmentation (``conf/data/base.yaml``), at ``px``."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/data/base.yaml"))
    return {**cfg["preprocess"], "image_size": sizes.px}, cfg["augment"]


def classifier(preprocess: dict[str, Any]) -> ChestXRClassifier:
    """chestxr's model with its defaults (channels_last), random weights."""
    return ChestXRClassifier(
        task="binary", classes=CLASSES, preprocess=preprocess, optimizer=OPTIMIZER
    )


# -- 1. training step -----------------------------------------------------------------------------
def bare_step(precision: str, channels_last: bool, batch: int, px: int) -> Callable[[], None]:
    """One AdamW step of a fresh ResNet-18 on a fixed in-memory batch, BCE with logits."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    net = build_resnet18(1).to(memory_format=fmt).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, px, px).contiguous(memory_format=fmt)
    y = (torch.rand(batch, 1) > 0.5).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), precision):
            loss = F.binary_cross_entropy_with_logits(net(x).float(), y)
        loss.backward()
        opt.step()

    return step


def train_bare(sizes: Sizes) -> dict[str, Any]:
    """Images/s of a bare PyTorch training step in each precision and memory format."""
    steps, batches, emulated = {}, {}, {}
    for name, (precision, channels_last) in VARIANTS.items():
        emulated[name] = precision.startswith("bf16") and not cpu_supports_bf16()
        batches[name] = sizes.slow_batch if emulated[name] else sizes.batch
        steps[name] = bare_step(precision, channels_last, batches[name], sizes.px)
    counts = {n: sizes.slow_steps if emulated[n] else sizes.steps for n in VARIANTS}
    times = measure(steps, counts)
    out = {
        name: {
            "images_per_s": rate(batches[name], times[name]),
            "batch": batches[name],
            "steps": counts[name],
            "emulated_bf16": emulated[name],
        }
        for name in VARIANTS
    }
    # chestxr's model is channels_last by default; the precision comes from best_precision
    picked = next(n for n, v in VARIANTS.items() if v == (best_precision("cpu"), True))
    fastest = max(out, key=lambda n: out[n]["images_per_s"])
    log.info("1a: %s", {n: round(v["images_per_s"], 2) for n, v in out.items()})
    return {"variants": out, "picked": picked, "fastest": fastest}


class InterleavedTimer(L.Callback):
    """Times each training batch, and every ``block`` batches times ``block`` bare-loop steps.

    The bare steps run inside the fit (between two batches, outside their timed intervals), so
    the two are sampled alternately over the same minutes: the machine's speed drifts by 10-20%
    over a few minutes (a shared host), more than the gap being measured.
    """

    def __init__(self, bare: Callable[[], None], block: int, read_ahead: int = 0) -> None:
        self.bare, self.block, self.read_ahead = bare, block, read_ahead
        self.fit_s: list[float] = []  # end of one batch to the end of the next: loading included
        self.bare_s: list[float] = []
        self._mark: float | None = None
        self._skip = 0

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, out: Any, batch: Any, i: int):
        now = time.perf_counter()
        if self._mark is not None and self._skip == 0:
            self.fit_s.append(now - self._mark)
        self._skip = max(0, self._skip - 1)
        if i > 0 and i % self.block == 0:
            # loader workers read ahead while the bare steps run: the batches they had ready
            # would time the fit without its loading, so those intervals are left out
            self._skip = self.read_ahead
            for _ in range(self.block):
                t0 = time.perf_counter()
                self.bare()
                self.bare_s.append(time.perf_counter() - t0)
        self._mark = time.perf_counter()


def fit_speed(
    sizes: Sizes, dm: RadiographDataModule, work: Path, bare: Callable[[], None]
) -> tuple[float, float]:
    """Images/s of ``Trainer.fit`` over ``sizes.fit_batches`` batches (the first one excluded)
    and of the bare loop run in blocks between its batches."""
    read_ahead = dm.num_workers * 2  # DataLoader's default prefetch_factor
    timer = InterleavedTimer(bare, sizes.fit_block, read_ahead)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=sizes.fit_batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
        precision=best_precision("cpu"),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
        default_root_dir=work,
    )
    torch.manual_seed(0)
    trainer.fit(classifier(dm.preprocess), datamodule=dm)
    return rate(sizes.batch, timer.fit_s), rate(sizes.batch, timer.bare_s)


def train_lightning(sizes: Sizes, work: Path) -> dict[str, Any]:
    """Images/s of chestxr's Lightning fit (disk cache filled first, loader workers as
    ``num_workers=auto`` picks them, batched augmentation) over the bare loop.

    Fits with and without augmentation alternate, ``fit_repeats`` times each; every fit is
    compared with the bare loop run in blocks between its own batches (:class:`InterleavedTimer`).
    The median ratio is reported with the spread between repeats.
    """
    n = sizes.batch * sizes.fit_batches
    manifest = synthetic_set("synthetic", int(n * 1.15) + 8, (256, 320))
    preprocess, augment = data_defaults(sizes)
    modules = {
        name: RadiographDataModule(
            manifest,
            task="binary",
            classes=CLASSES,
            preprocess=preprocess,
            augment=aug,
            split={"val_fraction": 0.1, "test_fraction": 0.0, "seed": 0},
            batch_size=sizes.batch,
            num_workers="auto",
            cache="disk",
            cache_dir=RESULTS / "preprocessed",
            report_dir=work,
        )
        for name, aug in (("augmented", augment), ("no_augmentation", None))
    }
    dm = modules["augmented"]
    for split in ("train", "val"):  # fill the disk cache (untimed)
        ds = dm.dataset(split, train=False)
        for i in range(len(ds)):
            ds[i]
    precision = best_precision("cpu")
    step = bare_step(precision, True, sizes.batch, sizes.px)
    for _ in range(3):
        step()  # warm-up
    speeds: dict[str, list[float]] = {"augmented": [], "no_augmentation": [], "bare": []}
    ratios: dict[str, list[float]] = {"augmented": [], "no_augmentation": []}
    for _ in range(sizes.fit_repeats):
        for name, m in modules.items():
            speed, bare = fit_speed(sizes, m, work, step)
            speeds[name].append(speed)
            speeds["bare"].append(bare)
            ratios[name].append(speed / bare)
    med = {k: statistics.median(v) for k, v in speeds.items()}
    ratio = {k: statistics.median(v) for k, v in ratios.items()}
    spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in speeds.items()}
    ratio_spread = {k: max(v) - min(v) for k, v in ratios.items()}
    log.info("1b: %s, ratios %s", {k: round(v, 2) for k, v in med.items()}, ratios)
    return {
        "images_per_s": med["augmented"],
        "no_augmentation_images_per_s": med["no_augmentation"],
        "bare_images_per_s": med["bare"],
        "ratio_to_bare": ratio["augmented"],
        "no_augmentation_ratio_to_bare": ratio["no_augmentation"],
        "ratios": ratios,
        "ratio_spread": ratio_spread,
        "runs": speeds,
        "spread": spread,
        "batch": sizes.batch,
        "steps": sizes.fit_batches - 1,
        "repeats": sizes.fit_repeats,
        "precision": precision,
        "channels_last": True,
        "num_workers": dm.num_workers,
        "train_images": len(dm.rows("train")),
    }


# -- 2. data pipeline -----------------------------------------------------------------------------
def pipeline(sizes: Sizes, work: Path) -> dict[str, Any]:
    """Images/s of one process turning DICOM files into (1, S, S) tensors, five ways.

    Runs on one thread, as a DataLoader worker does (PyTorch sets one thread in each worker).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pipeline(sizes, work)
    finally:
        torch.set_num_threads(threads)


def _pipeline(sizes: Sizes, work: Path) -> dict[str, Any]:
    items = make_items(load_manifest(big_dicoms(sizes), task="binary", classes=CLASSES))
    n = len(items)
    preprocess, augment = data_defaults(sizes)
    chain = preprocessing(**preprocess)
    naive = Compose(
        [
            LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True),
            Resize((sizes.px, sizes.px)),
            ScaleIntensity(),
        ]
    )

    def disk_cached(chosen: list[dict[str, Any]], transforms: list, folder: Path) -> CachedDataset:
        store = CacheStore(folder, settings="bench")
        kw = {"image_key": keys.IMAGE, "typed_keys": [keys.TARGET]}
        return CachedDataset(chosen, compose(transforms), store, **kw)

    def first_pass(k: int) -> None:  # into a fresh, empty disk cache each time
        folder = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
        ds = disk_cached(items[:k], chain, folder)
        over(list(range(k)), ds.__getitem__)(k)
        ds.store.close()
        shutil.rmtree(folder)

    filled = work / "filled"
    cached = disk_cached(items, chain, filled)
    over(list(range(n)), cached.__getitem__)(n)  # fill the cache (untimed)
    stored = cached.store.stats()
    batch_augment = BatchAugment(**augment)

    def cached_augmented(k: int) -> None:  # the training path: cached reads, batched augmentation
        for start in range(0, k, sizes.batch):
            idx = range(start, min(k, start + sizes.batch))
            images = torch.stack([torch.as_tensor(cached[i][keys.IMAGE]) for i in idx])
            batch_augment(images, list(idx))

    ways = {
        "decode": over(items, lambda it: pydicom.dcmread(it[keys.PATH]).pixel_array),
        "monai_chain": over(items, lambda it: naive(it[keys.PATH])),
        "first_pass": first_pass,
        "cached": over(list(range(n)), cached.__getitem__),
        "cached_augmented": cached_augmented,
    }
    times = measure(
        {name: partial(run, n) for name, run in ways.items()},
        sizes.repeats,
        {name: partial(run, 2) for name, run in ways.items()},
    )
    out = {name: rate(n, t) for name, t in times.items()}
    log.info("2: %s", {n: round(v, 1) for n, v in out.items()})
    out["cache_bytes_per_scan"] = stored["shard_bytes"] / n
    return {"n_files": n, "size_range": list(sizes.dicom_size), "threads": 1, **preprocess, **out}


# -- 3. inference (each measurement in its own process) -------------------------------------------
def inference(sizes: Sizes, kind: str) -> dict[str, Any]:
    """Scans/s and peak memory of one way of scoring scans; run in a fresh process.

    ``bare``: ``model.net`` forward on in-memory batches (inference mode, fp32); ``cam_bare``:
    Grad-CAM on those batches; ``predict``: ``predict_dataset`` from the DICOM files;
    ``predict_cam``: the one inference loop with Grad-CAM (``infer_batches(cam_method=...)``,
    scores and maps from one forward), as ``predict cams=true`` runs it, before the overlays are
    drawn. The DICOMs are read ``stream_passes`` times over (each read decodes the file again),
    so the measure is the steady state of a long stream, where reading overlaps the network.
    """
    preprocess, _ = data_defaults(sizes)
    torch.manual_seed(0)
    model = classifier(preprocess).eval()
    x = torch.rand(sizes.batch, 1, sizes.px, sizes.px)
    items = make_items(load_manifest(big_dicoms(sizes), task="binary", classes=CLASSES))
    ds = Dataset(items * sizes.stream_passes, compose(preprocessing(**preprocess)))
    rss_setup = peak_rss_mb()
    batches = sizes.stream_passes  # in-memory batches per bare / CAM timing

    def cams(images: torch.Tensor) -> np.ndarray:
        return compute_cams(model, images, method="gradcam", target_layer="net.layer4")

    @torch.inference_mode()
    def bare(k: int) -> None:
        inp = ((x[:k] - model.mean) / model.std).contiguous(memory_format=torch.channels_last)
        for _ in range(batches):
            model.net(inp)

    def cam_bare(k: int) -> None:
        for _ in range(batches):
            cams(x[:k])

    def predict(k: int) -> None:
        sub = torch.utils.data.Subset(ds, range(k))
        if kind == "predict_cam":  # as predict cams=true: each scan read once, one forward
            loader = torch.utils.data.DataLoader(sub, batch_size=sizes.batch)
            for _ in infer_batches(model, loader, cam_method="gradcam", precision="32-true"):
                pass
        else:
            predict_dataset(model, sub, batch_size=sizes.batch)

    def warmup() -> None:  # kernels for the batch shape, imports and decoders
        bare(len(x))
        if kind != "bare":
            cams(x)
        if kind.startswith("predict"):
            predict(2)

    run, n = {
        "bare": (bare, len(x) * batches),
        "cam_bare": (lambda k: cam_bare(len(x)), len(x) * batches),
        "predict": (predict, len(ds)),
        "predict_cam": (predict, len(ds)),
    }[kind]
    # the bare forward, timed in turn with this way in this process: the ratio's baseline
    # each run of this way is compared with the bare runs just before and after it (the machine's
    # speed drifts over minutes); the ratio is the median over the turns
    ways = {"bare": partial(bare, len(x)), kind: partial(run, n)}
    turns = sizes.inference_turns
    times = measure(ways, {kind: turns, "bare": turns + 1}, {kind: warmup})
    per_bare = [t / (len(x) * batches) for t in times["bare"]]
    if kind == "bare":  # one way, its runs on both sides
        times = {"bare": times["bare"][1:]}
    ratios = [  # the bare way against itself: the bare runs before and after each turn
        (per_bare[t] + per_bare[t + 1]) / 2 / (times[kind][t] / n) for t in range(turns)
    ]
    return {
        "scans_per_s": rate(n, times[kind]),
        "ratio_to_bare": statistics.median(ratios),
        "ratios": ratios,
        "scans": n,
        "batch": sizes.batch,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_setup_mb": rss_setup,
    }


# -- 6. end to end: the README's main command -----------------------------------------------------
def end_to_end(sizes: Sizes) -> dict[str, Any]:
    """The README's main command (``python -m chestxr.train``, or a smaller run with --quick) in
    a fresh process with an empty data and cache folder: its wall time and where it went
    (``timings.json``: data generation, first epoch with the caching pass, later epochs, test,
    evaluation, report)."""
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "chestxr.train", f"paths.cache_dir={Path(tmp) / 'cache'}"]
        cmd += [f"hydra.run.dir={run}", *sizes.main_command_overrides]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"the main command failed:\n{proc.stderr[-3000:]}")
        timings = json.loads((run / "timings.json").read_text())
        auc = json.loads((run / "evaluation" / "metrics.json").read_text())
    return {"command": " ".join(cmd[1:3] + list(sizes.main_command_overrides)), "wall_s": wall,
            "timings": timings, "test_metrics": auc}  # fmt: skip


def in_subprocess(section: str, quick: bool) -> dict[str, Any]:
    """Run ``--section`` in a fresh Python process and return its result."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--section", section, "--result", str(result)]
        cmd += ["--quick"] * quick
        # sh forks the child (the command is not its last), so the child's ru_maxrss starts
        # afresh instead of at this process's size (getrusage keeps it across fork and exec)
        shell = ["sh", "-c", '"$@"; exit $?', "sh"]
        proc = subprocess.run(shell + cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"section {section} failed:\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def run_section(section: str, sizes: Sizes) -> dict[str, Any]:
    """One measurement in this (fresh) process: an inference kind, or ``manifest``."""
    if section == "manifest":
        import bench_manifest  # benchmarks/bench_manifest.py, next to this script

        return {**bench_manifest.main(sizes.manifest_rows), "peak_rss": peak_rss_mb()}
    if section == "bootstrap":
        import bench_bootstrap  # benchmarks/bench_bootstrap.py

        return bench_bootstrap.main(sizes.bootstrap_scans)
    if section == "cache":
        import bench_cache  # benchmarks/bench_cache.py

        return bench_cache.main(sizes.cache_entries)
    if section == "report":
        import bench_report  # benchmarks/bench_report.py

        return bench_report.main(quick=sizes is QUICK)
    if section == "pipeline":  # a fresh process, as a loader worker or a new run starts
        with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
            return pipeline(sizes, Path(tmp))
    if section == "end_to_end":
        return end_to_end(sizes)
    return inference(sizes, section)


# -- table ----------------------------------------------------------------------------------------
# issue #14's targets: each way of scoring over the bare forward in the same process
INFERENCE_TARGETS = {"cam_bare": 0.80, "predict": 0.80, "predict_cam": 0.60}


def _target(ratio: float) -> str:
    return f">= 0.95: {_met(ratio >= 0.95)}"


def _ratios(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Table rows: section, measurement, value, ratio to its baseline, target."""
    train, fit, pipe, inf, man, cache = (
        r[k] for k in ("train", "lightning", "pipeline", "inference", "manifest", "cache")
    )
    out = []
    fp32 = train["variants"]["fp32"]["images_per_s"]
    for name, m in train["variants"].items():
        label = name + (" (picked)" if name == train["picked"] else "")
        label += f", batch {m['batch']}" + (", emulated bf16" if m["emulated_bf16"] else "")
        speed = m["images_per_s"]
        out.append(
            ("1a train, bare", label, f"{speed:.2f} img/s", f"{speed / fp32:.2f} x fp32", "")
        )
    out.append(("1a", "picked is the fastest", str(train["picked"] == train["fastest"]), "", ""))
    speed, bare = fit["images_per_s"], fit["bare_images_per_s"]
    ratio, spread = fit["ratio_to_bare"], fit["ratio_spread"]
    out.append(
        (
            "1b train, chestxr",
            f"Lightning fit, {fit['precision']}, channels_last, {fit['num_workers']} workers, "
            f"batch {fit['batch']}, {fit['steps']} steps x {fit['repeats']}, batched augmentation",
            f"{speed:.2f} img/s",
            f"{ratio:.2f} x bare ({bare:.2f} img/s, same settings; bare loop run between the fit's "
            f"batches; ratios {_ratios(fit['ratios']['augmented'])}, "
            f"spread {spread['augmented']:.2f})",
            f">= 0.90: {_met(ratio >= 0.9)}",
        )
    )
    speed, ratio = fit["no_augmentation_images_per_s"], fit["no_augmentation_ratio_to_bare"]
    out.append(
        (
            "1b",
            "same fit without augmentation",
            f"{speed:.2f} img/s",
            f"{ratio:.2f} x bare (ratios {_ratios(fit['ratios']['no_augmentation'])}, "
            f"spread {spread['no_augmentation']:.2f})",
            _target(ratio),
        )
    )
    labels = {
        "decode": "pydicom dcmread + pixel_array (baseline)",
        "monai_chain": "MONAI LoadImage + Resize + ScaleIntensity",
        "first_pass": "chestxr first pass (decode, window, resize, write cache)",
        "cached": "chestxr cached pass",
        "cached_augmented": "chestxr cached pass + augmentation",
    }
    for name, label in labels.items():
        speed = pipe[name]
        ratio = f"{speed / pipe['decode']:.2f} x decode"
        out.append(("2 data, 1 process, 1 thread", label, f"{speed:.1f} img/s", ratio, ""))
    first_monai = pipe["first_pass"] / pipe["monai_chain"]
    cached_first = pipe["cached"] / pipe["first_pass"]
    out.append(
        (
            "2",
            "first pass / MONAI chain",
            f"{first_monai:.1f}",
            "",
            f">= 4: {_met(first_monai >= 4)}",
        )
    )
    out.append(
        ("2", "cached / first pass", f"{cached_first:.1f}", "", f">= 5: {_met(cached_first >= 5)}")
    )
    per_scan = pipe["cache_bytes_per_scan"]
    float_bytes = 4 * pipe["image_size"] ** 2
    label = f"disk cache bytes per scan at {pipe['image_size']} px (16-bit)"
    out.append(("2", label, f"{per_scan:,.0f} B", f"{per_scan / float_bytes:.2f} x float32", ""))
    for name in ("cached", "cached_augmented"):
        feed = 2 * pipe[name]
        out.append(
            (
                "2",
                f"2 workers x {labels[name].removeprefix('chestxr ')} vs 1b",
                f"{feed:.0f} vs {fit['images_per_s']:.1f} img/s",
                f"{feed / fit['images_per_s']:.0f} x",
                f"outpace: {_met(feed > fit['images_per_s'])}",
            )
        )
    labels = {
        "bare": "bare forward, in-memory batch (baseline)",
        "cam_bare": "Grad-CAM, in-memory batch",
        "predict": "predict_dataset from DICOM",
        "predict_cam": "predict + Grad-CAM from DICOM (each scan read once, as predict and report)",
    }
    for name, label in labels.items():
        m = inf[name]
        value = f"{m['scans_per_s']:.1f} scans/s, peak {m['peak_rss_mb']['ru_maxrss']:.0f} MB"
        bare = m["scans_per_s"] / m["ratio_to_bare"]
        ratio = f"{m['ratio_to_bare']:.2f} x bare ({bare:.1f} scans/s in the same process"
        ratio += f"; per turn {_ratios(m['ratios'])})" if name != "bare" else ")"
        goal = INFERENCE_TARGETS.get(name)
        target = f">= {goal:.2f}: {_met(m['ratio_to_bare'] >= goal)}" if goal else ""
        out.append(("3 inference", label, value, ratio, target))
    ok = man["total_s"] < 10 and man["peak_rss_mb"] < 1024
    out.append(
        (
            "4 manifest",
            f"{man['rows']:,} rows: load, validate, split by patient",
            f"{man['total_s']:.1f} s, peak {man['peak_rss_mb']:.0f} MB",
            "",
            f"< 10 s, < 1 GB: {_met(ok)}",
        )
    )
    boot = r["bootstrap"]
    for row in boot["rows"]:
        target = ""
        if row["scans"] == boot["target_scans"]:
            ok = row["intervals_s"] < boot["target_s"]
            target = f"< {boot['target_s']:g} s: {_met(ok)}"
        out.append(
            (
                "4 evaluation",
                f"patient bootstrap, {boot['resamples']:,} resamples of {row['scans']:,} scans",
                f"intervals {row['intervals_s']:.1f} s, ROC band {row['roc_band_s']:.1f} s",
                "",
                target,
            )
        )
    out.append(
        (
            "5 cache",
            f"{cache['entries']:,}-entry store of {cache['px']} px images: build, random reads",
            f"{cache['build_s']:.0f} s ({cache['build_per_s']:.0f}/s), "
            f"reads {cache['read_per_s']:.0f}/s, peak {cache['peak_rss_mb']:.0f} MB",
            f"{cache['shards']} shard(s), index {cache['index_bytes_per_entry']:.0f} B/entry",
            "",
        )
    )
    out += report_rows(r["report"]) + end_to_end_rows(r["end_to_end"])
    return out


#: issue #14: "a self-contained file that opens in a few seconds whatever the test set"
REPORT_FIRST_PAINT_S = 2.0
REPORT_LOAD_S = 5.0


def report_rows(rep: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Section 6: size and opening time of report.html, default selection."""
    out = []
    for row in rep["rows"]:
        if not row["selection"].startswith("default"):
            continue
        opened = "first_paint_s" in row
        value = f"{row['file_MB']:.1f} MB, {row['KB_per_scan']:.0f} KB/scan"
        if opened:
            paint, load = row["first_paint_s"], row["load_event_s"]
            value += f", first paint {paint:.2f} s, load {load:.2f} s"
            ok = paint <= REPORT_FIRST_PAINT_S and load <= REPORT_LOAD_S
            target = f"paint <= {REPORT_FIRST_PAINT_S:g} s, load <= {REPORT_LOAD_S:g} s: {_met(ok)}"
        else:
            target = "not opened: no Chromium"
        label = f"report.html of {row['scans']:,} scans ({row['cards']} cards: errors + sample)"
        old = f"{rep['old_format_KB_per_card']:.0f} KB/card before"
        out.append(("6 report", label, value, old, target))
    return out


def end_to_end_rows(e2e: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Section 7: the README's main command, where its wall time went."""
    t = e2e["timings"]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in t["phases_s"].items())
    epochs = f"first epoch {t['first_epoch_s']:.0f} s"
    if t.get("later_epoch_mean_s") is not None:
        epochs += f", later {t['later_epoch_mean_s']:.1f} s each ({len(t['epochs_s']) - 1})"
    aucs = [o["metrics"]["roc_auc"] for o in e2e["test_metrics"]["outputs"].values()]
    auc_text = ", test AUC " + "/".join(f"{a:.3f}" for a in aucs if a is not None)
    label = f"`{e2e['command']}` from empty data and cache folders"
    return [("7 end to end", label, f"{e2e['wall_s']:.0f} s{auc_text}", f"{phases}; {epochs}", "")]


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    head = [
        f"Date {r['date']}, command `{r['command']}`, wall time {r['wall_s']:.0f} s.",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, "
        f"native bf16: {m['cpu_bf16']}. Load average (1 min) {r['loadavg_start'][0]:.2f} at start, "
        f"{r['loadavg_end'][0]:.2f} at end. Section 2 runs on 1 thread, as a loader worker does. "
        "Peak memory: `ru_maxrss` of a fresh subprocess per measurement (sections 3, 4). "
        f"Section 3 reads the DICOMs {r['sizes']['stream_passes']} times over.",
        "",
        "| section | measurement | value | ratio | target |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + ["| " + " | ".join(row) + " |" for row in rows(r)])


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--section", help="(internal) run one measurement in this process")
    parser.add_argument("--result", type=Path, help="(internal) where --section writes its JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    sizes = QUICK if args.quick else Sizes()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.section:
        args.result.write_text(json.dumps(run_section(args.section, sizes)))
        return None

    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python benchmarks/run.py" + " --quick" * args.quick,
        "machine": machine(),
        "sizes": asdict(sizes),
        "loadavg_start": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        work = Path(tmp)
        log.info("1a: bare training step")
        r["train"] = train_bare(sizes)
        log.info("1b: Lightning training step")
        r["lightning"] = train_lightning(sizes, work / "fit")
    log.info("2: data pipeline (subprocess)")
    r["pipeline"] = in_subprocess("pipeline", args.quick)
    r["inference"] = {}
    for kind in ("bare", "cam_bare", "predict", "predict_cam"):
        log.info("3: inference %s (subprocess)", kind)
        r["inference"][kind] = in_subprocess(kind, args.quick)
    log.info("4: manifest scale (subprocess)")
    r["manifest"] = in_subprocess("manifest", args.quick)
    log.info("4: evaluation bootstrap scale (subprocess)")
    r["bootstrap"] = in_subprocess("bootstrap", args.quick)
    log.info("5: cache scale (subprocess)")
    r["cache"] = in_subprocess("cache", args.quick)
    log.info("6: report size and opening time (subprocess)")
    r["report"] = in_subprocess("report", args.quick)
    log.info("7: end to end, the README's main command (subprocess)")
    r["end_to_end"] = in_subprocess("end_to_end", args.quick)
    r["loadavg_end"] = list(os.getloadavg())
    r["wall_s"] = time.perf_counter() - t0
    name = "benchmarks_quick.json" if args.quick else "benchmarks.json"
    (RESULTS / name).write_text(json.dumps(r, indent=2, default=str))  # kept if the table fails
    r["table"] = table(r)
    (RESULTS / name).write_text(json.dumps(r, indent=2, default=str))
    print(r["table"])
    return r


if __name__ == "__main__":
    main()
