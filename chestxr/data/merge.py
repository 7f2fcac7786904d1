"""Merge several manifests into one, with the findings of every source under one canonical name.

As torchxrayvision's ``relabel_dataset`` + ``MergeDataset``: NIH ChestX-ray14 says ``Effusion``
where CheXpert says ``Pleural Effusion``; merged, both are ``Effusion``. Every finding column of any
source becomes a column of the merged manifest; a source that lacks a finding has it blank (unknown,
masked in the loss and the metrics), never 0. Paths are rewritten relative to the merged manifest's
folder, patient ids are prefixed with the source's name (two sets may both have a patient
``00001``), and a ``source`` column names each row's manifest, for subgroup metrics
(``evaluation.subgroups=[source]``). The ``label`` column is rebuilt from the merged findings.

Command::

    python -m chestxr.data.merge OUT.csv nih/manifest.csv chexpert/manifest.csv
    python -m chestxr.data.merge OUT.csv A.csv B.csv --alias "Pleural Effusion=Effusion"
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from chestxr.data.adapters import common
from chestxr.data.adapters.chexpert import CHEXPERT_FINDINGS
from chestxr.data.adapters.nih import NIH_FINDINGS

logger = logging.getLogger(__name__)

SOURCE = "source"
# Spellings of one finding in different sets -> the name the merged manifest uses.
ALIASES: dict[str, str] = {
    "Pleural Effusion": "Effusion",
    "Pleural_Thickening": "Pleural Thickening",
}
# Every finding column chestxr's adapters write, under its canonical name, in a fixed order.
FINDINGS: tuple[str, ...] = tuple(
    dict.fromkeys(ALIASES.get(name, name) for name in (*NIH_FINDINGS, *CHEXPERT_FINDINGS))
)
_VALUES = {"1": "1", "0": "0", "-1": "-1", "": "", "1.0": "1", "0.0": "0", "-1.0": "-1"}


def canonical(name: str, aliases: Mapping[str, str]) -> str:
    """The merged name of a source column (itself when it has no alias)."""
    return aliases.get(name, name)


def merge_manifests(
    manifests: Sequence[str | os.PathLike[str]],
    out_csv: str | os.PathLike[str],
    *,
    aliases: Mapping[str, str] | None = None,
    findings: Iterable[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one manifest holding the rows of several, with harmonised finding columns.

    Args:
        manifests: the manifests to merge (at least two); each source is named by its file's
            folder and stem (``nih/manifest.csv`` -> ``nih``), made unique by a number if needed.
        out_csv: the merged manifest to write.
        aliases: extra ``{source column: canonical name}`` entries on top of :data:`ALIASES`.
        findings: extra canonical finding names beyond :data:`FINDINGS` (e.g. a custom set's).
        overwrite: replace an existing ``out_csv``.

    Returns:
        The merged manifest's path.

    Raises:
        FileExistsError: ``out_csv`` exists and ``overwrite`` is False.
        FileNotFoundError: a manifest does not exist.
        ValueError: fewer than two manifests, a manifest without finding columns, two columns of
            one manifest that map to one finding, a finding cell other than 1/0/-1/blank, or one
            image listed twice.
    """
    if len(manifests) < 2:
        raise ValueError(f"merging needs at least two manifests, got {list(map(str, manifests))}")
    aliases = {**ALIASES, **(aliases or {})}
    known = set(FINDINGS) | set(findings or ()) | set(aliases.values())
    out = common.check_output(out_csv, overwrite)
    out_dir = out.parent.resolve()

    rows: list[dict[str, str]] = []
    found: set[str] = set()
    extra_columns: dict[str, None] = {}
    seen: dict[str, str] = {}
    for path, source in zip(manifests, _source_names(manifests), strict=True):
        path = Path(path)
        header, records = common.read_csv(path, (common.PATH, common.PATIENT_ID))
        columns = _finding_columns(header, aliases, known, path)
        found |= set(columns.values())
        for name in header:
            if name not in columns and name not in (*common.BASE_COLUMNS, SOURCE):
                extra_columns[name] = None
        for line, record in enumerate(records, start=2):
            where = f"{path} line {line}"
            image = record[common.PATH]
            absolute = Path(image) if Path(image).is_absolute() else path.parent / image
            key = os.path.normpath(os.path.abspath(absolute))
            if key in seen:
                raise ValueError(f"{where}: image {image!r} already listed by {seen[key]}")
            seen[key] = where
            row = {name: value for name, value in record.items() if name in extra_columns and value}
            for column, finding in columns.items():
                value = record.get(column, "")
                if value not in _VALUES:
                    raise ValueError(
                        f"{where} column {column!r}: expected 1, 0, -1 or blank, got {value!r}"
                    )
                row[finding] = _VALUES[value]
            row[common.PATH] = common.manifest_path(absolute, out_dir)
            row[common.PATIENT_ID] = f"{source}:{record[common.PATIENT_ID]}"
            row[common.SPLIT] = record.get(common.SPLIT, "")
            row[SOURCE] = source
            rows.append(row)
        logger.info("%s: %d rows, findings %s", path, len(records), sorted(columns.values()))

    order = [name for name in (*FINDINGS, *sorted(known - set(FINDINGS))) if name in found]
    for row in rows:
        positive = [name for name in order if row.get(name) == "1"]
        row[common.LABEL] = common.LABEL_SEPARATOR.join(positive) or common.NO_FINDING
    columns = [*common.BASE_COLUMNS, *order, SOURCE, *extra_columns]
    return common.write_manifest(rows, out, columns, overwrite=overwrite)


