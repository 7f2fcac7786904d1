"""The self-contained ``summary.html`` of an evaluation (images embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
tr.warn td{background:#fff3cd}.warning{color:#8a4b00;font-weight:bold}
img{max-width:48%;margin:0.5%;border:1px solid #eee}
.note{color:#555;font-size:0.9em}
"""
_ROWS = (
    ("roc_auc", "ROC AUC"),
    ("average_precision", "Average precision"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("f1", "F1"),
    ("accuracy", "Accuracy"),
    ("brier", "Brier score"),
    ("ece", "ECE (10 bins)"),
)


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(ci: Mapping[str, Sequence[float | None]], key: str) -> str:
    low, high = ci.get(key, (None, None))
    return "" if low is None or high is None else f"{low:.3f} – {high:.3f}"


def _with_ci(metrics: Mapping, ci: Mapping, key: str) -> str:
    interval = _ci(ci, key)
    return _num(metrics.get(key)) + (f" ({interval})" if interval else "")


def _rule_text(rule: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in rule.items() if v is not None)


def _e(text: object) -> str:
    return html.escape(str(text))


def render_summary(metrics: Mapping, images: Sequence[Path], title: str) -> str:
    """Render ``summary.html`` from the metrics dictionary and the PNG files to embed.

    Args:
        metrics: the dictionary returned by ``evaluate_predictions``.
        images: PNG files, embedded in this order.
        title: page title.

    Returns:
        The HTML document.
    """
    outputs = metrics["outputs"]
    boot = metrics["bootstrap"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
        f"<p>{metrics['n_scans']} scans"
        + (f", {metrics['n_patients']} patients" if metrics.get("n_patients") else "")
        + f". Intervals: {int(boot['confidence'] * 100)}% {boot['method']} bootstrap, "
        f"{boot['n_resamples']} resamples of {boot['unit']}s, seed {boot['seed']}.</p>",
        "<h2>Overview</h2><table><tr><th class='l'>output</th><th>n (pos)</th><th>threshold</th>"
        "<th class='l'>threshold rule</th><th>ROC AUC (95% CI)</th><th>AP (95% CI)</th>"
        "<th>sensitivity (95% CI)</th><th>specificity (95% CI)</th></tr>",
    ]
    for name, out in outputs.items():
        m, ci = out["metrics"], out["ci95"]
        rule = _e(_rule_text(out["threshold_rule"]))
        parts.append(
            f"<tr><td class='l'>{_e(name)}</td><td>{m['n']} ({m['n_positive']})</td>"
            f"<td>{out['threshold']:.4g}</td><td class='l'>{rule}</td>"
            + "".join(
                f"<td>{_with_ci(m, ci, k)}</td>"
                for k in ("roc_auc", "average_precision", "sensitivity", "specificity")
            )
            + "</tr>"
        )
    if "macro" in metrics:
        mac = metrics["macro"]
        parts.append(
            f"<tr><td class='l'><b>macro ({mac['n_outputs']} outputs)</b></td><td></td><td></td>"
            f"<td></td><td>{_with_ci(mac, mac['ci95'], 'roc_auc')}</td>"
            f"<td>{_with_ci(mac, mac['ci95'], 'average_precision')}</td><td></td><td></td></tr>"
        )
    parts.append("</table>")

    for name, out in outputs.items():
        m, ci = out["metrics"], out["ci95"]
        (tn, fp), (fn, tp) = m["confusion_matrix"]
        parts.append(
            f"<h2>{_e(name)}</h2><p>threshold {out['threshold']:.4g} "
            f"({_e(_rule_text(out['threshold_rule']))}); {m['n']} labelled scans"
            + (f" of {out['n_patients']} patients" if out.get("n_patients") else "")
            + f"; {m['n_positive']} positive, {m['n_negative']} negative.</p>"
            "<table><tr><th class='l'>metric</th><th>value</th><th>95% CI</th></tr>"
        )
        parts.extend(
            f"<tr><td class='l'>{label}</td><td>{_num(m.get(key))}</td><td>{_ci(ci, key)}</td></tr>"
            for key, label in _ROWS
        )
        parts.append(
            "</table><table><tr><th></th><th>predicted negative</th><th>predicted positive</th>"
            f"</tr><tr><th>negative</th><td>{tn}</td><td>{fp}</td></tr>"
            f"<tr><th>positive</th><td>{fn}</td><td>{tp}</td></tr></table>"
        )

    for column, groups in metrics.get("subgroups", {}).items():
        parts.append(f"<h2>Subgroups by {_e(column)}</h2>")
        for name in outputs:
            parts.append(
                (f"<h3>{_e(name)}</h3>" if len(outputs) > 1 else "")
                + f"<table class='subgroup' data-column='{_e(column)}'><tr>"
                f"<th class='l'>{_e(column)}</th><th>n scans</th><th>n patients</th>"
                "<th>positive</th><th>negative</th><th>ROC AUC (95% CI)</th>"
                "<th>sensitivity (95% CI)</th><th>specificity (95% CI)</th>"
                "<th class='l'>warning</th></tr>"
            )
            for value, per_output in groups.items():
                g = per_output[name]
                m, ci, warn = g["metrics"], g["ci95"], g["warning"]
                parts.append(
                    f"<tr{' class=warn' if warn else ''}><td class='l'>{_e(value)}</td>"
                    f"<td>{g['n']}</td><td>{g['n_patients'] if g['n_patients'] is not None else ''}"
                    f"</td><td>{m['n_positive']}</td><td>{m['n_negative']}</td>"
                    + "".join(
                        f"<td>{_with_ci(m, ci, k)}</td>"
                        for k in ("roc_auc", "sensitivity", "specificity")
                    )
                    + (f"<td class='l warning'>&#9888; {_e(warn)}</td>" if warn else "<td></td>")
                    + "</tr>"
                )
            parts.append("</table>")

    parts.append("<h2>Figures</h2>")
    for path in images:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<img alt='{_e(Path(path).stem)}' src='data:image/png;base64,{data}'>")
    parts.append(
        "<p class='note'>Predicted positive when probability &ge; threshold. n/a: undefined "
        "(e.g. no positive case). Labels unknown for a scan are left out of that output.</p>"
        "</body></html>"
    )
    return "\n".join(parts)
