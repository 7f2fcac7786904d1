"""One self-contained HTML file for the radiologist: index, filters, one card per scan."""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
        image_png: the windowed radiograph as PNG (or JPEG).
        overlays: CAM figures. A key ``"method"`` (e.g. ``"gradcam"``) is shown once beside the
            image; a key ``"finding/method"`` (see :func:`overlay_key`) under that finding.
        probabilities: output name → predicted probability.
        decisions: output name → decision at the operating point.
        labels: output name → ground truth (1.0 / 0.0), None or NaN when unknown.
        extra: free text shown in the card (e.g. ``{"pointing game": "hit"}``); escaped.
    """

    scan_id: str
    image_png: Path
    overlays: dict[str, Path] = field(default_factory=dict)
    probabilities: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, bool] = field(default_factory=dict)
    labels: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)


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


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return _esc("—" if value is None else value)
    if isinstance(value, float):
        return _esc("—" if math.isnan(value) else f"{value:.4g}")
    return _esc(value)


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

    def img(self, path: str | Path, caption: str) -> str:
        return (
            f'<figure><img src="{self.uri(path)}" alt="{_esc(caption)}" loading="lazy">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{margin-bottom:.2em} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left} th{background:#eee}
.controls{position:sticky;top:0;background:#fafafa;padding:.5em 0;z-index:1}
button.filter{margin-right:.3em;padding:.3em .8em;border:1px solid #888;background:#fff;
cursor:pointer} button.filter.active{background:#333;color:#fff}
.hidden{display:none!important}
.card{border:1px solid #ccc;background:#fff;margin:1em 0;padding:.8em}
.images{display:flex;flex-wrap:wrap;gap:.6em} figure{margin:0} figcaption{font-size:.85em}
img{max-height:420px;max-width:100%}
.badge{padding:.1em .5em;border-radius:.3em;font-weight:bold}
.TP{background:#c8e6c9}.TN{background:#e3f2fd}.FP{background:#ffe0b2}.FN{background:#ffcdd2}
.unlabelled{background:#eee}
.fblock{border-top:1px dashed #bbb;margin-top:.6em;padding-top:.4em}
"""

_JS = """
let finding = "0", wanted = "all";
function applyFilters() {
  document.querySelectorAll("section.finding").forEach(
    s => s.classList.toggle("hidden", s.dataset.finding !== finding));
  document.querySelectorAll("tr.row").forEach(
    r => r.classList.toggle("hidden", wanted !== "all" && r.dataset.outcome !== wanted));
  document.querySelectorAll("div.card").forEach(
    c => c.classList.toggle("hidden", wanted !== "all" && c.dataset["o" + finding] !== wanted));
  document.querySelectorAll("button.filter").forEach(
    b => b.classList.toggle("active", b.dataset.outcome === wanted));
}
document.querySelectorAll("button.filter").forEach(b => b.addEventListener("click", () => {
  wanted = b.dataset.outcome; applyFilters(); }));
const select = document.getElementById("finding");
if (select) select.addEventListener("change", () => { finding = select.value; applyFilters(); });
applyFilters();
"""


def _summary_html(summary: Mapping[str, object] | None, counts_table: str) -> str:
    rows = "".join(
        f"<tr><th>{_esc(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in (summary or {}).items()
    )
    table = f"<table class='summary'>{rows}</table>" if rows else ""
    return f"<section id='summary'><h2>Summary</h2>{table}{counts_table}</section>"


def _counts_table(entries: Sequence[ReportEntry], names: Sequence[str]) -> str:
    head = "".join(f"<th>{o}</th>" for o in (*OUTCOMES, UNLABELLED))
    body = []
    for name in names:
        got = [
            outcome(e.decisions.get(name), e.labels.get(name))
            for e in entries
            if name in e.probabilities
        ]
        n = {o: got.count(o) for o in (*OUTCOMES, UNLABELLED)}
        sens = n["TP"] / (n["TP"] + n["FN"]) if n["TP"] + n["FN"] else float("nan")
        spec = n["TN"] / (n["TN"] + n["FP"]) if n["TN"] + n["FP"] else float("nan")
        cells = "".join(f"<td>{n[o]}</td>" for o in (*OUTCOMES, UNLABELLED))
        body.append(
            f"<tr><th>{_esc(name)}</th><td>{len(got)}</td>{cells}"
            f"<td>{_fmt(sens)}</td><td>{_fmt(spec)}</td></tr>"
        )
    return (
        f"<table class='counts'><tr><th>finding</th><th>scans</th>{head}"
        f"<th>sensitivity</th><th>specificity</th></tr>{''.join(body)}</table>"
    )