def _source_names(manifests: Sequence[str | os.PathLike[str]]) -> list[str]:
    names: list[str] = []
    for path in manifests:
        path = Path(path)
        base = path.stem if path.stem != "manifest" else path.resolve().parent.name
        name, n = base, 2
        while name in names:
            name, n = f"{base}{n}", n + 1
        names.append(name)
    return names


def _finding_columns(
    header: Sequence[str], aliases: Mapping[str, str], known: set[str], path: Path
) -> dict[str, str]:
    """``{source column: canonical finding}`` for the columns of one manifest that are findings."""
    columns: dict[str, str] = {}
    for name in header:
        finding = canonical(name, aliases)
        if finding not in known:
            continue
        clash = [other for other, target in columns.items() if target == finding]
        if clash:
            raise ValueError(f"{path}: columns {clash[0]!r} and {name!r} both map to {finding!r}")
        columns[name] = finding
    if not columns:
        raise ValueError(
            f"{path} has no finding column (known: {sorted(known)}); name a custom set's findings "
            "with --finding or map its columns with --alias SOURCE=CANONICAL"
        )
    return columns


def _alias(text: str) -> tuple[str, str]:
    source, sep, target = text.partition("=")
    if not sep or not source.strip() or not target.strip():
        raise argparse.ArgumentTypeError(f"expected SOURCE=CANONICAL, got {text!r}")
    return source.strip(), target.strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m chestxr.data.merge OUT_CSV MANIFEST MANIFEST... [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m chestxr.data.merge", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("out_csv", type=Path, help="merged manifest to write")
    parser.add_argument("manifests", type=Path, nargs="+", help="manifests to merge (two or more)")
    parser.add_argument(
        "--alias",
        type=_alias,
        action="append",
        default=[],
        help="map a source column to a canonical finding, SOURCE=CANONICAL (repeatable)",
    )
    parser.add_argument(
        "--finding", action="append", default=[], help="an extra finding column (repeatable)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    args = parser.parse_args(argv)
    common.configure_cli_logging()
    merge_manifests(
        args.manifests,
        args.out_csv,
        aliases=dict(args.alias),
        findings=args.finding,
        overwrite=args.overwrite,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
