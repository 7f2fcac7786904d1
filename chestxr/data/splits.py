"""Patient-level, label-stratified splitting: no patient ever sits in two splits."""

from __future__ import annotations

import numpy as np

from chestxr.data.manifest import SPLITS, ManifestError


def assign_splits(
    patient_ids: np.ndarray,
    targets: np.ndarray,
    given: np.ndarray | None = None,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Give every row a split, by patient, stratified on the patient's label.

    Rows whose split is given keep it; blank rows of a patient who has a given split inherit it;
    the remaining patients are shuffled within each stratum (the patient's positive outputs) and
    cut by the fractions, so each split gets about the same label mix.

    Args:
        patient_ids: ``(N,)`` patient identifiers.
        targets: ``(N, K)`` targets (NaN unknown) used for stratification.
        given: ``(N,)`` split names or ``""``; None when no row has one.
        val_fraction: share of the unassigned patients for validation.
        test_fraction: share of the unassigned patients for testing.
        seed: seed of the shuffle.

    Returns:
        ``(N,)`` array of ``train``/``val``/``test``.

    Raises:
        ManifestError: a patient with rows in different given splits (a leak).
        ValueError: fractions outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )
    n = len(patient_ids)
    given = np.full(n, "", dtype=object) if given is None else np.asarray(given, dtype=object)
    uniq, patient = np.unique(np.asarray(patient_ids), return_inverse=True)
    n_patients = len(uniq)

    # The split each patient was given (checking that all its given rows agree).
    code = {"": -1, **{s: i for i, s in enumerate(SPLITS)}}
    given_code = np.fromiter((code[s] for s in given), dtype=np.int64, count=n)
    has = given_code >= 0
    patient_split = np.full(n_patients, -1, dtype=np.int64)
    patient_split[patient[has]] = given_code[has]
    conflict = has & (patient_split[patient] != given_code)
    if conflict.any():
        bad = sorted(set(uniq[patient[conflict]].tolist()))
        raise ManifestError(
            f"{len(bad)} patient(s) have rows in more than one split (a leak), e.g. {bad[:5]}"
        )

    # Stratum of each unassigned patient: which outputs are ever positive for it.
    positive = np.nan_to_num(targets, nan=0.0) > 0.5
    k = positive.shape[1] if positive.ndim == 2 else 1
    bits = positive.reshape(n, k)[:, : min(k, 16)] @ (1 << np.arange(min(k, 16)))
    stratum = np.zeros(n_patients, dtype=np.int64)
    np.bitwise_or.at(stratum, patient, bits.astype(np.int64))

    rng = np.random.default_rng(seed)
    for s in np.unique(stratum[patient_split < 0]):
        members = np.flatnonzero((stratum == s) & (patient_split < 0))
        members = members[rng.permutation(len(members))]
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * val_fraction)
        patient_split[members[:n_test]] = 2
        patient_split[members[n_test : n_test + n_val]] = 1
        patient_split[members[n_test + n_val :]] = 0
    return np.asarray(SPLITS, dtype=object)[patient_split[patient]]
