"""chestxr: chest X-ray classification by transfer learning."""

from __future__ import annotations

__version__ = "0.1.0"
