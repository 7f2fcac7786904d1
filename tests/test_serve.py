"""The DICOM AI node's parts: spool, AE title check, duplicates, bad files, results, HTTP."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import lightning as L
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from chestxr.models.module import ChestXRClassifier
from chestxr.serve.metrics import Metrics
from chestxr.serve.spool import Spool, spool_key

CR = "1.2.840.10008.5.1.4.1.1.1"
OPT = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


def make_checkpoint(path: Path, threshold: float = 0.5, seed: int = 0) -> Path:
    """A small chestxr checkpoint (random weights, 64 px, a stored operating point)."""
    torch.manual_seed(seed)
    model = ChestXRClassifier(
        task="binary", classes=["normal", "opacity"], preprocess={"image_size": 64},
        optimizer=OPT,
    )
    model.thresholds.fill_(threshold)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    return path


def make_radiograph(
    path: Path, *, seed: int = 0, study_uid: str | None = None, size: int = 96, **elements: object
) -> Path:
    """A CR chest radiograph (blobs on noise) with a patient module, written to ``path``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = 1500 + 800 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.02)
    img += 800 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.5) ** 2) / 0.02) + rng.normal(0, 50, img.shape)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = f"P-{seed}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate, ds.StudyTime = "20240101", "120000"
    ds.AccessionNumber = f"A{seed}"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.clip(img, 0, 4095).astype("<u2").tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path
