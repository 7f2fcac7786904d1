"""The data-set audit: leaks, duplicates, unreadable files and shortcuts, found before training.

:func:`audit_manifest` reads every image of a manifest once (in worker processes) and reports, as
a dictionary of schema ``chestxr.audit/1`` (see :data:`SCHEMA` and ``data/README.md``):

- ``unreadable``: files the reader refuses, with its reason;
- ``exact_duplicates``: files with the same sha256; ``near_duplicates``: images whose thumbnail
  hashes (``thumbnail`` x ``thumbnail`` area-averaged grey values, mean subtracted, sign bits) are
  within ``near_duplicate_bits`` bits of each other; each group says whether it spans splits;
- ``patient_leaks``: patients whose rows were given different splits in the manifest;
- ``splits`` and ``label_counts``: images, patients and positives / negatives / unknowns per split;
- ``files`` and ``dicom``: formats, modes, DICOM modality, photometric, transfer syntax, view,
  manufacturer and pixel spacing range (from headers);
- ``properties`` and ``shortcuts``: how well each per-image property (height, width, aspect
  ratio, bits stored, colour mode, view position, file format) alone separates the classes.

``findings`` counts each kind in :data:`FINDING_KINDS`; ``failed`` lists the kinds of
``fail_on`` that were found (:func:`exit_status` turns it into the command's exit status).

One module per check, as the report's sections: :mod:`.scan` (one pass over the files),
:mod:`.duplicates`, :mod:`.splits` (leaks and label counts), :mod:`.headers`, :mod:`.shortcuts`,
:mod:`.core` (:func:`audit_manifest`, the report) and :mod:`.text` (the report as text). The
command that writes the report files is :mod:`chestxr.audit`.
"""

from __future__ import annotations

from chestxr.data.audit.core import FINDING_KINDS, SCHEMA, audit_manifest, exit_status
from chestxr.data.audit.duplicates import hamming_groups
from chestxr.data.audit.headers import header_summary
from chestxr.data.audit.scan import file_sha256, scan_file, scan_files, thumbnail_hash
from chestxr.data.audit.shortcuts import (
    PROPERTIES,
    VIEW_COLUMNS,
    image_properties,
    shortcut_checks,
)
from chestxr.data.audit.splits import (
    audit_splits,
    class_names,
    label_counts,
    patient_leaks,
    row_labels,
)
from chestxr.data.audit.text import format_report

__all__ = [
    "FINDING_KINDS",
    "PROPERTIES",
    "SCHEMA",
    "VIEW_COLUMNS",
    "audit_manifest",
    "audit_splits",
    "class_names",
    "exit_status",
    "file_sha256",
    "format_report",
    "hamming_groups",
    "header_summary",
    "image_properties",
    "label_counts",
    "patient_leaks",
    "row_labels",
    "scan_file",
    "scan_files",
    "shortcut_checks",
    "thumbnail_hash",
]
