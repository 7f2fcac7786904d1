"""Synthetic chest radiographs as real DICOM files: chestxr's download-free default data set.

Each image is a chest-like phantom (body outline, lungs with vessel texture, spine, ribs, clavicles,
heart) rendered as a float *attenuation* image (bright = attenuating, what
``read_radiograph`` returns), then encoded the ways real files differ: CR or DX, MONOCHROME1 or 2,
12 or 16 stored bits, rescale slope/intercept, window centre/width. Findings (``opacity``,
``effusion``, ``cardiomegaly``, ``nodule``) are painted inside the lung fields and their bounding
boxes written to the manifest. Image size, encoding and view are drawn independently of the label,
so none of them is a shortcut.

Everything is a pure function of the seed: patient ``p`` takes its anatomy from
``SeedSequence(seed, spawn_key=(1, p))``, image ``i`` its pose, findings and noise from
``SeedSequence(seed, spawn_key=(2, i))``, and the plan (patients, labels, sizes, encodings) comes
from ``default_rng(seed)``. :func:`regenerate_phantom` rebuilds the float phantom of any manifest
row, with or without its findings, for tests and for checking Grad-CAM against the true lesion.

The package, one idea per module: :mod:`.model` (findings, anatomy, encoding and their random
draws), :mod:`.geometry` (rendering helpers, the chest's shapes, the pose), :mod:`.render` (the
phantom), :mod:`.encode` (DICOM files), :mod:`.dataset` (the plan, the manifest, the cache).
"""

from __future__ import annotations

from chestxr.data.synthetic.dataset import (
    DEFAULTS,
    MANIFEST_COLUMNS_HEAD,
    MANIFEST_COLUMNS_TAIL,
    MANIFEST_NAME,
    PARAMS_NAME,
    _params_key,
    _resolve_params,
    ensure_synthetic,
    generate_synthetic,
    regenerate_phantom,
)
from chestxr.data.synthetic.encode import (
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    MANUFACTURER,
    build_dataset,
    encode_pixels,
)
from chestxr.data.synthetic.model import (
    FINDINGS,
    GENERATOR_VERSION,
    NO_FINDING,
    Anatomy,
    Encoding,
    Phantom,
    phantom_rng,
    sample_anatomy,
    sample_encoding,
)
from chestxr.data.synthetic.render import render_phantom

__all__ = [
    "CR_IMAGE_STORAGE",
    "DEFAULTS",
    "DX_PRESENTATION_STORAGE",
    "FINDINGS",
    "GENERATOR_VERSION",
    "MANIFEST_COLUMNS_HEAD",
    "MANIFEST_COLUMNS_TAIL",
    "MANIFEST_NAME",
    "MANUFACTURER",
    "NO_FINDING",
    "PARAMS_NAME",
    "Anatomy",
    "Encoding",
    "Phantom",
    "_params_key",
    "_resolve_params",
    "build_dataset",
    "encode_pixels",
    "ensure_synthetic",
    "generate_synthetic",
    "phantom_rng",
    "regenerate_phantom",
    "render_phantom",
    "sample_anatomy",
    "sample_encoding",
]
