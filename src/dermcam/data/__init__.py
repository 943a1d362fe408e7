"""Data layer: layouts (ISIC 2016 Part 3B, generic CSV), the synthetic benchmark, the cache."""

from dermcam.data.dataset import LABEL_NAMES, DataSet, Sample, detect_layout, load_dataset

__all__ = ["LABEL_NAMES", "DataSet", "Sample", "detect_layout", "load_dataset"]
