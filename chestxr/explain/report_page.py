"""One self-contained HTML page for the radiologist: index, gallery, filters, one card per scan.

Rendered from the Jinja2 template ``templates/report.html.j2`` with autoescaping (every text from
the data is escaped by Jinja2); images are inlined as data URIs, so the file needs no network and
no other file."""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jinja2

from chestxr.utils.files import atomic_write_bytes

log = logging.getLogger(__name__)

OUTCOMES = ("TP", "FP", "FN", "TN")
UNLABELLED = "unlabelled"
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@dataclass
class ReportEntry:
    """What the report shows for one scan.

    Attributes:
        scan_id: anonymised identifier, the only identifier shown.
        image_png: the windowed radiograph as PNG or JPEG; None: the scan is listed in the
            tables (and counted) but gets no card (a report that samples its scans).
        overlays: CAM figures. A key ``"method"`` (e.g. ``"gradcam"``) is shown once beside the
            image; a key ``"finding/method"`` (see :func:`overlay_key`) under that finding.
        probabilities: output name → predicted probability.
        decisions: output name → decision at the operating point.
        labels: output name → ground truth (1.0 / 0.0), None or NaN when unknown.
        extra: free text shown in the card (e.g. ``{"pointing game": "hit"}``); escaped.
        thumbnails: output name → small overlay image for the gallery beside that index.
    """

    scan_id: str
    image_png: Path | None
    overlays: dict[str, Path] = field(default_factory=dict)
    probabilities: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, bool] = field(default_factory=dict)
    labels: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    thumbnails: dict[str, Path] = field(default_factory=dict)


def overlay_key(output_name: str, method: str) -> str:
    """Key of :attr:`ReportEntry.overlays` for a finding-specific overlay."""
    return f"{output_name}/{method}"


def outcome(decision: bool | None, label: float | None) -> str:
    """``"TP"``, ``"FP"``, ``"FN"``, ``"TN"``; ``"unlabelled"`` when label or decision is unknown.

    Args:
        decision: the model's decision; None when not made.
        label: ground truth, positive when >= 0.5; None or NaN when unknown.

    Returns:
        The outcome code.
    """
    if decision is None or label is None or math.isnan(float(label)):
        return UNLABELLED
    positive = float(label) >= 0.5
    if decision:
        return "TP" if positive else "FP"
    return "FN" if positive else "TN"


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not isinstance(value, bool):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _decision_text(decision: bool | None) -> str:
    return "—" if decision is None else ("positive" if decision else "negative")


def _label_text(label: float | None) -> str:
    if label is None or math.isnan(float(label)):
        return "unknown"
    return "positive" if float(label) >= 0.5 else "negative"


class _Images:
    """Base64 data URIs of image files, each file read once per report."""

    def __init__(self) -> None:
        self._uris: dict[Path, str] = {}

    def uri(self, path: str | Path) -> str:
        path = Path(path)
        if path not in self._uris:
            mime = _MIME.get(path.suffix.lower())
            if mime is None:
                raise ValueError(f"unsupported image type {path.suffix!r} for {path}")
            if not path.is_file():
                raise FileNotFoundError(f"report image not found: {path}")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            self._uris[path] = f"data:{mime};base64,{data}"
        return self._uris[path]

    def figure(self, path: str | Path, caption: str) -> dict[str, str]:
        return {"uri": self.uri(path), "caption": caption}


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("chestxr.explain", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
    )
    return env.get_template("report.html.j2")


def _counts(entries: Sequence[ReportEntry], names: Sequence[str]) -> list[dict[str, object]]:
    rows = []
    for name in names:
        got = [
            outcome(e.decisions.get(name), e.labels.get(name))
            for e in entries
            if name in e.probabilities
        ]
        n = {o: got.count(o) for o in (*OUTCOMES, UNLABELLED)}
        sens = n["TP"] / (n["TP"] + n["FN"]) if n["TP"] + n["FN"] else float("nan")
        spec = n["TN"] / (n["TN"] + n["FP"]) if n["TN"] + n["FP"] else float("nan")
        rows.append(
            {"name": name, "n": len(got), "counts": n, "sensitivity": _fmt(sens),
             "specificity": _fmt(spec)}
        )  # fmt: skip
    return rows


def _by_probability(entries: Sequence[ReportEntry], name: str) -> list[int]:
    """Indices of the entries with a probability for ``name``, highest first."""
    have = [i for i, e in enumerate(entries) if name in e.probabilities]
    return sorted(have, key=lambda i: -float(entries[i].probabilities[name]))


