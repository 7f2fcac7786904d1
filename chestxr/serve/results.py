"""Results in DICOM: a Comprehensive 3D SR with the finding and a Grad-CAM Secondary Capture.

Both objects go into the source's study (new series), reference the source image and get SOP
Instance UIDs derived from the source's UID and the model's version, so scoring an instance again
(after a crash) makes the same objects, which a PACS stores once.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import Any

import highdicom as hd
import matplotlib
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from chestxr.explain.secondary_capture import MANUFACTURER
from chestxr.serve import adapter, iod_lookups, sr_document
from chestxr.serve.sr_template import (
    CONTENT_SEQUENCE,
    ContentTemplate,
    as_written,
    decoded_items,
    probability_ds,
)
from chestxr.utils.files import atomic_write_bytes

log = logging.getLogger(__name__)

RESEARCH_ONLY = "RESEARCH USE, NOT FOR DIAGNOSIS"
PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
FINDING_SCHEME = "99CHESTXR"
SR_SERIES_NUMBER = 9002
SC_SERIES_NUMBER = 9001
# the type 2 Patient and General Study attributes highdicom reads from the source (and fails on
# when absent); de-identification tools and some modalities drop them instead of emptying them
SOURCE_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def derived_uid(source_uid: str, model_version: str, what: str) -> str:
    """A UID that is the same every time the same model scores the same instance."""
    return generate_uid(entropy_srcs=[source_uid, model_version, what])


def sr_uids(source: Dataset, model_version: str) -> tuple[str, str]:
    """The SR's SOP Instance UID and Series Instance UID for ``source``."""
    uid = source.SOPInstanceUID
    return derived_uid(uid, model_version, "sr"), derived_uid(uid, model_version, "sr-series")


def _finding(name: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(name[:16].upper(), FINDING_SCHEME, name)


def build_sr(source: Dataset, result: dict[str, Any], info: dict[str, Any]) -> Dataset:
    """The Structured Report of one scored instance (TID 1500 measurement report).

    Args:
        source: the source image's data set (pixels not needed).
        result: ``outputs``: list of ``{name, probability, threshold, decision}``.
        info: the model description from :func:`chestxr.serve.adapter.load`.
    """
    version = info["model_version"]
    algorithm = hd.sr.AlgorithmIdentification(
        name=info["model_name"],
        version=f"chestxr {info['chestxr_version']} model {version}",
        parameters=[
            f"config_hash={info['config_hash']}",
            f"config_hash_source={info.get('config_hash_source', 'run')}",
        ],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", version, "observer"),
            name="chestxr",
            manufacturer_name=MANUFACTURER,
            model_name=info["model_name"],
            serial_number=version,
        ),
    )
    groups = []
    for i, out in enumerate(result["outputs"]):
        present = codes.SCT.Present if out["decision"] else codes.SCT.Absent
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(source.SOPInstanceUID, version, f"group{i}"),
                    identifier=f"chestxr {out['name']}",
                ),
                algorithm_id=algorithm,
                finding_type=_finding(out["name"]),
                measurements=[
                    hd.sr.Measurement(
                        name=codes.DCM.Probability,
                        value=float(out["probability"]),
                        unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
                        algorithm_id=algorithm,
                    ),
                    hd.sr.Measurement(
                        name=hd.sr.CodedConcept("THRESHOLD", FINDING_SCHEME, "Operating point"),
                        value=float(out["threshold"]),
                        unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
                        algorithm_id=algorithm,
                    ),
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=_finding(out["name"]), value=present)
                ],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=groups,
    )
    return _document(source, info, report[0])


def evidence(source: Dataset) -> Dataset:
    """``source`` as the SR's evidence: itself, or where it lacks any of
    :data:`SOURCE_TYPE_2`, a copy with those present and empty (the SR's Patient and General
    Study modules hold them, empty when unknown). ``source`` is left as it was."""
    missing = [keyword for keyword in SOURCE_TYPE_2 if keyword not in source]
    if not missing:
        return source
    out = Dataset()
    for element in source:
        out.add(element)
    for keyword in missing:
        setattr(out, keyword, "")
    return out


def _document(source: Dataset, info: dict[str, Any], content: Dataset) -> hd.sr.Comprehensive3DSR:
    """The SR document of ``source`` around ``content`` (the report's root container)."""
    sop_instance_uid, series_instance_uid = sr_uids(source, info["model_version"])
    return hd.sr.Comprehensive3DSR(
        evidence=[evidence(source)],
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"chestxr AI result ({RESEARCH_ONLY.lower()})",
    )


