"""RSNA Pneumonia Detection Challenge (Kaggle 2018) -> chestxr manifest (Normal / Lung Opacity).

Source: Radiological Society of North America, "RSNA Pneumonia Detection Challenge", Kaggle 2018
(https://www.kaggle.com/c/rsna-pneumonia-detection-challenge), images from NIH ChestX-ray14
re-annotated by radiologists (Shih et al., Radiology: AI 2019). Licence: the competition's data
terms (non-commercial research and education use; cite the challenge and Shih et al.).

Expected layout (ROOT as unzipped from Kaggle)::

    ROOT/stage_2_train_labels.csv           patientId,x,y,width,height,Target
    ROOT/stage_2_detailed_class_info.csv    patientId,class   (optional)
    ROOT/stage_2_train_images/<patientId>.dcm

One manifest row per image (``patientId`` is really an image id: one image per id). Several CSV rows
of one id are several boxes; rows with ``Target`` 0 carry no box (blank x/y/width/height).
``label`` is ``Lung Opacity`` (Target 1) or ``Normal`` (Target 0, which also covers the detailed
class "No Lung Opacity / Not Normal", kept in ``class_detail``). ``boxes`` holds the boxes in
original pixels. ``view``, ``sex``, ``age``, ``orig_width`` and ``orig_height`` are read from the
DICOM headers (``dicom_metadata=False`` skips that). The stage 2 test images have no labels, so
``split`` is left blank: chestxr splits by patient.

Command::

    python -m chestxr.data.adapters.rsna /data/rsna-pneumonia /data/rsna-pneumonia/manifest.csv
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pydicom

from chestxr.data.adapters import common

logger = logging.getLogger(__name__)

CLASSES = ("Normal", "Lung Opacity")
LABELS_CSV = "stage_2_train_labels.csv"
DETAILED_CSV = "stage_2_detailed_class_info.csv"
IMAGES_DIR = "stage_2_train_images"
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
BOX_FIELDS = ("x", "y", "width", "height")
METADATA_COLUMNS = ("view", "sex", "age", "orig_width", "orig_height")
_DICOM_TAGS = ("ViewPosition", "PatientSex", "PatientAge", "Rows", "Columns")


def _read_labels(labels_csv: Path) -> dict[str, tuple[int, list[dict[str, object]]]]:
    """Target and boxes per patientId, checking that rows agree with each other."""
    _, source = common.read_csv(labels_csv, LABEL_COLUMNS)
    by_id: dict[str, tuple[int, list[dict[str, object]]]] = {}
    for line, row in enumerate(source, start=2):
        where = f"{labels_csv} line {line}"
        if row["Target"] not in {"0", "1"}:
            raise ValueError(f"{where}: Target must be 0 or 1, got {row['Target']!r}")
        target = int(row["Target"])
        values = [row[name] for name in BOX_FIELDS]
        if target == 1 and not all(values):
            raise ValueError(f"{where}: Target 1 without a complete box {values}")
        if target == 0 and any(values):
            raise ValueError(f"{where}: Target 0 with box values {values}")
        previous_target, boxes = by_id.setdefault(row["patientId"], (target, []))
        if previous_target != target:
            raise ValueError(f"{where}: patientId {row['patientId']} has both Target 0 and 1")
        if target == 1:
            try:
                box: dict[str, object] = dict(
                    zip(BOX_FIELDS, map(common.number, values), strict=True)
                )
            except ValueError as error:
                raise ValueError(f"{where}: bad box value in {values}") from error
            box["label"] = CLASSES[1]
            boxes.append(box)
    return by_id


def _read_detailed(detailed_csv: Path) -> dict[str, str]:
    """Detailed class per patientId (the file repeats an id once per labels row)."""
    _, source = common.read_csv(detailed_csv, ("patientId", "class"))
    detail: dict[str, str] = {}
    for line, row in enumerate(source, start=2):
        known = detail.setdefault(row["patientId"], row["class"])
        if known != row["class"]:
            raise ValueError(
                f"{detailed_csv} line {line}: patientId {row['patientId']} has classes "
                f"{known!r} and {row['class']!r}"
            )
    return detail


def _dicom_metadata(path: Path) -> dict[str, str]:
    """View, sex, age and original size from a DICOM header (pixels are not read)."""
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_DICOM_TAGS))
    return {
        "view": str(header.get("ViewPosition", "") or "").strip(),
        "sex": common.normalise_sex(str(header.get("PatientSex", "") or "")),
        "age": common.parse_age(str(header.get("PatientAge", "") or "")),
        "orig_width": str(header.get("Columns", "") or ""),
        "orig_height": str(header.get("Rows", "") or ""),
    }


def build_manifest(
    root: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    labels_csv: str = LABELS_CSV,
    detailed_csv: str | None = DETAILED_CSV,
    images_dir: str = IMAGES_DIR,
    missing: str = "error",
    dicom_metadata: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the manifest of the RSNA pneumonia set found under ``root``.

    Args:
        root: the unzipped competition folder.
        out_csv: manifest to write.
        labels_csv: labels file name under ``root`` (``stage_1_train_labels.csv`` for stage 1).
        detailed_csv: detailed class file under ``root``; skipped when None or absent.
        images_dir: DICOM folder under ``root``.
        missing: ``"error"`` or ``"drop"`` for labelled images without a DICOM file.
        dicom_metadata: read view, sex, age and size from each DICOM header.
        overwrite: replace an existing manifest.

    Returns:
        The manifest path.

    Raises:
        FileExistsError: ``out_csv`` exists and ``overwrite`` is False.
        FileNotFoundError: a CSV or the image folder is missing, or images are missing and
            ``missing`` is ``"error"``.
        ValueError: a CSV lacks a column or holds inconsistent or unknown values.
    """
    root = Path(root).resolve()
    out = common.check_output(out_csv, overwrite)
    out_dir = out.parent.resolve()
    common.check_missing_policy(missing)
    labels = _read_labels(root / labels_csv)
    detail: dict[str, str] | None = None
    if detailed_csv is not None and (root / detailed_csv).is_file():
        detail = _read_detailed(root / detailed_csv)
    elif detailed_csv is not None:
        logger.info("no %s under %s: class_detail column omitted", detailed_csv, root)

    folder = root / images_dir
    if not folder.is_dir():
        raise FileNotFoundError(f"RSNA image folder {folder} not found")
    on_disk = {entry.name for entry in os.scandir(folder) if entry.name.endswith(".dcm")}
    absent = [pid for pid in labels if f"{pid}.dcm" not in on_disk]
    common.report_missing([f"{pid}.dcm" for pid in absent], str(folder), missing)
    absent_set = set(absent)

    rows: list[dict[str, str]] = []
    for pid, (target, boxes) in labels.items():
        if pid in absent_set:
            continue
        image = folder / f"{pid}.dcm"
        row = {
            common.PATH: common.manifest_path(image, out_dir),
            common.LABEL: CLASSES[target],
            common.PATIENT_ID: pid,
            common.SPLIT: "",
            common.BOXES: common.boxes_json(boxes),
        }
        if detail is not None:
            row["class_detail"] = detail.get(pid, "")
            if row["class_detail"] and (row["class_detail"] == CLASSES[1]) != bool(target):
                raise ValueError(
                    f"{root / detailed_csv} says {row['class_detail']!r} for patientId {pid}, "
                    f"but {root / labels_csv} has Target {target}"
                )
        if dicom_metadata:
            row.update(_dicom_metadata(image))
        rows.append(row)

    columns = [*common.BASE_COLUMNS, common.BOXES]
    if detail is not None:
        columns.append("class_detail")
    if dicom_metadata:
        columns.extend(METADATA_COLUMNS)
    logger.info(
        "RSNA: %d images, %d with Lung Opacity",
        len(rows),
        sum(row[common.LABEL] == CLASSES[1] for row in rows),
    )
    return common.write_manifest(rows, out, columns, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m chestxr.data.adapters.rsna ROOT OUT_CSV [options]``."""
    return common.command_line(
        build_manifest,
        "chestxr.data.adapters.rsna",
        __doc__,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
