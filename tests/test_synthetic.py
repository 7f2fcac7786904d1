"""The synthetic data set: real DICOM files, deterministic, varied encodings, sound lesions."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from chestxr.data import synthetic as syn
from tests.conftest import compose_config

SIZE = (96, 128)


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _attenuation(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values through the modality LUT, flipped for MONOCHROME1 (bright = attenuating)."""
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    return -values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def opacity_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("opacity")
    return syn.generate_synthetic(out, n_images=40, seed=3, size_range=SIZE)


@pytest.fixture(scope="module")
def all_findings_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("all")
    return syn.generate_synthetic(
        out, n_images=40, seed=5, findings=syn.FINDINGS, positive_fraction=0.7, size_range=SIZE
    )


def test_manifest_columns_labels_and_boxes(opacity_set):
    with open(opacity_set, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == ["path", "label", "opacity", *syn.MANIFEST_COLUMNS_TAIL]
    rows = _rows(opacity_set)
    assert len(rows) == 40
    assert sum(r["label"] == "opacity" for r in rows) == 20  # positive_fraction 0.5
    for r in rows:
        assert r["label"] in ("opacity", syn.NO_FINDING)
        assert r["opacity"] == str(int(r["label"] == "opacity"))
        boxes = json.loads(r["boxes"])
        assert (len(boxes) > 0) == (r["label"] == "opacity")
        assert all(b["label"] == "opacity" for b in boxes)
        assert (opacity_set.parent / r["path"]).is_file()
        assert not Path(r["path"]).is_absolute()
        lo, hi = SIZE
        rows_, cols = int(r["rows"]), int(r["columns"])
        assert lo <= rows_ <= hi and lo <= cols <= hi
        assert 0.85 <= cols / rows_ <= 1.15


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = {"n_images": 6, "size_range": SIZE}
    a = syn.generate_synthetic(tmp_path / "a", seed=11, **kw)
    b = syn.generate_synthetic(tmp_path / "b", seed=11, **kw)
    c = syn.generate_synthetic(tmp_path / "c", seed=12, **kw)
    assert a.read_bytes() == b.read_bytes()
    files = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*.dcm"))
    assert len(files) == 6
    for rel in files:
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes()
    assert a.read_bytes() != c.read_bytes()
    first_a = pydicom.dcmread(a.parent / _rows(a)[0]["path"]).pixel_array
    first_c = pydicom.dcmread(c.parent / _rows(c)[0]["path"]).pixel_array
    assert first_a.shape != first_c.shape or not np.array_equal(first_a, first_c)


def test_files_are_valid_dicom_with_varied_encodings(opacity_set):
    rows = _rows(opacity_set)
    seen = defaultdict(set)
    for r in rows:
        ds = pydicom.dcmread(opacity_set.parent / r["path"])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == r["sop_uid"]
        assert ds.StudyInstanceUID == r["study_uid"] and ds.SeriesInstanceUID == r["series_uid"]
        expected_class = {"CR": syn.CR_IMAGE_STORAGE, "DX": syn.DX_PRESENTATION_STORAGE}
        assert ds.SOPClassUID == expected_class[ds.Modality] == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == r["modality"] and ds.PhotometricInterpretation == r["photometric"]
        assert ds.Manufacturer == syn.MANUFACTURER
        assert str(ds.PatientName).startswith("SYNTHETIC^") and ds.PatientID == r["patient_id"]
        assert (ds.Rows, ds.Columns) == (int(r["rows"]), int(r["columns"]))
        assert ds.BitsAllocated == 16 and ds.BitsStored == int(r["bits_stored"])
        assert ds.HighBit == ds.BitsStored - 1
        assert int(ds.pixel_array.max()) <= 2**ds.BitsStored - 1
        assert ds.ViewPosition == r["view"] and ds.PatientSex == r["sex"]
        assert ds.PatientAge == f"{int(r['age']):03d}Y"
        assert float(ds.PixelSpacing[0]) > 0 and float(ds.WindowWidth) > 0
        if ds.Modality == "DX":
            shape = "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
            assert ds.PresentationLUTShape == shape
        for key in ("Modality", "PhotometricInterpretation", "BitsStored", "ViewPosition"):
            seen[key].add(ds.get(key))
        seen["slope"].add(float(ds.RescaleSlope))
        seen["intercept"].add(float(ds.RescaleIntercept))
    assert seen["Modality"] == {"CR", "DX"}
    assert seen["PhotometricInterpretation"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["BitsStored"] == {12, 16}
    assert seen["ViewPosition"] == {"PA", "AP"}
    assert len(seen["slope"]) >= 2 and len(seen["intercept"]) >= 2


def test_decoded_files_recover_the_phantom_and_window_covers_body(opacity_set):
    for i, r in enumerate(_rows(opacity_set)):
        ds = pydicom.dcmread(opacity_set.parent / r["path"])
        phantom = syn.regenerate_phantom(opacity_set, i)
        decoded = _attenuation(ds)
        assert decoded.shape == phantom.attenuation.shape
        assert _corr(decoded, phantom.attenuation) > 0.999
        # the header window (on modality values) holds nearly all of the body
        values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        body = values[phantom.attenuation > 0.15]
        lo = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
        hi = float(ds.WindowCenter) + float(ds.WindowWidth) / 2
        assert np.mean((body >= lo) & (body <= hi)) > 0.98


def test_every_encoding_decodes_to_the_same_image():
    rng = np.random.default_rng(0)
    phantom = syn.render_phantom(rng, 110, 100, ("opacity",))
    decoded = []
    combos = itertools.product(
        ("CR", "DX"), ("MONOCHROME1", "MONOCHROME2"), (12, 16), ((1.0, 0.0), (0.5, -1024.0))
    )
    for modality, photometric, bits, (slope, intercept) in combos:
        top = 2**bits - 1
        enc = syn.Encoding(modality, photometric, bits, slope, intercept, 40, top - 100)
        stored = syn.encode_pixels(phantom.attenuation, enc)
        assert int(stored.max()) <= top
        ds = syn.build_dataset(
            stored,
            enc,
            body_mask=phantom.attenuation > 0.15,
            pixel_spacing=3.5,
            patient={"id": "P1", "name": "SYNTHETIC^1", "sex": "F", "birth_date": "19700101"},
            study={
                "study_uid": "1.2.3",
                "series_uid": "1.2.3.4",
                "sop_uid": "1.2.3.4.5",
                "date": "20200101",
                "time": "120000",
                "age": 50,
                "view": "PA",
                "number": 1,
            },
        )
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        buf.seek(0)
        decoded.append(_attenuation(pydicom.dcmread(buf)))
    for image in decoded:
        assert _corr(image, phantom.attenuation) > 0.999
        assert _corr(image, decoded[0]) > 0.999


def test_boxes_lie_in_the_image_and_the_lungs(all_findings_set):
    rows = _rows(all_findings_set)
    seen = set()
    for i, r in enumerate(rows):
        phantom = syn.regenerate_phantom(all_findings_set, i)
        boxes = json.loads(r["boxes"])
        assert boxes == [dict(b) for b in phantom.boxes]
        present = set() if r["label"] == syn.NO_FINDING else set(r["label"].split("|"))
        assert {b["label"] for b in boxes} == present
        seen |= present
        h, w = int(r["rows"]), int(r["columns"])
        for b in boxes:
            assert b["x"] >= 0 and b["y"] >= 0 and b["width"] > 0 and b["height"] > 0
            assert b["x"] + b["width"] <= w and b["y"] + b["height"] <= h
            inside = np.zeros((h, w), dtype=bool)
            inside[b["y"] : b["y"] + b["height"], b["x"] : b["x"] + b["width"]] = True
            if b["label"] == "cardiomegaly":
                assert phantom.heart_mask[inside].mean() > 0.5
                continue
            assert (phantom.lesion_mask & inside).any()
            if b["label"] == "nodule":  # round: its centre is lung (with the nodule on it)
                assert phantom.lung_mask[b["y"] + b["height"] // 2, b["x"] + b["width"] // 2]
        if present - {"cardiomegaly"}:
            # what the lesions change, they change inside the boxes and the lung fields
            bare = syn.regenerate_phantom(all_findings_set, i, paint_findings=False)
            changed = phantom.attenuation - bare.attenuation > 0.04
            changed &= ~phantom.heart_mask & ~bare.heart_mask
            boxed = np.zeros((h, w), dtype=bool)
            for b in boxes:
                boxed[b["y"] : b["y"] + b["height"], b["x"] : b["x"] + b["width"]] = True
            assert changed.any() and boxed[changed].mean() > 0.95, (i, boxes)
            assert phantom.lung_mask[changed].mean() > 0.9, (i, boxes)
    assert seen == set(syn.FINDINGS)


def test_labels_with_several_findings(all_findings_set):
    with open(all_findings_set, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header[2:6] == list(syn.FINDINGS)
    rows = _rows(all_findings_set)
    assert sum(r["label"] != syn.NO_FINDING for r in rows) == 28
    for r in rows:
        flags = [f for f in syn.FINDINGS if r[f] == "1"]
        assert r["label"] == ("|".join(flags) or syn.NO_FINDING)


def _heart_and_thorax_widths(phantom: syn.Phantom) -> tuple[int, int]:
    heart_cols = np.flatnonzero(phantom.heart_mask.any(axis=0))
    lung_cols = np.flatnonzero(phantom.lung_mask.any(axis=0))
    return heart_cols[-1] - heart_cols[0] + 1, lung_cols[-1] - lung_cols[0] + 1


def test_cardiomegaly_enlarges_the_heart():
    for i in range(6):
        rng_seed = (9, 2, i)
        big = syn.render_phantom(syn.phantom_rng(*rng_seed), 300, 300, ("cardiomegaly",))
        same = syn.render_phantom(
            syn.phantom_rng(*rng_seed), 300, 300, ("cardiomegaly",), paint_findings=False
        )
        assert big.ctr > 0.55 and same.ctr < 0.48
        heart, thorax = _heart_and_thorax_widths(big)
        assert heart / thorax > 0.52
        heart, thorax = _heart_and_thorax_widths(same)
        assert heart / thorax < 0.5
        # the enlarged heart covers lung that the normal one leaves aerated
        assert big.lung_mask.sum() < same.lung_mask.sum()


def test_opacity_raises_attenuation_inside_its_boxes(opacity_set):
    rows = _rows(opacity_set)
    checked = 0
    for i, r in enumerate(rows):
        with_lesion = syn.regenerate_phantom(opacity_set, i)
        without = syn.regenerate_phantom(opacity_set, i, paint_findings=False)
        assert without.boxes == ()
        diff = with_lesion.attenuation.astype(np.float64) - without.attenuation
        if r["label"] == syn.NO_FINDING:
            assert np.array_equal(with_lesion.attenuation, without.attenuation)
            continue
        covered = np.zeros(diff.shape, dtype=bool)
        for b in json.loads(r["boxes"]):
            box = (slice(b["y"], b["y"] + b["height"]), slice(b["x"], b["x"] + b["width"]))
            covered[box] = True
            assert diff[box].mean() > 0.03
            assert diff[box][with_lesion.lesion_mask[box]].mean() > 0.08
        # nothing painted away from the boxes (grown by 2 pixels: their edges are half-maxima)
        grown = covered.copy()
        for axis, shift in itertools.product((0, 1), (-2, -1, 1, 2)):
            grown |= np.roll(covered, shift, axis=axis)
        assert np.abs(diff[~grown]).max() < 0.03
        checked += 1
    assert checked == 20


def test_patients_with_several_studies(tmp_path):
    manifest = syn.generate_synthetic(tmp_path, n_images=60, seed=1, size_range=(64, 64))
    rows = _rows(manifest)
    by_patient = defaultdict(list)
    for r in rows:
        by_patient[r["patient_id"]].append(r)
    assert len(by_patient) == 42  # round(0.7 * 60)
    counts = [len(v) for v in by_patient.values()]
    assert max(counts) >= 2 and max(counts) <= 3
    assert 0.15 < np.mean(np.array(counts) > 1) < 0.5
    assert len({r["study_uid"] for r in rows}) == len(rows)
    assert len({r["sop_uid"] for r in rows}) == len(rows)
    for studies in by_patient.values():
        assert len({r["sex"] for r in studies}) == 1
        ages = [int(r["age"]) for r in studies]
        assert ages == sorted(ages)
        paths = [Path(r["path"]) for r in studies]
        assert all(p.parts[1] == studies[0]["patient_id"] for p in paths)


def test_ensure_synthetic_caches_and_keys_on_parameters(tmp_path, caplog):
    kw = {"n_images": 4, "size_range": (64, 72)}
    first = syn.ensure_synthetic(tmp_path, seed=2, **kw)
    stamp = first.stat().st_mtime_ns
    files = sorted(first.parent.rglob("*.dcm"))
    stamps = [p.stat().st_mtime_ns for p in files]
    again = syn.ensure_synthetic(tmp_path, seed=2, **kw)
    assert again == first and again.stat().st_mtime_ns == stamp
    assert [p.stat().st_mtime_ns for p in files] == stamps
    other = syn.ensure_synthetic(tmp_path, seed=3, **kw)
    assert other.parent != first.parent and other.is_file()
    assert first.parent.name.startswith("synthetic-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [first.parent.name, other.parent.name]
    )  # no temporary folders left behind
    # the same parameters spelled differently hit the same folder
    assert syn.ensure_synthetic(tmp_path, seed=2, findings=["opacity"], **kw) == first
    with pytest.raises(TypeError, match="n_imgs"):
        syn.ensure_synthetic(tmp_path, n_imgs=3)


def test_ensure_synthetic_uses_a_folder_that_appeared_meanwhile(tmp_path, monkeypatch):
    kw = {"n_images": 3, "size_range": (64, 64), "seed": 4}
    real = syn.generate_synthetic

    def racing(out_dir, **params):
        # another process finishes the same set while this one is still generating
        manifest = real(out_dir, **params)
        final = Path(out_dir).parent / f"synthetic-{syn._params_key(syn._resolve_params(**kw))}"
        real(final, **params)
        return manifest

    monkeypatch.setattr(syn.dataset, "generate_synthetic", racing)
    manifest = syn.ensure_synthetic(tmp_path, **kw)
    assert manifest.is_file() and len(_rows(manifest)) == 3
    assert [p.name for p in tmp_path.iterdir()] == [manifest.parent.name]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"findings": ("pneumonia",)}, "pneumonia"),
        ({"findings": ()}, "findings"),
        ({"n_patients": 10, "n_images": 5}, "n_patients"),
        ({"positive_fraction": 1.5}, "1.5"),
        ({"size_range": (32, 64)}, "32"),
    ],
)
def test_bad_parameters_are_rejected(tmp_path, params, match):
    with pytest.raises(ValueError, match=match):
        syn.generate_synthetic(tmp_path, **params)


def test_the_data_config_and_the_code_name_one_default_set(tmp_path):
    """conf/data/synthetic.yaml states no default of its own: it composes to DEFAULTS' set."""
    from hydra.utils import instantiate

    cfg = compose_config("train", tmp_path)
    ensure = instantiate(cfg.data.manifest)  # functools.partial of ensure_synthetic
    yaml_params = {k: v for k, v in ensure.keywords.items() if k != "cache_dir"}
    assert set(yaml_params) == set(syn.DEFAULTS)
    assert all(v is None for v in yaml_params.values())
    resolved = syn._resolve_params(**yaml_params)
    assert resolved == syn._resolve_params()
    assert resolved["n_images"] == syn.DEFAULTS["n_images"]
    assert resolved["findings"] == list(syn.DEFAULTS["findings"])
    assert cfg.data.classes == [syn.NO_FINDING, *syn.DEFAULTS["findings"]]
    # an override reaches the generator as a difference from the defaults
    small = compose_config("train", tmp_path, ["data.manifest.n_images=7"])
    params = {
        k: v for k, v in instantiate(small.data.manifest).keywords.items() if k != "cache_dir"
    }
    assert syn._resolve_params(**params) == {**resolved, "n_images": 7, "n_patients": 5}