class ReportBuilder:
    """Builds the SR of each scored instance ~10x faster than :func:`build_sr`, equal to it.

    highdicom builds the whole SR of the first instance of a model (per layout: outputs,
    thresholds and character set); the measurement content of later ones is the first one's,
    encoded once, with each instance's own values spliced into its bytes (tracking UIDs, the
    source image reference, probabilities, decisions; :mod:`chestxr.serve.sr_template`). The
    document around the content (patient, study, evidence, equipment) is highdicom's for the
    first source of each shape (SOP class, character set, attribute tags) and made from its
    template for the later ones (:mod:`chestxr.serve.sr_document`). A test holds the result equal
    to :func:`build_sr` element for element over varied sources and results. Building and
    encoding an SR took ~31-35 ms with ``build_sr``, ~15 ms with the content filled as a pydicom
    data set, ~6-7 ms with the content template (highdicom's document most of it), ~5 ms with
    highdicom's look-ups in the standard's tables memoized (:mod:`chestxr.serve.iod_lookups`),
    ~2.8 ms with the document template too (medians of 8 interleaved runs of 48 SRs: 5.05 and
    2.76 ms), ~2.3 ms with the file put together from the template's bytes (:meth:`encode`;
    3.1 ms before, three passes over 64 SRs).

    Args:
        info: the model description from :func:`chestxr.serve.adapter.load`.
    """

    def __init__(self, info: dict[str, Any]) -> None:
        iod_lookups.install()  # highdicom's static look-ups, memoized: ~1.3 ms less per SR
        self.info = info
        self._content: dict[tuple, ContentTemplate] = {}  # layout -> its content template
        # source shape -> its document template (None: that shape's are highdicom's)
        self._documents: dict[tuple, sr_document.DocumentTemplate | None] = {}
        # (shape, layout) -> whether the template's bytes are pydicom's (checked on the first)
        self._encodings: dict[tuple, bool] = {}
        self._lock = threading.Lock()

    def build(self, source: Dataset, result: dict[str, Any]) -> Dataset:
        """The SR of ``source`` scored as ``result`` (see :func:`build_sr`)."""
        made = self._from_templates(source, result)
        if made is not None:
            document, variable, content, _ = made
            return _spliced(document.around(variable), content)
        layout = _layout(source, result)
        with self._lock:
            template = self._content.get(layout)
        if template is None:
            sr = build_sr(source, result, self.info)
            template = self._template(sr, source, result)
            with self._lock:
                self._content[layout] = template
            return sr
        # highdicom's checks of the source (modality, pixel description), as build_sr makes them
        hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
        content = template.elements(self._leaves(source, result))
        return _spliced(self._document(source), content)

    def encode(self, source: Dataset, result: dict[str, Any]) -> bytes:
        """The SR file of ``source`` scored as ``result``: :meth:`build`'s SR as pydicom writes it.

        Where the source's shape and the result's layout have their templates, the bytes are
        put together by :meth:`chestxr.serve.sr_document.DocumentTemplate.encode` (~0.8 ms less
        per SR than pydicom writing the data set). The first SR of each shape and layout is
        written both ways and the two compared, byte for byte: where they differ, that pair's
        SRs are written by pydicom (with a warning).
        """
        made = self._from_templates(source, result)
        if made is None:
            return _file_bytes(self.build(source, result))
        document, variable, content, key = made
        with self._lock:
            checked = self._encodings.get(key)
        if checked:
            try:
                return document.encode(variable, content)
            except Exception as err:  # pydicom's own writing below stands
                log.warning("the SR byte template failed (%s: %s)", type(err).__name__, err)
        written = _file_bytes(_spliced(document.around(variable), content))
        if checked is None:
            try:
                same = document.encode(variable, content) == written
            except Exception as err:  # pydicom's own writing stands
                log.warning("the SR byte template failed (%s: %s)", type(err).__name__, err)
                same = False
            if not same:
                log.warning(
                    "the SR byte template does not write what pydicom writes; such SRs are "
                    "written by pydicom"
                )
            with self._lock:
                self._encodings[key] = same
        return written

    def _from_templates(self, source: Dataset, result: dict[str, Any]) -> tuple | None:
        """(document template, the document's per-instance elements, the root content
        elements, (shape, layout)) of ``source`` scored as ``result``; None until both
        templates exist (made by :meth:`build` on the first source of its shape and layout)."""
        if not sr_document.available():
            return None
        layout = _layout(source, result)
        filled = evidence(source)
        shape = sr_document.source_shape(filled)
        with self._lock:
            content_template = self._content.get(layout)
            document = self._documents.get(shape)
        if content_template is None or document is None:
            return None
        # highdicom's checks of the source (modality, pixel description), as build_sr makes them
        hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
        content = content_template.elements(self._leaves(source, result))
        variable = document.variable(filled, *sr_uids(source, self.info["model_version"]))
        return document, variable, content, (shape, layout)

    def _document(self, source: Dataset) -> Dataset:
        """The document around the content for ``source``: from the template of the source's
        shape (made from highdicom's on the first source of that shape), or highdicom's own
        where this highdicom keeps its tables elsewhere."""
        if not sr_document.available():
            return self._highdicom_document(source)
        filled = evidence(source)
        shape = sr_document.source_shape(filled)
        with self._lock:
            known = shape in self._documents
            template = self._documents.get(shape)
        if template is None:
            document = self._highdicom_document(source)
            if not known:
                template = self._new_template(document, filled)
                with self._lock:
                    self._documents[shape] = template
            return document
        return template.document(filled, *sr_uids(source, self.info["model_version"]))

    def _new_template(
        self, document: Dataset, source: Dataset
    ) -> sr_document.DocumentTemplate | None:
        """The template of ``source``'s shape, or None (with a warning) when it cannot be made
        or does not make highdicom's document: that shape's documents then stay highdicom's."""
        try:
            return sr_document.DocumentTemplate(
                document, source, self._highdicom_document, _ROOT_CONTENT_TAGS
            )
        except Exception as err:  # whatever it is, highdicom's own documents stay right
            log.warning(
                "no SR document template (%s: %s); the SRs of such sources are built by "
                "highdicom alone",
                type(err).__name__,
                err,
            )
            return None

    def _highdicom_document(self, source: Dataset) -> Dataset:
        """highdicom's document for ``source`` around a placeholder content."""
        stub = hd.sr.ContainerContentItem(
            name=codes.DCM.ImagingMeasurementReport, template_id="1500"
        )
        stub.ContentSequence = hd.sr.ContentSequence(
            [hd.sr.TextContentItem(name=codes.DCM.Comment, value="-", relationship_type="CONTAINS")]
        )
        return _document(source, self.info, stub)

    def _leaves(self, source: Dataset, result: dict[str, Any]) -> list[dict[str, Any]]:
        """Each measurement group's values for ``source`` scored as ``result``."""
        version = self.info["model_version"]
        out = []
        for i, o in enumerate(result["outputs"]):
            present = codes.SCT.Present if o["decision"] else codes.SCT.Absent
            out.append(
                {
                    "tracking_uid": derived_uid(source.SOPInstanceUID, version, f"group{i}"),
                    "source_class_uid": str(source.SOPClassUID),
                    "source_instance_uid": str(source.SOPInstanceUID),
                    "probability_ds": probability_ds(o["probability"]),
                    "probability_fd": float(o["probability"]),
                    "code_value": present.value,
                    "code_scheme": present.scheme_designator,
                    "code_meaning": present.meaning,
                }
            )
        return out

    def _template(self, sr: Dataset, source: Dataset, result: dict[str, Any]) -> ContentTemplate:
        """The content template of ``sr``'s layout, checked against ``sr`` itself: the content
        spliced for its own source and result must decode to highdicom's."""
        root = Dataset()
        for tag in _ROOT_CONTENT_TAGS:
            if tag in sr:
                root[tag] = sr[tag]
        findings = [
            (f.value, f.scheme_designator) for f in (_finding(o["name"]) for o in result["outputs"])
        ]
        template = ContentTemplate(root, findings, sr.get("SpecificCharacterSet") or [])
        spliced = template.elements(self._leaves(source, result))
        charset = sr.get("SpecificCharacterSet")
        expected = as_written(sr[CONTENT_SEQUENCE], charset)
        if decoded_items(spliced[CONTENT_SEQUENCE], charset) != expected:
            raise RuntimeError("the SR content template does not reproduce highdicom's content")
        return template


