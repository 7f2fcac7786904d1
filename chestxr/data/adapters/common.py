"""Shared pieces of the dataset adapters: reading source CSVs, carving splits, writing manifests.

Every adapter turns one public set, in its downloaded layout, into chestxr's canonical manifest:
a UTF-8 CSV with one row per image and the columns ``path`` (relative to the manifest's folder, or
absolute), ``label``, ``patient_id``, ``split`` (``train``/``val``/``test``, blank = let chestxr
split by patient), optionally ``boxes`` (a JSON list of ``{"x", "y", "width", "height", "label"}``
in original pixel coordinates), one ``1``/``0``/blank column per finding for multi-label sets, and
metadata columns for subgroup analysis (``view``, ``sex``, ``age`` ...).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from chestxr.data.splits import assign_splits
from chestxr.utils.files import atomic_write

logger = logging.getLogger(__name__)

PATH = "path"
LABEL = "label"
PATIENT_ID = "patient_id"
SPLIT = "split"
BOXES = "boxes"
BASE_COLUMNS = (PATH, LABEL, PATIENT_ID, SPLIT)
NO_FINDING = "No Finding"
LABEL_SEPARATOR = "|"
MISSING_POLICIES = ("error", "drop")
_MAX_STRATA = 16  # assign_splits stratifies on at most 16 outputs

_ARG_RE = re.compile(r"^    (\w+): (.*)$")
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def check_output(out_csv: str | os.PathLike[str], overwrite: bool) -> Path:
    """Fail early, before any slow work, when the manifest exists and must not be overwritten.

    Args:
        out_csv: where the manifest will be written.
        overwrite: allow replacing an existing file.

    Returns:
        ``out_csv`` as a Path.

    Raises:
        FileExistsError: ``out_csv`` exists and ``overwrite`` is False.
    """
    out = Path(out_csv)
    if out.exists() and not overwrite:
        raise FileExistsError(f"manifest {out} already exists; pass overwrite=True to replace it")
    return out


def write_manifest(
    rows: Sequence[Mapping[str, object]],
    out_csv: str | os.PathLike[str],
    columns: Sequence[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a manifest atomically: a temporary file in the same folder, then ``os.replace``.

    Args:
        rows: one mapping per image; keys must be a subset of ``columns`` (missing ones are blank).
        out_csv: destination CSV; its folder is created if needed.
        columns: column order; must start with ``path``, ``label``, ``patient_id``.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``out_csv`` exists and ``overwrite`` is False.
        ValueError: no rows, or a row holds a key that is not a column.
    """
    out = check_output(out_csv, overwrite)
    if list(columns[:3]) != [PATH, LABEL, PATIENT_ID]:
        raise ValueError(f"manifest columns must start with path, label, patient_id, got {columns}")
    if not rows:
        raise ValueError(f"refusing to write an empty manifest to {out}")

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out, write, overwrite=overwrite)
    logger.info("wrote %d rows to %s", len(rows), out)
    return out


def read_csv(
    path: str | os.PathLike[str], required: Iterable[str] = ()
) -> tuple[list[str], list[dict[str, str]]]:
    """Read a source CSV (UTF-8, BOM tolerated) into dictionaries, checking its columns.

    Args:
        path: the CSV file.
        required: columns that must be present.

    Returns:
        ``(header, rows)``; values are stripped of surrounding white space.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected CSV file not found: {path}")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        if not header:
            raise ValueError(f"{path} is empty (no header row)")
        missing = [name for name in required if name not in header]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; its header is {header}")
        rows = [
            {key: (value or "").strip() for key, value in row.items() if key is not None}
            for row in reader
        ]
    return header, rows


def manifest_path(image: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> str:
    """Path of an image as the manifest stores it: relative when under ``out_dir``, else absolute.

    Cheap enough for 200,000 images: string work, no file-system access. Pass both paths resolved
    the same way (the adapters resolve ROOT and the manifest's folder once).

    Args:
        image: the image file.
        out_dir: the manifest's folder, absolute.

    Returns:
        A POSIX-style path string.
    """
    image_text = os.path.abspath(image)
    base = os.path.join(os.path.abspath(out_dir), "")
    if image_text.startswith(base):
        image_text = image_text[len(base) :]
    return image_text.replace(os.sep, "/")


def boxes_json(boxes: Sequence[Mapping[str, object]]) -> str:
    """Serialise boxes (``x``, ``y``, ``width``, ``height``, ``label``) as compact JSON."""
    return json.dumps(list(boxes), separators=(",", ":"))


def number(text: str) -> int | float:
    """Parse a numeric CSV field, returning an int when the value is integral (``"264.0"`` -> 264).

    Raises:
        ValueError: ``text`` is not a finite number.
    """
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return int(value) if value.is_integer() else value


def normalise_sex(value: str) -> str:
    """Map ``M``/``Male``/``F``/``Female`` (any case) to ``M``/``F``; anything else to blank."""
    value = value.strip().upper()
    if value in {"M", "MALE"}:
        return "M"
    if value in {"F", "FEMALE"}:
        return "F"
    return ""


def parse_age(value: str) -> str:
    """Age in years as text: ``"58"``, ``"058Y"`` (DICOM AS) -> ``"58"``; ``"018M"`` -> ``"1.5"``.

    Blank or unparseable values give blank (logged at debug level).
    """
    match = _AGE_RE.match(value)
    if not match:
        if value.strip():
            logger.debug("unparseable age %r left blank", value)
        return ""
    years = float(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()]
    return str(int(years)) if years.is_integer() else f"{years:.2f}"


def check_missing_policy(missing: str) -> None:
    """Raise ValueError unless ``missing`` is ``"error"`` or ``"drop"``."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")


