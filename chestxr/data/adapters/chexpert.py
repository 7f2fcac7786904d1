"""CheXpert (v1.0 or v1.0-small) -> chestxr manifest (multi-label, 13 findings with uncertainty).

Source: Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and
Expert Comparison", AAAI 2019; Stanford AIMI, https://stanfordmlgroup.github.io/competitions/chexpert/
(the "small" 1.0 release is also on Kaggle). Licence: Stanford University School of Medicine
CheXpert Dataset Research Use Agreement (personal, non-commercial research; no redistribution).

Expected layout (ROOT is the folder holding the CSVs)::

    ROOT/train.csv, ROOT/valid.csv   Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,...
    ROOT/train/patient00001/study1/view1_frontal.jpg
    ROOT/valid/patient64541/study1/view1_frontal.jpg

``Path`` starts with ``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/``; it is resolved against ROOT's
parent, against ROOT, or against ROOT with that first folder removed (a renamed ROOT), whichever
finds the first images. Observations hold ``1.0``, ``0.0``, ``-1.0`` (uncertain) or blank (not
mentioned). ``uncertain`` maps -1: ``"ignore"`` -> blank (masked), ``"zeros"`` -> 0,
``"ones"`` -> 1, ``"keep"`` -> -1 (left to the loader's ``uncertain`` option at training time).
``blank`` maps a blank cell: ``"unknown"`` (default) -> blank (masked), ``"negative"`` -> 0 (as
most CheXpert training code reads it), ``"negative_if_no_finding"`` -> 0 on rows whose No Finding
is 1 only (torchxrayvision's reading; Support Devices stays unknown there), unknown elsewhere.
The 13 findings of ``CHEXPERT_FINDINGS`` get a column each;
``No Finding`` is not a class (it is the absence of the others, and CheXpert never marks it 0);
``label`` joins the positive findings with ``|`` or says ``No Finding``. Lateral views are dropped
unless ``frontal_only=False``. ``valid.csv`` -> ``test``; ``val`` is carved from train by patient.
Metadata: ``sex``, ``age``, ``view`` (AP/PA/LL/RL), ``frontal_lateral``, ``study``.

Command::

    python -m chestxr.data.adapters.chexpert /data/CheXpert-v1.0-small /data/chexpert_manifest.csv
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from chestxr.data.adapters import common

logger = logging.getLogger(__name__)

CHEXPERT_FINDINGS = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
OBSERVATIONS = (common.NO_FINDING, *CHEXPERT_FINDINGS)
UNCERTAIN_POLICIES = {"ignore": "", "zeros": "0", "ones": "1", "keep": "-1"}
# What a blank (not mentioned) cell becomes: unknown (masked); negative (as most CheXpert training
# code reads it); or negative only on rows whose "No Finding" is 1 (torchxrayvision's reading).
BLANK_POLICIES = ("unknown", "negative", "negative_if_no_finding")
# "No Finding" allows support devices, so a blank Support Devices cell stays unknown on such rows.
_NOT_IMPLIED_BY_NO_FINDING = frozenset({"Support Devices"})
SOURCES = (("train.csv", "train"), ("valid.csv", "test"))
REQUIRED_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS)
METADATA_COLUMNS = ("sex", "age", "view", "frontal_lateral", "study")
_VALUES = {1.0: "1", 0.0: "0", -1.0: "-1"}
_PATIENT_RE = re.compile(r"^patient\d+$")
_STUDY_RE = re.compile(r"^study\d+$")
_DETECT_ROWS = 100


def _candidates(root: Path) -> list[tuple[str, Callable[[PurePosixPath], Path]]]:
    return [
        ("ROOT's parent", lambda p: root.parent / p),
        ("ROOT", lambda p: root / p),
        ("ROOT without the first folder of Path", lambda p: root.joinpath(*p.parts[1:])),
    ]


def _resolver(root: Path, paths: Sequence[PurePosixPath]) -> Callable[[PurePosixPath], Path]:
    """Pick how ``Path`` values resolve, from the first rows whose image exists."""
    for path in paths[:_DETECT_ROWS]:
        for description, resolve in _candidates(root):
            if resolve(path).is_file():
                logger.info("CheXpert Path values resolve against %s", description)
                return resolve
    tried = [str(resolve(paths[0])) for _, resolve in _candidates(root)] if paths else []
    raise FileNotFoundError(
        f"no CheXpert image found for the first {min(len(paths), _DETECT_ROWS)} Path value(s) "
        f"under {root}; tried e.g. {tried}"
    )


def observation(value: str, uncertain: str, where: str) -> str:
    """Manifest value of one observation cell under an uncertainty policy.

    Args:
        value: ``1.0``, ``0.0``, ``-1.0`` (or ``1``, ``0``, ``-1``) or blank.
        uncertain: ``"ignore"``, ``"zeros"`` or ``"ones"``.
        where: file, line and column, for error messages.

    Returns:
        ``"1"``, ``"0"`` or ``""`` (unknown).

    Raises:
        ValueError: any other value.
    """
    if not value:
        return ""
    try:
        code = _VALUES[float(value)]
    except (ValueError, KeyError):
        raise ValueError(f"{where}: expected 1.0, 0.0, -1.0 or blank, got {value!r}") from None
    return UNCERTAIN_POLICIES[uncertain] if code == "-1" else code


def fill_blanks(values: dict[str, str], record: dict[str, str], blank: str, where: str) -> None:
    """Apply the ``blank`` policy to one row's findings, in place.

    Only cells blank in the source change (a -1 made blank by ``uncertain="ignore"`` stays
    unknown).

    Args:
        values: manifest value per finding, from :func:`observation`.
        record: the source row (its ``No Finding`` and raw cells are read).
        blank: one of :data:`BLANK_POLICIES`.
        where: file and line, for error messages.
    """
    if blank == "unknown":
        return
    if blank == "negative_if_no_finding":
        where = f"{where} column {common.NO_FINDING!r}"
        if observation(record[common.NO_FINDING], "ignore", where) != "1":
            return
    for name in CHEXPERT_FINDINGS:
        if record[name] == "" and not (
            blank == "negative_if_no_finding" and name in _NOT_IMPLIED_BY_NO_FINDING
        ):
            values[name] = "0"


def _patient_and_study(path: PurePosixPath, where: str) -> tuple[str, str]:
    patient = next((part for part in path.parts if _PATIENT_RE.match(part)), None)
    study = next((part for part in path.parts if _STUDY_RE.match(part)), "")
    if patient is None:
        raise ValueError(f"{where}: no patientNNNNN folder in Path {path.as_posix()!r}")
    return patient, study


def build_manifest(
    root: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    uncertain: str = "ignore",
    blank: str = "unknown",
    frontal_only: bool = True,
    missing: str = "error",
    val_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the manifest of the CheXpert set found under ``root``.

    Args:
        root: folder holding ``train.csv`` and ``valid.csv``.
        out_csv: manifest to write.
        uncertain: what -1 becomes: ``"ignore"`` (blank, masked), ``"zeros"``, ``"ones"`` or
            ``"keep"`` (written as -1, for the manifest loader's ``uncertain`` option).
        blank: what a blank (not mentioned) cell becomes: ``"unknown"`` (blank, masked),
            ``"negative"`` (0) or ``"negative_if_no_finding"`` (0 on rows whose No Finding is 1,
            Support Devices excepted; unknown elsewhere).
        frontal_only: drop lateral views.
        missing: ``"error"`` or ``"drop"`` for listed images not found on disk.
        val_fraction: share of training patients moved to ``val`` (0: no val).
        seed: random state of the val carving.
        overwrite: replace an existing manifest.

    Returns:
        The manifest path.

    Raises:
        FileExistsError: ``out_csv`` exists and ``overwrite`` is False.
        FileNotFoundError: a CSV is missing, or images are and ``missing`` is ``"error"``.
        ValueError: an unknown option, a missing column, or an unexpected cell value.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(
            f"uncertain must be one of {sorted(UNCERTAIN_POLICIES)}, got {uncertain!r}"
        )
    if blank not in BLANK_POLICIES:
        raise ValueError(f"blank must be one of {list(BLANK_POLICIES)}, got {blank!r}")
    common.check_missing_policy(missing)
    root = Path(root).resolve()
    out = common.check_output(out_csv, overwrite)
    out_dir = out.parent.resolve()
    sources = [
        (root / name, split, common.read_csv(root / name, REQUIRED_COLUMNS)[1])
        for name, split in SOURCES
    ]
    listed = [PurePosixPath(record["Path"]) for *_, records in sources for record in records]
    resolve = _resolver(root, listed)

    rows: list[dict[str, str]] = []
    absent: list[str] = []
    n_lateral = 0
    for csv_path, split, records in sources:
        for line, record in enumerate(records, start=2):
            where = f"{csv_path} line {line}"
            orientation = record["Frontal/Lateral"]
            if orientation not in {"Frontal", "Lateral"}:
                raise ValueError(
                    f"{where}: Frontal/Lateral must be Frontal or Lateral, got {orientation!r}"
                )
            if frontal_only and orientation == "Lateral":
                n_lateral += 1
                continue
            source_path = PurePosixPath(record["Path"])
            image = resolve(source_path)
            if not image.is_file():
                absent.append(record["Path"])
                continue
            patient, study = _patient_and_study(source_path, where)
            values = {
                name: observation(record[name], uncertain, f"{where} column {name!r}")
                for name in CHEXPERT_FINDINGS
            }
            fill_blanks(values, record, blank, where)
            positive = [name for name in CHEXPERT_FINDINGS if values[name] == "1"]
            rows.append(
                {
                    common.PATH: common.manifest_path(image, out_dir),
                    common.LABEL: common.LABEL_SEPARATOR.join(positive) or common.NO_FINDING,
                    common.PATIENT_ID: patient,
                    common.SPLIT: split,
                    **values,
                    "sex": common.normalise_sex(record["Sex"]),
                    "age": common.parse_age(record["Age"]),
                    "view": record["AP/PA"],
                    "frontal_lateral": orientation,
                    "study": study,
                }
            )
    common.report_missing(absent, str(root), missing)
    if n_lateral:
        logger.info("dropped %d lateral view(s) (frontal_only=True)", n_lateral)
    rows = common.enforce_patient_disjoint(rows)
    common.carve_validation(rows, val_fraction=val_fraction, seed=seed, stratify=False)
    columns = [*common.BASE_COLUMNS, *CHEXPERT_FINDINGS, *METADATA_COLUMNS]
    logger.info("CheXpert: %d images, splits %s", len(rows), common.split_counts(rows))
    return common.write_manifest(rows, out, columns, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m chestxr.data.adapters.chexpert ROOT OUT_CSV [options]``."""
    return common.command_line(
        build_manifest,
        "chestxr.data.adapters.chexpert",
        __doc__,
        argv,
        choices={"uncertain": UNCERTAIN_POLICIES, "blank": BLANK_POLICIES},
        flags={"frontal_only": "--include-lateral"},
    )


if __name__ == "__main__":
    raise SystemExit(main())
