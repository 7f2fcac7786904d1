"""Manifests, patient-level splits, MONAI transforms and the Lightning data module."""
