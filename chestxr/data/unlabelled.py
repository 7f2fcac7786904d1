"""An unlabelled manifest for pretraining, pooled from the train splits of labelled data sets.

``python -m chestxr.data.unlabelled OUT.csv kermany nih_pneumonia`` composes ``conf/train.yaml``
with each ``experiment=NAME``, splits its manifest exactly as that experiment does (same patient
split, same seed), and writes the scans of the train splits only, labels dropped, as one manifest
(``path``, ``patient_id``, ``split`` = ``train``, ``source``, ``source_row``). Validation and test
scans never enter it, so pretraining cannot see what the fine-tuned models are tested on.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from chestxr.data.datamodule import RadiographDataModule
from chestxr.utils.files import atomic_write_csv

log = logging.getLogger(__name__)

COLUMNS = ("path", "patient_id", "split", "source", "source_row")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def write_unlabelled_manifest(
    sources: Mapping[str, RadiographDataModule], out: str | Path, *, split: str = "train"
) -> Path:
    """Write the ``split`` scans of every data module as one unlabelled manifest.

    Args:
        sources: data modules by name (the name prefixes patient ids: ``NAME:ID``).
        out: the CSV to write (atomically; an existing file is an error).
        split: which split of each source to keep.

    Returns:
        The path written.

    Raises:
        ValueError: a source whose ``split`` is empty.
    """
    rows = []
    for name, dm in sources.items():
        m = dm.load()
        chosen = dm.rows(split)
        if not len(chosen):
            raise ValueError(f"the {split!r} split of {name} ({m.source}) is empty")
        rows += [[m.paths[i], f"{name}:{m.patient_ids[i]}", "train", name, int(i)] for i in chosen]
        log.info("%s: %d %s scans of %d", name, len(chosen), split, len(m))
    return atomic_write_csv(out, COLUMNS, rows)


def datamodule_of(experiment: str, overrides: Sequence[str] = ()) -> RadiographDataModule:
    """The data module ``python -m chestxr.train experiment=NAME`` would build (labels read)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"experiment={experiment}", "data.report_dir=null", *overrides],
        )
    return instantiate(cfg.data)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the unlabelled manifest CSV to write")
    parser.add_argument("experiments", nargs="+", help="conf/experiment names, e.g. kermany")
    parser.add_argument("--override", action="append", default=[], help="extra config override")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sources = {e: datamodule_of(e, args.override) for e in args.experiments}
    path = write_unlabelled_manifest(sources, args.out)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
