"""Data layer: layouts (ISIC 2016 Part 3B, ISIC 2017, HAM10000, PH2, generic CSV), the synthetic
benchmark (dermcam.data.synth), the decode cache and downloads."""

from dermcam.data.dataset import DataSet, Sample
from dermcam.data.layouts import detect_layout, load_dataset

__all__ = ["DataSet", "Sample", "detect_layout", "load_dataset"]
