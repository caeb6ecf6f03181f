"""Data sets (in-memory tensors in [-1, 1]) and the held-out-digit anomaly split."""

from .datasets import (
    CELEBA_CROP,
    DATASETS,
    AnomalySplit,
    DataError,
    DatasetInfo,
    dataset_info,
    expected_files,
    heldout_digit_split,
    image_shape,
    load_images,
    stratified_subset,
)
from .root import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, DEFAULT_DATA_ROOTS, resolve_data_root

__all__ = [
    "AnomalySplit",
    "CELEBA_CROP",
    "DATASETS",
    "DATA_ROOT_ENV",
    "DEFAULT_DATA_ROOT",
    "DEFAULT_DATA_ROOTS",
    "DataError",
    "DatasetInfo",
    "dataset_info",
    "expected_files",
    "heldout_digit_split",
    "image_shape",
    "load_images",
    "resolve_data_root",
    "stratified_subset",
]
