"""The node's fast SR builder gives the Structured Report highdicom builds, element for element."""

from __future__ import annotations

import copy
import io
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from chestxr.serve import results, sr_template
from tests.test_serve import make_radiograph

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
BINARY = {
    "model_name": "resnet18-opacity",
    "model_version": "3f2a9c1d",
    "chestxr_version": "0.1.0",
    "config_hash": "0123456789abcdef",
    "config_hash_source": "run",
}
# what highdicom stamps with the time of the build
NOW = {"InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"}


def outputs(names: list[str], probs: list[float], thresholds: list[float]) -> dict:
    return {
        "outputs": [
            {"name": n, "probability": p, "threshold": t, "decision": p >= t}
            for n, p, t in zip(names, probs, thresholds, strict=True)
        ]
    }


def sources(tmp: Path) -> list[Dataset]:
    """Varied sources: another patient and study each; with and without the attributes that
    change what highdicom copies (acquisition equipment, character set, extra patient and study
    attributes, referring physician), a DX as well as CR. The first three have each another
    shape (attribute set); the next two have the first two's shapes with other values, so that
    a document made from an earlier source's and kept any of its values would differ."""
    plain = make_radiograph(tmp / "a.dcm", seed=1)
    rich = make_radiograph(
        tmp / "b.dcm",
        seed=2,
        Manufacturer="ACME",
        ManufacturerModelName="X1",
        DeviceSerialNumber="77",
        SoftwareVersions="4.2",
        SpecificCharacterSet="ISO_IR 100",
        PatientAge="054Y",
        PatientWeight=71.5,
        StudyDescription="CHEST PA",
        ReferringPhysicianName="Who^Doctor",
        PatientName="Müller^Jörg",
    )
    out = [pydicom.dcmread(p, stop_before_pixels=True) for p in (plain, rich)]
    dx = pydicom.dcmread(make_radiograph(tmp / "c.dcm", seed=3), stop_before_pixels=True)
    dx.SOPClassUID = DX_FOR_PRESENTATION
    dx.Modality = "DX"
    plain2 = make_radiograph(
        tmp / "d.dcm",
        seed=4,
        PatientName="Roe^Richard",
        PatientBirthDate="19551231",
        PatientSex="M",
        AccessionNumber="ACC-77",
        StudyID="S9",
        StudyDate="20250302",
        StudyTime="083015",
    )
    rich2 = make_radiograph(
        tmp / "e.dcm",
        seed=5,
        Manufacturer="Other Corp",
        ManufacturerModelName="Y7",
        DeviceSerialNumber="12",
        SoftwareVersions="9.0",
        SpecificCharacterSet="ISO_IR 100",
        PatientAge="033Y",
        PatientWeight=80.0,
        StudyDescription="THORAX AP",
        ReferringPhysicianName="Else^Body",
        PatientName="Ångström^Åsa",
    )
    later = [pydicom.dcmread(p, stop_before_pixels=True) for p in (plain2, rich2)]
    for earlier, same_shape in zip(out, later, strict=True):
        assert set(earlier.keys()) == set(same_shape.keys())
    return [*out, dx, *later]