def _by_probability(entries: Sequence[ReportEntry], name: str) -> list[int]:
    """Indices of the entries with a probability for ``name``, highest first."""
    have = [i for i, e in enumerate(entries) if name in e.probabilities]
    return sorted(have, key=lambda i: -float(entries[i].probabilities[name]))


def _index_section(entries: Sequence[ReportEntry], name: str, k: int) -> str:
    rows = []
    for rank, i in enumerate(_by_probability(entries, name), start=1):
        e = entries[i]
        code = outcome(e.decisions.get(name), e.labels.get(name))
        decision = e.decisions.get(name)
        rows.append(
            f"<tr class='row' data-outcome='{code}'><td>{rank}</td>"
            f"<td><a href='#card-{i}'>{_esc(e.scan_id)}</a></td>"
            f"<td>{_fmt(float(e.probabilities[name]))}</td>"
            f"<td>{_decision_text(decision)}</td>"
            f"<td>{_esc(_label_text(e.labels.get(name)))}</td>"
            f"<td><span class='badge {code}'>{code}</span></td></tr>"
        )
    return (
        f"<section class='finding' data-finding='{k}'><h2>{_esc(name)}: scans by probability</h2>"
        "<table class='index'><tr><th>#</th><th>scan</th><th>probability</th><th>decision</th>"
        f"<th>ground truth</th><th>outcome</th></tr>{''.join(rows)}</table></section>"
    )


def _card(entry: ReportEntry, i: int, names: Sequence[str], images: _Images) -> str:
    codes = {k: outcome(entry.decisions.get(n), entry.labels.get(n)) for k, n in enumerate(names)}
    data = " ".join(f"data-o{k}='{c}'" for k, c in codes.items())
    shared = [images.img(entry.image_png, "image")]
    shared += [images.img(p, m) for m, p in entry.overlays.items() if "/" not in m]
    blocks = []
    for k, name in enumerate(names):
        if name not in entry.probabilities:
            continue
        decision = entry.decisions.get(name)
        figs = [
            images.img(p, key.split("/", 1)[1])
            for key, p in entry.overlays.items()
            if key.startswith(f"{name}/")
        ]
        blocks.append(
            f"<div class='fblock'><b>{_esc(name)}</b>: probability "
            f"{_fmt(float(entry.probabilities[name]))}, decision "
            f"{_decision_text(decision)}, "
            f"ground truth {_esc(_label_text(entry.labels.get(name)))} "
            f"<span class='badge {codes[k]}'>{codes[k]}</span>"
            f"<div class='images'>{''.join(figs)}</div></div>"
        )
    extra = "".join(
        f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in entry.extra.items()
    )
    return (
        f"<div class='card' id='card-{i}' {data}><h3>{_esc(entry.scan_id)}</h3>"
        f"<div class='images'>{''.join(shared)}</div>{''.join(blocks)}"
        f"{f'<table class=extra>{extra}</table>' if extra else ''}</div>"
    )


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
    finding. Only ``scan_id`` identifies a scan; every text is HTML-escaped.

    Args:
        path: the HTML file (parents created; replaced atomically).
        entries: one per scan, unique ``scan_id``.
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
    cards = "".join(_card(entries[i], i, names, images) for i in order)
    selector = ""
    if len(names) > 1:
        options = "".join(f"<option value='{k}'>{_esc(n)}</option>" for k, n in enumerate(names))
        selector = f"<label>Finding <select id='finding'>{options}</select></label> "
    buttons = "".join(
        f"<button class='filter' data-outcome='{o}'>{'All' if o == 'all' else o}</button>"
        for o in ("all", *OUTCOMES, UNLABELLED)
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p>{len(entries)} scans. Model output for research use; "
        "not a diagnosis.</p>"
        f"{_summary_html(summary, _counts_table(entries, names))}"
        f"<div class='controls'>{selector}{buttons}</div>"
        f"{''.join(_index_section(entries, n, k) for k, n in enumerate(names))}"
        f"<section id='cards'><h2>Scans</h2>{cards}</section>"
        f"<script>{_JS}</script></body></html>"
    )
    out = atomic_write_bytes(path, page.encode("utf-8"), overwrite=True)
    log.info("wrote report %s (%d scans, %d findings)", out, len(entries), len(names))
    return out