def _finding(entries: Sequence[ReportEntry], name: str, images: _Images) -> dict[str, object]:
    rows, gallery = [], []
    for i in _by_probability(entries, name):
        e = entries[i]
        code = outcome(e.decisions.get(name), e.labels.get(name))
        card = i if e.image_png is not None else None
        rows.append(
            {
                "scan_id": e.scan_id,
                "card": card,
                "outcome": code,
                "probability": _fmt(float(e.probabilities[name])),
                "decision": _decision_text(e.decisions.get(name)),
                "label": _label_text(e.labels.get(name)),
            }
        )
        if card is not None and name in e.thumbnails:
            gallery.append(
                {"scan_id": e.scan_id, "card": card, "outcome": code,
                 "uri": images.uri(e.thumbnails[name])}
            )  # fmt: skip
    return {"name": name, "rows": rows, "gallery": gallery}


def _card(entry: ReportEntry, i: int, names: Sequence[str], images: _Images) -> dict[str, object]:
    shared = [images.figure(entry.image_png, "image")]
    shared += [images.figure(p, m) for m, p in entry.overlays.items() if "/" not in m]
    blocks = []
    for name in names:
        if name not in entry.probabilities:
            continue
        blocks.append(
            {
                "name": name,
                "probability": _fmt(float(entry.probabilities[name])),
                "decision": _decision_text(entry.decisions.get(name)),
                "label": _label_text(entry.labels.get(name)),
                "outcome": outcome(entry.decisions.get(name), entry.labels.get(name)),
                "figures": [
                    images.figure(p, key.split("/", 1)[1])
                    for key, p in entry.overlays.items()
                    if key.startswith(f"{name}/")
                ],
            }
        )
    return {
        "index": i,
        "scan_id": entry.scan_id,
        "codes": [outcome(entry.decisions.get(n), entry.labels.get(n)) for n in names],
        "shared": shared,
        "blocks": blocks,
        "extra": list(entry.extra.items()),
    }


def write_report_html(
    path: str | Path,
    entries: Sequence[ReportEntry],
    *,
    title: str,
    summary: Mapping[str, object] | None = None,
    output_names: Sequence[str],
) -> Path:
    """Write one self-contained HTML report (images inline as data URIs, no network access).

    The page has a summary (the caller's metrics plus outcome counts per finding), a finding
    selector when there are several outputs, filter buttons (All, TP, FP, FN, TN, unlabelled), an
    index table per finding sorted by probability (highest first) linking to the cards, and one
    card per scan with the image, its overlays, and probability, decision and ground truth per
    finding. Beside each index, a gallery of the scans' overlay thumbnails links to their cards.
    Only ``scan_id`` identifies a scan; every text is HTML-escaped (Jinja2 autoescape).

    Args:
        path: the HTML file (parents created; replaced atomically).
        entries: one per scan, unique ``scan_id``; those without ``image_png`` get no card.
        title: page title.
        summary: metrics to show (name → value), e.g. AUROC, sensitivity at the operating point.
        output_names: the findings, in model output order.

    Returns:
        The path written.

    Raises:
        ValueError: no output names, or duplicate scan ids.
        FileNotFoundError: an image file is missing.
    """
    names = list(output_names)
    if not names:
        raise ValueError("output_names must name at least one output")
    seen: set[str] = set()
    for e in entries:
        if e.scan_id in seen:
            raise ValueError(f"duplicate scan_id {e.scan_id!r} in report entries")
        seen.add(e.scan_id)
        unknown = set(e.probabilities) - set(names)
        if unknown:
            log.warning("scan %s: outputs %s not in output_names; not shown", e.scan_id, unknown)

    images = _Images()
    order = _by_probability(entries, names[0])
    order += [i for i in range(len(entries)) if i not in set(order)]
    cards = [_card(entries[i], i, names, images) for i in order if entries[i].image_png is not None]
    page = _template().render(
        title=title,
        n_scans=len(entries),
        n_cards=len(cards),
        summary=[(str(k), _fmt(v)) for k, v in (summary or {}).items()],
        outcome_names=(*OUTCOMES, UNLABELLED),
        counts=_counts(entries, names),
        filters=("all", *OUTCOMES, UNLABELLED),
        findings=[_finding(entries, n, images) for n in names],
        cards=cards,
    )
    out = atomic_write_bytes(path, page.encode("utf-8"), overwrite=True)
    log.info("wrote report %s (%d scans, %d findings)", out, len(entries), len(names))
    return out