def iso_2022_and_utf8_sources(tmp: Path) -> list[Dataset]:
    """Sources in character sets other than the default: ISO 2022 code extensions and UTF-8."""
    made = [
        ("j", ["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
        ("k", ["ISO 2022 IR 6", "ISO 2022 IR 87"], "Sato^Hanako=佐藤^花子"),
        ("u", "ISO_IR 192", "Dvořák^Ž"),
        ("v", "ISO_IR 192", "Smetana^Bedřich"),
    ]
    return [
        pydicom.dcmread(
            make_radiograph(
                tmp / f"{tag}.dcm", seed=i, SpecificCharacterSet=charset, PatientName=name
            ),
            stop_before_pixels=True,
        )
        for i, (tag, charset, name) in enumerate(made)
    ]


def canonical(ds: Dataset) -> Dataset:
    """The SR as a PACS receives it (written and read back), with the build times blanked."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    for keyword in NOW:
        if keyword in back:
            setattr(back, keyword, "")
    for item in back.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = ""
    return back


def differences(a: Dataset, b: Dataset, where: str = "") -> list[str]:
    """Paths of the elements that differ (empty: equal)."""
    out = []
    for tag in sorted(set(a.keys()) | set(b.keys())):
        name = f"{where}/{a.get(tag, b.get(tag)).keyword or tag}"
        if tag not in a or tag not in b:
            out.append(f"{name}: only in {'second' if tag not in a else 'first'}")
        elif a[tag].VR == "SQ":
            sa, sb = a[tag].value, b[tag].value
            if len(sa) != len(sb):
                out.append(f"{name}: {len(sa)} vs {len(sb)} items")
            for i, (x, y) in enumerate(zip(sa, sb, strict=False)):
                out += differences(x, y, f"{name}[{i}]")
        elif a[tag].value != b[tag].value:
            out.append(f"{name}: {a[tag].value!r} vs {b[tag].value!r}")
    return out


CASES = [
    (["opacity"], [[0.7], [0.2], [0.5], [1e-7], [0.99999994], [0.123456789012]], [0.5]),
    (
        ["effusion", "nodule", "opacity"],
        [[0.9, 0.1, 0.4], [0.05, 0.8, 0.61], [0.3, 0.3, 0.3]],
        [0.35, 0.5, 0.6],
    ),
]


@pytest.mark.parametrize(("names", "probabilities", "thresholds"), CASES)
def test_fast_sr_equals_highdicoms_for_every_source_and_result(
    tmp_path, names, probabilities, thresholds
):
    info = {**BINARY, "outputs": names}
    builder = results.ReportBuilder(info)
    srcs = sources(tmp_path)
    first = builder.build(srcs[0], outputs(names, probabilities[0], thresholds))
    assert (
        differences(
            canonical(first),
            canonical(
                results.build_sr(srcs[0], outputs(names, probabilities[0], thresholds), info)
            ),
        )
        == []
    )
    for src in srcs:
        for probs in probabilities:
            result = outputs(names, probs, thresholds)
            fast = canonical(builder.build(src, result))
            slow = canonical(results.build_sr(src, result, info))
            assert differences(fast, slow) == [], (src.PatientID, probs)
    # highdicom built the content once per character set of the sources (none, ISO_IR 100)
    assert len(builder._content) == 2
    # and the document once per shape of source (plain, rich, DX): the later sources of a
    # shape got theirs from its template
    assert len(builder._documents) == 3 and None not in builder._documents.values()


# the type 2 attributes of the SR's Patient and General Study modules, listed from the standard
# here, not taken from results.SOURCE_TYPE_2: a name dropped there must fail this test
TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@pytest.mark.parametrize("keyword", TYPE_2)
def test_a_source_without_a_type_2_attribute_gets_its_sr_with_it_empty(tmp_path, keyword):
    """A source lacking a type 2 Patient or General Study attribute (highdicom reads them all)
    gets its SR, fast and highdicom's alike, with the attribute present and empty, the source's
    character set and text kept; the source's header is left as it was."""
    info = {**BINARY, "outputs": ["opacity"]}
    result = outputs(["opacity"], [0.7], [0.5])
    rich = sources(tmp_path)[1]  # ISO_IR 100, a name outside ASCII
    builder = results.ReportBuilder(info)
    builder.build(rich, result)  # the layout's first SR: the next one is built the fast way
    src = copy.deepcopy(rich)
    src.SOPInstanceUID = "1.2.3.4.5"
    if keyword in src:
        del src[keyword]
    before = copy.deepcopy(src)
    fast, slow = builder.build(src, result), results.build_sr(src, result, info)
    assert len(builder._content) == 1  # no second highdicom content: the fast way was taken
    assert differences(canonical(fast), canonical(slow)) == []
    for sr in (fast, slow):
        assert keyword in sr and not sr[keyword].value
        assert sr.SpecificCharacterSet == "ISO_IR 100"
        if keyword != "PatientName":
            assert sr.PatientName == "Müller^Jörg"
    assert src == before
    # a second source of that shape (the attribute missing too), other values: from the
    # document template made from the first
    other = copy.deepcopy(sources(tmp_path)[4])  # rich2: the rich one's shape
    other.SOPInstanceUID = "1.2.3.4.6"
    if keyword in other:
        del other[keyword]
    fast = builder.build(other, result)
    assert None not in builder._documents.values() and len(builder._documents) == 1
    slow = results.build_sr(other, result, info)
    assert differences(canonical(fast), canonical(slow)) == []
    assert keyword in fast and not fast[keyword].value


def test_fast_sr_carries_this_instances_values(tmp_path):
    """Not merely equal to highdicom's: the second instance's SR names its own source,
    probability and decision (a template that kept the first one's would fail here)."""
    info = {**BINARY, "outputs": ["opacity"]}
    builder = results.ReportBuilder(info)
    a, b, *_ = sources(tmp_path)
    builder.build(a, outputs(["opacity"], [0.9], [0.5]))
    sr = canonical(builder.build(b, outputs(["opacity"], [0.125], [0.5])))
    assert sr.PatientID == b.PatientID and sr.StudyInstanceUID == b.StudyInstanceUID
    flat = str(sr)
    assert b.SOPInstanceUID in flat and a.SOPInstanceUID not in flat
    assert "0.125" in flat and "Absent" in flat and "Present" not in flat


def test_each_sr_keeps_its_own_file_meta(tmp_path):
    """SRs built one after another from one template each name their own instance in their file
    meta (a meta shared with the template would take the last one's UID in all of them)."""
    builder = results.ReportBuilder({**BINARY, "outputs": ["opacity"]})
    plain, _, _, plain2, _ = sources(tmp_path)
    result = outputs(["opacity"], [0.4], [0.5])
    # the first SR is build_sr's, the second highdicom's document (the template is made from
    # it), the last two from the template
    srs = [builder.build(s, result) for s in (plain, plain2)]
    srs[1].file_meta.ImplementationVersionName = "EDITED"  # a caller editing the one it got
    srs += [builder.build(s, result) for s in (plain, plain2)]
    assert len(builder._documents) == 1 and None not in builder._documents.values()
    for sr in srs:
        assert sr.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    assert len({sr.SOPInstanceUID for sr in srs}) == 2
    assert srs[3].file_meta.ImplementationVersionName != "EDITED"


def test_a_layout_the_builder_does_not_know_is_refused(tmp_path):
    info = {**BINARY, "outputs": ["opacity"]}
    builder = results.ReportBuilder(info)
    src = sources(tmp_path)[0]
    builder.build(src, outputs(["opacity"], [0.9], [0.5]))
    template = next(iter(builder._content.values()))
    two = builder._leaves(src, outputs(["opacity", "nodule"], [0.9, 0.1], [0.5, 0.5]))
    with pytest.raises(ValueError, match="measurement groups"):
        template.elements(two)
    content = results.build_sr(src, outputs(["opacity"], [0.9], [0.5]), info)
    group = content.ContentSequence[-1].ContentSequence[0].ContentSequence
    group[:] = [item for item in group if item.ValueType != "UIDREF"]  # no tracking UID
    with pytest.raises(ValueError, match="lacks"):
        sr_template.leaf_holders(content, [("OPACITY", results.FINDING_SCHEME)])


def test_a_template_that_does_not_reproduce_highdicoms_content_is_refused(tmp_path, monkeypatch):
    """The template checks itself once against the SR highdicom built: a splice that puts in
    another value than highdicom's (here the probability) stops the node instead of serving it."""
    info = {**BINARY, "outputs": ["opacity"]}
    builder = results.ReportBuilder(info)
    leaves = results.ReportBuilder._leaves

    def off_by_a_little(self, source, result):
        out = leaves(self, source, result)
        out[0]["probability_fd"] += 1e-12
        return out

    monkeypatch.setattr(results.ReportBuilder, "_leaves", off_by_a_little)
    with pytest.raises(RuntimeError, match="does not reproduce"):
        builder.build(sources(tmp_path)[0], outputs(["opacity"], [0.9], [0.5]))


def test_written_sr_file_is_a_valid_part10_file_equal_to_highdicoms(tmp_path):
    """The spliced content goes to disk as delimited sequences: the file reads back (also
    element by element, deferred) to highdicom's SR."""
    info = {**BINARY, "outputs": ["opacity"]}
    builder = results.ReportBuilder(info)
    a, b, *_ = sources(tmp_path)
    builder.build(a, outputs(["opacity"], [0.2], [0.5]))
    path = results.write_sr(
        b, outputs(["opacity"], [0.6], [0.5]), info, tmp_path / "sr.dcm", builder
    )
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    slow = canonical(results.build_sr(b, outputs(["opacity"], [0.6], [0.5]), info))
    assert differences(canonical(back), slow) == []


def test_fast_sr_keeps_text_outside_latin1_in_a_utf8_study(tmp_path):
    """A UTF-8 source (ISO_IR 192) and a finding named outside Latin-1: the SRs of later
    instances keep every character, as highdicom's do (a content cached in another character
    set turned them into "?"); a Latin-1 source after it gets its own encoding."""
    names = ["pleural effusion čž"]
    info = {**BINARY, "model_name": "réseau-ščř", "outputs": names}
    builder = results.ReportBuilder(info)
    utf8 = [
        pydicom.dcmread(
            make_radiograph(
                tmp_path / f"u{i}.dcm",
                seed=i,
                SpecificCharacterSet="ISO_IR 192",
                PatientName="Dvořák^Ž",
            ),
            stop_before_pixels=True,
        )
        for i in range(2)
    ]
    latin1 = pydicom.dcmread(
        make_radiograph(tmp_path / "l.dcm", seed=5, SpecificCharacterSet="ISO_IR 100"),
        stop_before_pixels=True,
    )
    for src, p in ((utf8[0], 0.8), (utf8[1], 0.3), (latin1, 0.6)):
        result = outputs(names, [p], [0.5])
        fast = canonical(builder.build(src, result))
        assert differences(fast, canonical(results.build_sr(src, result, info))) == []
    assert "pleural effusion čž" in str(
        canonical(builder.build(utf8[1], outputs(names, [0.3], [0.5])))
    )


def test_fast_sr_of_an_iso_2022_study_equals_highdicoms(tmp_path):
    """A source with a multi-valued character set (ISO 2022 code extensions, as Japanese and
    Korean modalities send) and an ideographic patient name: its SRs are highdicom's, from the
    document template too (the builder failed on the unhashable value before)."""
    info = {**BINARY, "outputs": ["opacity"]}
    builder = results.ReportBuilder(info)
    scans = iso_2022_and_utf8_sources(tmp_path)[:2]  # Yamada, Sato: ISO 2022 IR 6/87
    for src, p in ((scans[0], 0.8), (scans[1], 0.3), (scans[0], 0.6), (scans[1], 0.1)):
        result = outputs(["opacity"], [p], [0.5])
        fast = canonical(builder.build(src, result))
        assert differences(fast, canonical(results.build_sr(src, result, info))) == []
        assert str(fast.PatientName) == str(src.PatientName)
    assert list(builder._documents.values()) != [None]  # the last two from the template
    assert len(builder._documents) == 1


def test_fast_sr_refuses_a_source_highdicom_refuses(tmp_path):
    """The checks highdicom makes of a source image hold on the fast path too."""
    info = {**BINARY, "outputs": ["opacity"]}
    builder = results.ReportBuilder(info)
    good, bad, *_ = sources(tmp_path)
    builder.build(good, outputs(["opacity"], [0.9], [0.5]))
    bad.Modality = "SR"  # not an image
    with pytest.raises(Exception) as slow:
        results.build_sr(bad, outputs(["opacity"], [0.9], [0.5]), info)
    with pytest.raises(type(slow.value)):
        builder.build(bad, outputs(["opacity"], [0.9], [0.5]))


def answer(function, *args):
    """What ``function(*args)`` returns, or the error it raises (type and message)."""
    try:
        return function(*args)
    except Exception as err:
        return (type(err).__name__, str(err))


def test_memoized_iod_lookups_answer_as_highdicoms_for_every_iod(monkeypatch):
    """The memoized look-ups give highdicom's own answers (computed with none of highdicom's
    functions replaced), for every SOP class in its tables, as the string highdicom passes or
    as a plain one, with the exclusions given as highdicom gives them or otherwise."""
    from highdicom import _standard_utils as standard
    from pydicom.uid import UID

    from chestxr.serve import iod_lookups

    iod_lookups.install()
    assert standard.is_attribute_in_iod is iod_lookups.is_attribute_in_iod
    uids = sorted(standard.get_sop_class_iod_map())
    assert len(uids) > 100
    lookups = [
        ("ContentDate", None),
        ("PixelData", ["IconImageSequence"]),
        ("PixelData", ("IconImageSequence",)),
        ("PixelData", "IconImageSequence"),  # a string: highdicom tests it by substring
        ("PixelData", None),
        ("NumberOfFrames", None),
    ]
    with monkeypatch.context() as m:  # highdicom's answers, from highdicom alone
        m.setattr(standard, "is_attribute_in_iod", iod_lookups._is_attribute_in_iod)
        m.setattr(standard, "does_iod_have_pixel_data", iod_lookups._does_iod_have_pixel_data)
        expected = {
            uid: (
                answer(standard.does_iod_have_pixel_data, uid),
                [answer(standard.is_attribute_in_iod, a, uid, e) for a, e in lookups],
            )
            for uid in uids
        }
    assert standard.is_attribute_in_iod is iod_lookups.is_attribute_in_iod
    seen = set()
    for uid in uids:
        pixels, attributes = expected[uid]
        seen.add(pixels)
        for as_given in (UID(uid), uid):
            for _ in range(2):  # computed, then from the cache
                assert answer(iod_lookups.does_iod_have_pixel_data, as_given) == pixels, uid
                got = [answer(iod_lookups.is_attribute_in_iod, a, as_given, e) for a, e in lookups]
                assert got == attributes, uid
    assert {True, False} <= seen  # images and non-images both looked up
    with pytest.raises(KeyError, match="No IOD found"):  # an unknown class is still an error
        iod_lookups.is_attribute_in_iod("PixelData", "1.2.3.4.5")


def test_sr_is_the_same_with_highdicoms_own_lookups(tmp_path, monkeypatch):
    """The builder puts the memoized look-ups in place in highdicom; the SR built with
    highdicom's original ones is the same, element for element. (Only a few answers reach an SR;
    the test above checks every answer.)"""
    import highdicom.base
    import highdicom.base_content

    from chestxr.serve import iod_lookups

    builder = results.ReportBuilder(BINARY)
    assert highdicom.base.is_attribute_in_iod is iod_lookups.is_attribute_in_iod
    assert highdicom.base_content.does_iod_have_pixel_data is iod_lookups.does_iod_have_pixel_data
    result = outputs(["opacity"], [0.7], [0.5])
    scans = sources(tmp_path)
    memoized = [canonical(builder.build(s, result)) for s in scans]
    originals = {
        iod_lookups.is_attribute_in_iod: iod_lookups._is_attribute_in_iod,
        iod_lookups.does_iod_have_pixel_data: iod_lookups._does_iod_have_pixel_data,
    }
    for name, module in list(sys.modules.items()):
        if name.startswith("highdicom"):
            for attr, value in list(vars(module).items()):
                if any(value is memo for memo in originals):
                    monkeypatch.setattr(module, attr, originals[value])
    assert highdicom.base.is_attribute_in_iod is iod_lookups._is_attribute_in_iod
    plain = [canonical(results.build_sr(s, result, BINARY)) for s in scans]
    for a, b in zip(memoized, plain, strict=True):
        assert differences(a, b) == []


def test_without_highdicoms_standard_utils_nothing_is_replaced(monkeypatch):
    """A highdicom without ``_standard_utils`` (before 0.28) keeps its own look-ups: the node
    still starts, without the memoization."""
    from chestxr.serve import iod_lookups

    monkeypatch.setattr(iod_lookups, "_is_attribute_in_iod", None)
    assert iod_lookups.install() == []
    results.ReportBuilder(BINARY)  # builds as before


def test_a_document_template_that_does_not_reproduce_highdicoms_is_not_used(
    tmp_path, monkeypatch, caplog
):
    """The document template checks itself when made, against highdicom on a changed copy of
    its source: one that would keep a value of the source it was made from (here the evidence's
    series) is not used; the SRs of that shape stay highdicom's, equal to build_sr's, with a
    warning."""
    from chestxr.serve import sr_document

    evidence = sr_document.DocumentTemplate._evidence

    def stale(self, source):
        item = evidence(self, source)
        item.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.999"
        return item

    monkeypatch.setattr(sr_document.DocumentTemplate, "_evidence", stale)
    info = {**BINARY, "outputs": ["opacity"]}
    builder = results.ReportBuilder(info)
    plain, _, _, plain2, _ = sources(tmp_path)
    with caplog.at_level("WARNING", logger="chestxr.serve.results"):
        for src, p in ((plain, 0.9), (plain2, 0.2), (plain, 0.4), (plain2, 0.7)):
            result = outputs(["opacity"], [p], [0.5])
            fast = canonical(builder.build(src, result))
            assert differences(fast, canonical(results.build_sr(src, result, info))) == []
    assert list(builder._documents.values()) == [None]
    warnings = [m for m in (r.getMessage() for r in caplog.records) if "no SR document" in m]
    assert len(warnings) == 1 and "does not reproduce" in warnings[0]


def test_the_document_check_changes_every_value_it_can(tmp_path):
    """The copy of the source a document template is checked on differs from it in every
    single-valued text, number, date and time (so a template carrying any of them over from its
    source fails its check), and not in its code strings."""
    from chestxr.serve import sr_document

    src = sources(tmp_path)[1]  # the rich one: equipment, age, weight, description, physician
    changed = {e.keyword for e in src if sr_document._changed(e) is not None}
    assert {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientAge",
        "PatientWeight",
        "StudyDescription",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "Manufacturer",
        "ManufacturerModelName",
    } <= changed
    assert not changed & {"PatientSex", "Modality", "SpecificCharacterSet"}
    for elem in src:
        new = sr_document._changed(elem)
        if new is not None:
            assert str(new) != str(elem.value), elem.keyword


def test_without_highdicoms_tables_every_document_is_highdicoms(tmp_path, monkeypatch):
    """A highdicom that keeps its standard tables elsewhere gets no document template: each
    document is highdicom's, and the SRs are still equal to build_sr's."""
    from chestxr.serve import sr_document

    monkeypatch.setattr(sr_document, "standard", None)
    builder = results.ReportBuilder({**BINARY, "outputs": ["opacity"]})
    result = outputs(["opacity"], [0.7], [0.5])
    for src in sources(tmp_path):
        fast = canonical(builder.build(src, result))
        assert differences(fast, canonical(results.build_sr(src, result, builder.info))) == []
    assert builder._documents == {}


def test_encoded_srs_are_the_built_srs_as_pydicom_writes_them(tmp_path):
    """The SR files put together from the templates' bytes are, byte for byte, pydicom's
    writing of the same SR; and read back they are highdicom's, for every source shape and
    character set (each shape's first SR from highdicom, the later ones from the bytes)."""
    names = ["opacity", "effusion"]
    info = {**BINARY, "outputs": names}
    builder = results.ReportBuilder(info)
    srcs = sources(tmp_path) + iso_2022_and_utf8_sources(tmp_path)
    for probs in ([0.9, 0.1], [0.2, 0.7]):
        for src in srcs:
            result = outputs(names, probs, [0.5, 0.4])
            written = pydicom.dcmread(io.BytesIO(builder.encode(src, result)))
            slow = canonical(results.build_sr(src, result, info))
            assert differences(canonical(written), slow) == [], (src.PatientName, probs)
            made = builder._from_templates(src, result)
            if made is not None:  # the same per-instance values written both ways
                document, variable, content, _ = made
                pydicoms = results._file_bytes(results._spliced(document.around(variable), content))
                assert document.encode(variable, content) == pydicoms
    # every shape and layout checked its bytes on its first SR and went on with them
    assert len(builder._encodings) == 5 and all(builder._encodings.values())


def test_an_sr_byte_template_that_does_not_write_pydicoms_bytes_is_not_used(
    tmp_path, monkeypatch, caplog
):
    """Bytes that differ from pydicom's writing of the SR (here: one byte) are not served: that
    shape's SRs are written by pydicom, with a warning."""
    info = {**BINARY, "outputs": ["opacity"]}
    builder = results.ReportBuilder(info)
    encode = results.sr_document.DocumentTemplate.encode

    def off_by_a_byte(self, variable, content):
        data = bytearray(encode(self, variable, content))
        data[-1] ^= 1
        return bytes(data)

    calls = []

    def counted(self, variable, content):
        calls.append(1)
        return off_by_a_byte(self, variable, content)

    monkeypatch.setattr(results.sr_document.DocumentTemplate, "encode", counted)
    a, _, _, plain2, _ = sources(tmp_path)
    builder.build(a, outputs(["opacity"], [0.2], [0.5]))  # the templates of plain sources
    for p in (0.8, 0.3, 0.6):
        result = outputs(["opacity"], [p], [0.5])
        written = pydicom.dcmread(io.BytesIO(builder.encode(plain2, result)))
        slow = canonical(results.build_sr(plain2, result, info))
        assert differences(canonical(written), slow) == []
    assert list(builder._encodings.values()) == [False]
    assert len(calls) == 1  # the check; never again for this shape and layout
    assert "byte template does not write what pydicom writes" in caplog.text


def test_an_sr_byte_template_that_fails_leaves_pydicoms_writing(tmp_path, monkeypatch, caplog):
    """An error in the bytes path, at its check or later, costs the instance nothing: its SR is
    written by pydicom (a failure record would lose a result that can be made)."""
    info = {**BINARY, "outputs": ["opacity"]}
    builder = results.ReportBuilder(info)
    a, _, _, plain2, _ = sources(tmp_path)
    builder.build(a, outputs(["opacity"], [0.2], [0.5]))
    builder.encode(plain2, outputs(["opacity"], [0.7], [0.5]))  # the document template
    broken = {"now": False}
    encode = results.sr_document.DocumentTemplate.encode

    def sometimes(self, variable, content):
        if broken["now"]:
            raise ValueError("no file meta")
        return encode(self, variable, content)

    monkeypatch.setattr(results.sr_document.DocumentTemplate, "encode", sometimes)
    for fail_at_check in (False, True):
        builder._encodings.clear()
        broken["now"] = fail_at_check
        builder.encode(plain2, outputs(["opacity"], [0.4], [0.5]))  # the check
        broken["now"] = True
        for p in (0.8, 0.3):
            result = outputs(["opacity"], [p], [0.5])
            written = pydicom.dcmread(io.BytesIO(builder.encode(plain2, result)))
            slow = canonical(results.build_sr(plain2, result, info))
            assert differences(canonical(written), slow) == []
        assert list(builder._encodings.values()) == [not fail_at_check]
    assert "the SR byte template failed (ValueError: no file meta)" in caplog.text
