"""NIH ChestX-ray14 -> chestxr manifest (multi-label, 14 findings).

Source: Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
Weakly-Supervised Classification and Localization of Common Thorax Diseases", CVPR 2017; NIH
Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC (also on Kaggle as "nih-chest-xrays").
Licence: unrestricted use; NIH asks for a citation of the paper and an acknowledgement of the NIH
Clinical Center.

Expected layout (ROOT as downloaded; images are found by name in any of these folders)::

    ROOT/Data_Entry_2017.csv or Data_Entry_2017_v2020.csv   (the newest is used if several)
    ROOT/train_val_list.txt, ROOT/test_list.txt              official split, one name per line
    ROOT/BBox_List_2017.csv                                  optional: boxes of ~1,000 images
    ROOT/images/*.png, ROOT/images_001/*.png or ROOT/images_001/images/*.png ...

``label`` joins the present findings with ``|`` (in ``NIH_FINDINGS`` order) or says
``No Finding``; each finding has its own ``1``/``0`` column. Official ``test_list.txt`` -> ``test``,
``train_val_list.txt`` -> ``train`` minus a patient-grouped ``val`` (``val_fraction``, ``seed``).
Boxes come from ``BBox_List_2017.csv`` (whose header ``Bbox [x,y,w,h],,,`` is read by position;
its ``Infiltrate`` is the ``Infiltration`` finding), ``[]`` for images without one. Metadata:
``follow_up``, ``age``, ``sex``, ``view``, ``orig_width``, ``orig_height``, ``pixel_spacing_x/y``.

Command::

    python -m chestxr.data.adapters.nih /data/nih-cxr14 /data/nih-cxr14/manifest.csv
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from chestxr.data.adapters import common

logger = logging.getLogger(__name__)

NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
ENTRY_GLOB = "Data_Entry_2017*.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
BBOX_CSV = "BBox_List_2017.csv"
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
# Source column -> manifest column; the first present name of each tuple is used.
METADATA = (
    (("Follow-up #",), "follow_up"),
    (("Patient Age",), "age"),
    (("Patient Gender", "Patient Sex"), "sex"),
    (("View Position",), "view"),
    (("OriginalImage[Width",), "orig_width"),
    (("Height]",), "orig_height"),
    (("OriginalImagePixelSpacing[x",), "pixel_spacing_x"),
    (("y]",), "pixel_spacing_y"),
)
# The box list names some findings differently from the data entry file.
_BOX_ALIASES = {"Infiltrate": "Infiltration"}


def find_entry_csv(root: Path) -> Path:
    """The data entry CSV under ``root``: the newest name when several match ``Data_Entry_2017*``.

    Raises:
        FileNotFoundError: none matches.
    """
    found = sorted(root.glob(ENTRY_GLOB))
    if not found:
        raise FileNotFoundError(f"no {ENTRY_GLOB} under {root}")
    if len(found) > 1:
        logger.info("several data entry files %s: using %s", [p.name for p in found], found[-1])
    return found[-1]


def index_images(root: Path) -> dict[str, Path]:
    """Map image file name -> path for PNGs in ``root/images*/`` and ``root/images*/images/``.

    Raises:
        ValueError: the same file name is in two folders.
    """
    index: dict[str, Path] = {}
    folders = sorted(p for p in root.glob("images*") if p.is_dir())
    folders += [p / "images" for p in folders if (p / "images").is_dir()]
    for folder in folders:
        for entry in os.scandir(folder):
            if not entry.name.lower().endswith(".png") or not entry.is_file():
                continue
            path = folder / entry.name
            if entry.name in index:
                raise ValueError(f"image {entry.name} found twice: {index[entry.name]} and {path}")
            index[entry.name] = path
    return index


def parse_findings(text: str, where: str) -> list[str]:
    """Findings named in a ``Finding Labels`` value, in ``NIH_FINDINGS`` order.

    Args:
        text: e.g. ``Cardiomegaly|Effusion`` or ``No Finding``.
        where: file and line, for error messages.

    Raises:
        ValueError: an unknown finding, an empty value, or ``No Finding`` beside a finding.
    """
    names = [name.strip() for name in text.split(common.LABEL_SEPARATOR)]
    if names == [common.NO_FINDING]:
        return []
    unknown = [name for name in names if name not in NIH_FINDINGS]
    if unknown:
        raise ValueError(f"{where}: unknown finding(s) {unknown} in {text!r}")
    return [name for name in NIH_FINDINGS if name in names]


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"official split file {path} not found (pass official_split=False to leave split blank)"
        )
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def read_boxes(bbox_csv: Path) -> dict[str, list[dict[str, object]]]:
    """Boxes per image from ``BBox_List_2017.csv``, read by position under its odd header.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the header does not start ``Image Index,Finding Label``, a row is short,
            a coordinate is not a number, or a finding is unknown.
    """
    if not bbox_csv.is_file():
        raise FileNotFoundError(f"box list {bbox_csv} not found")
    boxes: dict[str, list[dict[str, object]]] = {}
    with bbox_csv.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = [cell.strip() for cell in next(reader, [])]
        if header[:2] != ["Image Index", "Finding Label"]:
            raise ValueError(
                f"{bbox_csv}: header should start 'Image Index,Finding Label', got {header}"
            )
        for line, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) < 6:
                raise ValueError(f"{bbox_csv} line {line}: expected 6 fields, got {cells}")
            name, finding = cells[0].strip(), cells[1].strip()
            finding = _BOX_ALIASES.get(finding, finding)
            if finding not in NIH_FINDINGS:
                raise ValueError(f"{bbox_csv} line {line}: unknown finding {cells[1]!r}")
            try:
                x, y, w, h = (common.number(cell) for cell in cells[2:6])
            except ValueError as error:
                raise ValueError(f"{bbox_csv} line {line}: bad box {cells[2:6]}") from error
            boxes.setdefault(name, []).append(
                {"x": x, "y": y, "width": w, "height": h, "label": finding}
            )
    return boxes


def build_manifest(
    root: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    entry_csv: str | None = None,
    missing: str = "error",
    official_split: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    bbox_csv: str | None = BBOX_CSV,
    overwrite: bool = False,
) -> Path:
    """Write the manifest of the NIH ChestX-ray14 set found under ``root``.

    Args:
        root: the download folder.
        out_csv: manifest to write.
        entry_csv: data entry file name under ``root``; None picks the newest ``Data_Entry_2017*``.
        missing: ``"error"`` or ``"drop"`` for listed images not found on disk.
        official_split: use ``train_val_list.txt`` / ``test_list.txt``; False leaves split blank.
        val_fraction: share of train_val patients moved to ``val`` (0: no val).
        seed: random state of the val carving.
        bbox_csv: box list under ``root``; None or absent: no ``boxes`` column.
        overwrite: replace an existing manifest.

    Returns:
        The manifest path.

    Raises:
        FileExistsError: ``out_csv`` exists and ``overwrite`` is False.
        FileNotFoundError: a needed file is missing, or images are and ``missing`` is ``"error"``.
        ValueError: a missing column, an unknown finding, or an image in neither or both lists.
    """
    root = Path(root).resolve()
    out = common.check_output(out_csv, overwrite)
    out_dir = out.parent.resolve()
    common.check_missing_policy(missing)
    entry = root / entry_csv if entry_csv is not None else find_entry_csv(root)
    header, source = common.read_csv(entry, REQUIRED_COLUMNS)
    metadata = [
        (next(name for name in names if name in header), column)
        for names, column in METADATA
        if any(name in header for name in names)
    ]

    images = index_images(root)
    absent = [row["Image Index"] for row in source if row["Image Index"] not in images]
    common.report_missing(absent, f"{root}/images*", missing)
    absent_set = set(absent)

    train_val: set[str] = set()
    test: set[str] = set()
    if official_split:
        train_val, test = _read_list(root / TRAIN_VAL_LIST), _read_list(root / TEST_LIST)
        both = sorted(train_val & test)
        if both:
            raise ValueError(
                f"{len(both)} image(s) in both {TRAIN_VAL_LIST} and {TEST_LIST}: {both[:5]}"
            )

    boxes: dict[str, list[dict[str, object]]] | None = None
    if bbox_csv is not None and (root / bbox_csv).is_file():
        boxes = read_boxes(root / bbox_csv)
    elif bbox_csv is not None:
        logger.info("no %s under %s: boxes column omitted", bbox_csv, root)

    rows: list[dict[str, str]] = []
    unlisted: list[str] = []
    for line, record in enumerate(source, start=2):
        name = record["Image Index"]
        if name in absent_set:
            continue
        findings = parse_findings(record["Finding Labels"], f"{entry} line {line}")
        split = ""
        if official_split:
            split = "test" if name in test else "train" if name in train_val else ""
            if not split:
                unlisted.append(name)
        row = {
            common.PATH: common.manifest_path(images[name], out_dir),
            common.LABEL: common.LABEL_SEPARATOR.join(findings) or common.NO_FINDING,
            common.PATIENT_ID: record["Patient ID"],
            common.SPLIT: split,
        }
        if boxes is not None:
            row[common.BOXES] = common.boxes_json(boxes.get(name, []))
        row.update({finding: "1" if finding in findings else "0" for finding in NIH_FINDINGS})
        for source_column, column in metadata:
            row[column] = record[source_column]
        if "sex" in row:
            row["sex"] = common.normalise_sex(row["sex"])
        if "age" in row:
            row["age"] = common.parse_age(row["age"])
        rows.append(row)
    if unlisted:
        raise ValueError(
            f"{len(unlisted)} image(s) of {entry} in neither {TRAIN_VAL_LIST} nor {TEST_LIST}: "
            f"{unlisted[:5]}"
        )
    if official_split:
        rows = common.enforce_patient_disjoint(rows)
        common.carve_validation(rows, val_fraction=val_fraction, seed=seed, stratify=False)

    columns = list(common.BASE_COLUMNS)
    if boxes is not None:
        columns.append(common.BOXES)
    columns += [*NIH_FINDINGS, *(column for _, column in metadata)]
    logger.info("NIH: %d images, splits %s", len(rows), common.split_counts(rows))
    return common.write_manifest(rows, out, columns, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m chestxr.data.adapters.nih ROOT OUT_CSV [options]``."""
    return common.command_line(
        build_manifest,
        "chestxr.data.adapters.nih",
        __doc__,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
