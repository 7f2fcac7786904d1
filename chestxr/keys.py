"""Names of the keys in a sample dictionary, shared by loaders, transforms and models."""

from __future__ import annotations

IMAGE = "image"  # the radiograph: a path before loading, a (1, H, W) float tensor after
TARGET = "target"  # float vector, one entry per model output; NaN where the label is unknown
PATH = "path"  # absolute path of the source file, as a string
PATIENT_ID = "patient_id"
INDEX = "index"  # row of the sample in its manifest
ORIG_SHAPE = "orig_shape"  # (H, W) of the decoded image before resizing
SEED = "seed"  # seed of the sample's random augmentation, paired with it by the sampler
