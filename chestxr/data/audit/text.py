"""The report as text: the tables ``audit.txt`` holds and the command prints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chestxr.data.manifest import SPLITS


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return ["  " + line for line in lines]


def _members(members: Sequence[dict[str, Any]]) -> str:
    return ", ".join(
        f"{m['path']} [{m['split']}, {m['patient_id']}, {m['label']}]" for m in members
    )


def format_report(report: dict[str, Any], max_items: int = 20) -> str:
    """The report as readable text tables (what ``python -m chestxr.audit`` prints).

    Args:
        report: :func:`audit_manifest`'s report.
        max_items: longest listing of unreadable files, duplicate groups and leaks.

    Returns:
        The text, ending with a newline.
    """
    out = [
        f"chestxr audit of {report['manifest']}",
        f"  {report['rows']} rows, {report['files_read']} files read"
        + (" (a random sample: audit.max_files)" if report["sampled"] else "")
        + f" in {report['timing_s']['total']:.1f} s; task {report['task']}, "
        f"classes {report['classes']}",
        "",
        "Findings",
    ]
    out += _table(
        ["kind", "count", "fails"],
        [[k, v, "FAIL" if k in report["failed"] else ""] for k, v in report["findings"].items()],
    )
    out += ["", "Splits and labels"]
    rows = []
    for s in (*SPLITS, "all"):
        info = report["splits"].get(s, {})
        for name, c in report["label_counts"][s].items():
            rows.append(
                [
                    s,
                    info.get("images", report["rows"]),
                    info.get("patients", ""),
                    name,
                    c["positive"],
                    c["negative"],
                    c["unknown"],
                ]
            )
    out += _table(["split", "images", "patients", "output", "pos", "neg", "unknown"], rows)

    def listing(title: str, items: Sequence[Any], line) -> None:
        if not items:
            return
        out.extend(["", f"{title} ({len(items)})"])
        out.extend(f"  {line(x)}" for x in items[:max_items])
        if len(items) > max_items:
            out.append(f"  ... {len(items) - max_items} more in audit.json")

    listing(
        "Patients in more than one given split",
        report["patient_leaks"],
        lambda x: f"{x['patient_id']}: {x['rows']}",
    )
    listing("Unreadable files", report["unreadable"], lambda x: f"{x['path']}: {x['reason']}")
    listing(
        "Exact duplicates (same bytes)",
        report["exact_duplicates"],
        lambda g: ("ACROSS SPLITS: " if g["across_splits"] else "") + _members(g["members"]),
    )
    listing(
        f"Near duplicates (thumbnail hash within {report['settings']['near_duplicate_bits']} bits)",
        report["near_duplicates"],
        lambda g: (
            ("ACROSS SPLITS: " if g["across_splits"] else "")
            + f"(<= {g['max_hamming']} bits apart) "
            + _members(g["members"])
        ),
    )

    out += ["", "Files"]
    for key, counts in report["files"].items():
        if counts:
            out.append(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    dicom = report["dicom"]
    if dicom["files"]:
        out += ["", f"DICOM headers ({dicom['files']} files)"]
        for key in ("modality", "photometric", "transfer_syntax", "view_position", "manufacturer"):
            out.append(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in dicom[key].items()))
        spacing = dicom["pixel_spacing_mm"]
        out.append(
            f"  pixel spacing (mm): row {spacing['row']}, column {spacing['column']}, "
            f"missing {spacing['missing']}"
        )

    out += ["", f"Shortcut checks (warn above AUC {report['settings']['shortcut_auc']})"]
    out += _table(
        ["property", "output", "n", "AUC", "warn"],
        [
            [
                c["property"],
                c["output"],
                c["n"],
                f"{c['separation']:.3f}",
                "WARN" if c["warning"] else "",
            ]
            for c in report["properties"]
        ],
    )
    for s in report["shortcuts"]:
        out.append(f"  WARNING: {s['message']}")
    result = f"FAIL ({', '.join(report['failed'])})" if report["failed"] else "pass"
    out += ["", f"Result: {result}"]
    return "\n".join(out) + "\n"