_ROOT_CONTENT_TAGS = (0x0040A040, 0x0040A043, 0x0040A050, 0x0040A504, 0x0040A730)


def _layout(source: Dataset, result: dict[str, Any]) -> tuple:
    """What a content template depends on: the character set, the outputs and thresholds."""
    charset = sr_document.charset_key(source)  # the SR's text is encoded in the source's
    return (charset, *((o["name"], float(o["threshold"])) for o in result["outputs"]))


def _spliced(sr: Dataset, content: dict[int, Any]) -> Dataset:
    """``sr`` with its root content replaced by ``content``'s encoded elements."""
    for tag in _ROOT_CONTENT_TAGS:
        if tag in sr:
            del sr[tag]
    for tag, elem in content.items():
        sr[tag] = elem
    # written as it is built (Explicit VR Little Endian, its own character set): pydicom then
    # writes the spliced content's bytes as they are instead of decoding them again
    charset = sr.get("SpecificCharacterSet")
    encodings = convert_encodings(charset) if charset else default_encoding
    sr.set_original_encoding(False, True, encodings)
    return sr


def _file_bytes(sr: Dataset) -> bytes:
    """``sr`` as a DICOM file (preamble and file meta enforced)."""
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def banner(
    rgb: np.ndarray, lines: list[str], cmap: str = "jet", legend: str = "Grad-CAM"
) -> np.ndarray:
    """The overlay with a black band on top holding ``lines`` and a colour legend (``legend``
    names what the colours show).

    Returns:
        ``(H + band, W, 3)`` uint8 array.
    """
    h, w = rgb.shape[:2]
    size = max(10, w // 40)
    band = (len(lines) + 2) * int(size * 1.35) + size
    canvas = Image.new("RGB", (w, h + band), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (0, band))
    draw = ImageDraw.Draw(canvas)
    font = _font(size)
    y = size // 2
    for line in lines:
        draw.text((size // 2, y), line, fill=(255, 255, 0), font=font)
        y += int(size * 1.35)
    # colour legend: the CAM's colour map from low to high evidence
    x0, x1 = size // 2 + 4 * size, min(w - 4 * size, size // 2 + 24 * size)
    colours = matplotlib.colormaps[cmap](np.linspace(0, 1, max(x1 - x0, 2)))[:, :3]
    bar = np.round(np.repeat(colours[None], size, axis=0) * 255).astype(np.uint8)
    canvas.paste(Image.fromarray(bar), (x0, y))
    draw.text((size // 2, y), "low", fill=(255, 255, 255), font=font)
    draw.text((x1 + size // 2, y), f"high {legend}", fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def banner_lines(result: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """What the Secondary Capture's banner says."""
    lines = []
    if result.get("explained"):
        lines.append(f"Grad-CAM of {result['explained']}")
    for out in result["outputs"]:
        decision = "POSITIVE" if out["decision"] else "negative"
        lines.append(
            f"{out['name']}: p={out['probability']:.3f} -> {decision} "
            f"(operating point {out['threshold']:.3f})"
        )
    lines.append(
        f"{info['model_name']} chestxr {info['chestxr_version']} model {info['model_version']} "
        f"- {RESEARCH_ONLY}"
    )
    return lines


def build_sc(
    source: Dataset, rgb: np.ndarray, result: dict[str, Any], info: dict[str, Any], out_path: Path
) -> Path:
    """Write the bannered Grad-CAM Secondary Capture (patient module kept, PACS needs it)."""
    explained = result.get("explained")
    legend = f"Grad-CAM of {explained}" if explained else "Grad-CAM"
    image = banner(rgb, banner_lines(result, info), legend=legend)
    # written first beside the outbox (the sender only sends the final file)
    staging = out_path.parent / ".staging" / out_path.name
    adapter.write_secondary_capture(image, source, staging)
    ds = pydicom.dcmread(staging)
    staging.unlink()
    version = info["model_version"]
    ds.SOPInstanceUID = derived_uid(source.SOPInstanceUID, version, "sc")
    ds.SeriesInstanceUID = derived_uid(source.SOPInstanceUID, version, "sc-series")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.BurnedInAnnotation = "YES"
    ds.ImageComments = RESEARCH_ONLY
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return atomic_write_bytes(out_path, buffer.getvalue(), overwrite=True)


def write_sr(
    source: Dataset,
    result: dict[str, Any],
    info: dict[str, Any],
    out_path: Path,
    builder: ReportBuilder | None = None,
) -> Path:
    """Write the SR of one scored instance atomically (built by ``builder`` when given)."""
    if builder is not None:
        return atomic_write_bytes(out_path, builder.encode(source, result), overwrite=True)
    return atomic_write_bytes(out_path, _file_bytes(build_sr(source, result, info)), overwrite=True)
