"""The self-contained ``summary.html`` of an evaluation, rendered from a Jinja2 template.

The template (``templates/summary.html.j2``, autoescaped) takes its metric rows and columns from
the registry :data:`chestxr.evaluation.binary_metrics.METRICS`; images are embedded as base64 PNG.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from chestxr.evaluation.binary_metrics import METRICS


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: Mapping[str, Sequence[float | None]], key: str) -> str:
    low, high = ci.get(key, (None, None))
    return "" if low is None or high is None else f"{low:.3f} – {high:.3f}"


def _with_ci(metrics: Mapping, ci: Mapping, key: str) -> str:
    interval = _ci(ci, key)
    return _num(metrics.get(key)) + (f" ({interval})" if interval else "")


def _rule_text(rule: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in rule.items() if v is not None)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("chestxr.evaluation", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters.update(num=_num, rule_text=_rule_text)
    env.globals.update(ci=_ci, with_ci=_with_ci)
    return env


def render_summary(metrics: Mapping, images: Sequence[Path], title: str) -> str:
    """Render ``summary.html`` from the metrics dictionary and the PNG files to embed.

    Args:
        metrics: the dictionary returned by ``evaluate_predictions``.
        images: PNG files, embedded in this order.
        title: page title.

    Returns:
        The HTML document.
    """
    embedded = [
        {"alt": Path(p).stem, "data": base64.b64encode(Path(p).read_bytes()).decode("ascii")}
        for p in images
    ]
    template = _environment().get_template("summary.html.j2")
    return template.render(
        metrics={"subgroups": {}, **metrics},
        images=embedded,
        title=title,
        registry=METRICS,
        overview=[m for m in METRICS if m.overview],
        subgroup=[m for m in METRICS if m.subgroup],
    )
