"""Kermany pediatric pneumonia chest X-rays -> chestxr manifest (binary NORMAL / PNEUMONIA).

Source: Kermany et al., "Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep
Learning", Cell 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2 (also mirrored on Kaggle as
"chest-xray-pneumonia"). Licence: CC BY 4.0 (attribution required).

Expected layout (ROOT is the ``chest_xray`` folder; ``val/`` exists only in the Kaggle mirror)::

    ROOT/train/{NORMAL,PNEUMONIA}/*.jpeg
    ROOT/val/{NORMAL,PNEUMONIA}/*.jpeg      (16 images, optional)
    ROOT/test/{NORMAL,PNEUMONIA}/*.jpeg

Patient ids come from file names: ``person12_bacteria_47.jpeg`` and ``person12_virus_3.jpeg`` ->
``person12``; ``IM-0115-0001.jpeg`` -> ``IM-0115``; ``NORMAL2-IM-0381-0001.jpeg`` ->
``NORMAL2-IM-0381`` (extra ``-NNNN`` suffixes, as in ``IM-0660-0001-0001.jpeg``, are allowed).
A ``subtype`` column holds normal / bacteria / virus and ``orig_split`` the source folder.

Splits: the official test set stays ``test``; the official val (16 images) joins train, and a
patient-grouped, label-stratified val is carved from train (``val_fraction``, ``seed``). A patient
id found in both official train/val and test keeps its test rows; its training rows are dropped,
with a logged warning (equal ids are assumed to be the same child: the safe reading).

Command::

    python -m chestxr.data.adapters.kermany /data/chest_xray /data/chest_xray/manifest.csv
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from chestxr.data.adapters import common

logger = logging.getLogger(__name__)

CLASSES = ("NORMAL", "PNEUMONIA")
OFFICIAL_SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
COLUMNS = (*common.BASE_COLUMNS, "subtype", "orig_split")

_PNEUMONIA_RE = re.compile(r"^(person\d+)_(bacteria|virus)_\d+$", re.IGNORECASE)
_NORMAL_RE = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE)


def parse_file_name(name: str) -> tuple[str, str]:
    """Patient id and subtype from a Kermany file name.

    Args:
        name: file name, e.g. ``person1_virus_6.jpeg`` or ``NORMAL2-IM-0012-0001.jpeg``.

    Returns:
        ``(patient_id, subtype)`` with subtype ``normal``, ``bacteria`` or ``virus``.

    Raises:
        ValueError: the name follows none of the set's patterns.
    """
    stem = Path(name).stem
    match = _PNEUMONIA_RE.match(stem)
    if match:
        return match.group(1), match.group(2).lower()
    match = _NORMAL_RE.match(stem)
    if match:
        return match.group(1), "normal"
    raise ValueError(
        f"unrecognised Kermany file name {name!r}: expected personN_bacteria_M, personN_virus_M, "
        "IM-N-M or NORMAL2-IM-N-M"
    )


def build_manifest(
    root: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the manifest of the Kermany set found under ``root``.

    Args:
        root: folder holding ``train/``, ``test/`` and optionally ``val/``.
        out_csv: manifest to write.
        val_fraction: share of training patients moved to ``val`` (0: no val).
        seed: random state of the val carving.
        overwrite: replace an existing manifest.

    Returns:
        The manifest path.

    Raises:
        FileExistsError: ``out_csv`` exists and ``overwrite`` is False.
        FileNotFoundError: ``train/`` or ``test/`` (or a class folder in them) is missing.
        ValueError: a file name is unrecognised, or its subtype contradicts its class folder.
    """
    root = Path(root).resolve()
    out = common.check_output(out_csv, overwrite)
    out_dir = out.parent.resolve()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            hint = ""
            if (root / "chest_xray" / split).is_dir():
                hint = f" (did you mean ROOT={root / 'chest_xray'}?)"
            raise FileNotFoundError(f"Kermany folder {root / split} not found{hint}")

    rows: list[dict[str, str]] = []
    for official in OFFICIAL_SPLITS:
        if not (root / official).is_dir():
            logger.info("no official %s folder under %s", official, root)
            continue
        for label in CLASSES:
            folder = root / official / label
            if not folder.is_dir():
                raise FileNotFoundError(f"Kermany class folder {folder} not found")
            for image in sorted(folder.iterdir()):
                if image.name.startswith(".") or image.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                patient_id, subtype = parse_file_name(image.name)
                if (subtype == "normal") != (label == "NORMAL"):
                    raise ValueError(f"{image}: a {subtype} file name inside a {label} folder")
                rows.append(
                    {
                        common.PATH: common.manifest_path(image, out_dir),
                        common.LABEL: label,
                        common.PATIENT_ID: patient_id,
                        common.SPLIT: "test" if official == "test" else "train",
                        "subtype": subtype,
                        "orig_split": official,
                    }
                )
    rows = common.enforce_patient_disjoint(rows)
    common.carve_validation(rows, val_fraction=val_fraction, seed=seed, stratify=True)
    logger.info("Kermany: %d images, splits %s", len(rows), common.split_counts(rows))
    return common.write_manifest(rows, out, COLUMNS, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m chestxr.data.adapters.kermany ROOT OUT_CSV [options]``."""
    return common.command_line(
        build_manifest,
        "chestxr.data.adapters.kermany",
        __doc__,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
