"""Adapters from public chest X-ray sets, in their downloaded layout, to chestxr's manifest CSV.

Each module has ``build_manifest(root, out_csv, **options) -> Path`` and a command line
``python -m chestxr.data.adapters.<name> ROOT OUT_CSV [options]``:

- ``kermany``: Kermany et al. pediatric pneumonia (binary NORMAL / PNEUMONIA).
- ``rsna``: RSNA Pneumonia Detection Challenge (binary Normal / Lung Opacity, with boxes).
- ``nih``: NIH ChestX-ray14 (14 findings, multi-label, official split and boxes).
- ``chexpert``: CheXpert (13 findings, multi-label, uncertainty policies).

The manifest format and the shared helpers are in ``common``.
"""

from __future__ import annotations

ADAPTERS = ("kermany", "rsna", "nih", "chexpert")