def report_missing(missing_names: Sequence[str], where: str, policy: str) -> None:
    """Raise or warn about images listed in the source but absent on disk.

    Args:
        missing_names: the image names not found.
        where: the folder(s) searched, for the message.
        policy: ``"error"`` raises, ``"drop"`` logs a warning (the caller drops the rows).

    Raises:
        FileNotFoundError: images are missing and ``policy`` is ``"error"``.
    """
    if not missing_names:
        return
    shown = ", ".join(missing_names[:5]) + (" ..." if len(missing_names) > 5 else "")
    message = f"{len(missing_names)} image(s) not found under {where}: {shown}"
    if policy == "error":
        raise FileNotFoundError(f"{message} (pass missing='drop' to skip them)")
    logger.warning("%s; dropping their rows", message)


def enforce_patient_disjoint(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Keep each patient in one split: a patient in ``test`` loses its train/val rows.

    The official test set stays intact (comparable with published results) and no image of a
    test patient is ever trained on. The dropped rows are counted in a logged warning.

    Args:
        rows: manifest rows with ``patient_id`` and ``split``.

    Returns:
        The rows to keep, in their original order.
    """
    test_patients = {row[PATIENT_ID] for row in rows if row.get(SPLIT) == "test"}
    overlap = {
        row[PATIENT_ID]
        for row in rows
        if row.get(SPLIT) in {"train", "val"} and row[PATIENT_ID] in test_patients
    }
    if not overlap:
        return rows
    kept = [row for row in rows if row.get(SPLIT) == "test" or row[PATIENT_ID] not in overlap]
    shown = ", ".join(sorted(overlap)[:5]) + (" ..." if len(overlap) > 5 else "")
    logger.warning(
        "%d patient(s) appear in both the official training and test sets (%s): kept their test "
        "rows, dropped %d training row(s)",
        len(overlap),
        shown,
        len(rows) - len(kept),
    )
    return kept


def carve_validation(
    rows: list[dict[str, str]],
    *,
    val_fraction: float,
    seed: int,
    stratify: bool,
    source_split: str = "train",
) -> None:
    """Move about ``val_fraction`` of the patients of ``source_split`` to ``val``, in place.

    Whole patients move, so no patient straddles train and val. The draw is chestxr's own
    patient-level splitter (:func:`chestxr.data.splits.assign_splits`); with ``stratify`` each
    distinct ``label`` value is a stratum, so val keeps the label mix of the source split (use it
    for binary sets; multi-label sets have too many label strings and are drawn unstratified).

    Args:
        rows: manifest rows with ``patient_id``, ``label`` and ``split``.
        val_fraction: share of the source split's patients to move; 0 moves none.
        seed: seed of the draw.
        stratify: keep the label balance of the source split in val.
        source_split: the split to carve from.

    Raises:
        ValueError: ``val_fraction`` outside [0, 0.5], more than 16 labels to stratify on, or
            no patient left in ``source_split``.
    """
    if not 0.0 <= val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in [0, 0.5], got {val_fraction!r}")
    index = [i for i, row in enumerate(rows) if row[SPLIT] == source_split]
    if val_fraction == 0.0 or not index:
        return
    labels = [rows[i][LABEL] for i in index]
    classes = sorted(set(labels)) if stratify else []
    if len(classes) > _MAX_STRATA:
        raise ValueError(
            f"cannot stratify on {len(classes)} distinct labels (at most {_MAX_STRATA}): "
            "use stratify=False for multi-label sets"
        )
    targets = np.zeros((len(index), max(1, len(classes))), dtype=np.float32)
    for k, name in enumerate(classes):
        targets[:, k] = [label == name for label in labels]
    patients = np.asarray([rows[i][PATIENT_ID] for i in index])
    drawn = assign_splits(
        patients, targets, val_fraction=val_fraction, test_fraction=0.0, seed=seed
    )
    if not (drawn == "train").any():
        raise ValueError(f"val_fraction={val_fraction} would leave no {source_split} patient")
    moved = np.flatnonzero(drawn == "val")
    for pos in moved:
        rows[index[pos]][SPLIT] = "val"
    logger.info(
        "carved val from %s: %d of %d image(s), %d of %d patient(s)",
        source_split,
        len(moved),
        len(index),
        len(set(patients[moved].tolist())),
        len(set(patients.tolist())),
    )


def split_counts(rows: Iterable[Mapping[str, str]]) -> dict[str, int]:
    """Number of rows per split value (blank counted as ``""``), for logging."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.get(SPLIT, "")] = counts.get(row.get(SPLIT, ""), 0) + 1
    return counts


def base_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """Command-line parser with the arguments every adapter takes: ROOT, OUT_CSV, --overwrite.

    Args:
        prog: the module name shown in usage (``python -m chestxr.data.adapters.<name>``).
        doc: the adapter module's docstring; its first line becomes the description.

    Returns:
        A parser the adapter extends with its own options.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m {prog}", description=(doc or "").strip().splitlines()[0]
    )
    parser.add_argument("root", type=Path, help="folder of the set, as downloaded")
    parser.add_argument("out_csv", type=Path, help="manifest CSV to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    return parser


def _arg_help(function: Callable[..., object]) -> dict[str, str]:
    """The ``Args:`` entries of a Google-style docstring, one line each."""
    helps: dict[str, str] = {}
    lines = inspect.getdoc(function) or ""
    in_args, name = False, None
    for line in lines.splitlines():
        if line.strip() == "Args:":
            in_args = True
            continue
        if in_args and line and not line.startswith(" "):
            break  # the next section (Returns:, Raises:)
        match = _ARG_RE.match(line) if in_args else None
        if match:
            name = match.group(1)
            helps[name] = match.group(2)
        elif in_args and name and line.strip():
            helps[name] += " " + line.strip()
    return helps


def command_line(
    build_manifest: Callable[..., Path],
    prog: str,
    doc: str | None,
    argv: Sequence[str] | None = None,
    *,
    choices: Mapping[str, Iterable[str]] | None = None,
    flags: Mapping[str, str] | None = None,
) -> int:
    """Run an adapter's ``build_manifest`` as a command: one option per keyword-only argument.

    ``ROOT OUT_CSV [--overwrite]`` come first; each other keyword-only argument of
    ``build_manifest`` becomes ``--its-name`` with its default, type and the help line of its
    docstring. A boolean that defaults to True becomes ``--no-its-name``; ``missing`` takes
    :data:`MISSING_POLICIES`.

    Args:
        build_manifest: the adapter's function.
        prog: the adapter's module name, for the usage line.
        doc: the adapter module's docstring (its first line describes the command).
        argv: the arguments (default: ``sys.argv[1:]``).
        choices: allowed values of string arguments, by argument name.
        flags: option strings that replace the generated ones, by argument name (a boolean that
            defaults to True, named by what turning it off does, e.g. ``--include-lateral``).

    Returns:
        0 (errors raise before anything is written).
    """
    choices = {"missing": MISSING_POLICIES, **(choices or {})}
    flags = dict(flags or {})
    parser = base_parser(prog, doc)
    helps = _arg_help(build_manifest)
    for name, param in inspect.signature(build_manifest).parameters.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or name == "overwrite":
            continue
        default, help_text = param.default, helps.get(name, "").replace("%", "%%")
        option = flags.get(name, "--" + name.replace("_", "-"))
        if isinstance(default, bool):
            if default and name not in flags:
                option = "--no-" + name.replace("_", "-")
            action = "store_false" if default else "store_true"
            if default:  # the flag turns the option off: say which, with the option's own help
                help_text = f"{name}=False; {name}: {help_text}"
            parser.add_argument(option, dest=name, action=action, help=help_text)
            continue
        kind = type(default) if isinstance(default, (int, float)) else str
        allowed = sorted(choices[name]) if name in choices else None
        parser.add_argument(
            option,
            dest=name,
            type=kind,
            default=default,
            choices=allowed,
            help=f"{help_text} (default: %(default)s)",
        )
    args = vars(parser.parse_args(argv))
    configure_cli_logging()
    build_manifest(args.pop("root"), args.pop("out_csv"), **args)
    return 0


def configure_cli_logging() -> None:
    """INFO-level logging to stderr for the adapters' command lines (never called on import)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
