"""Defocus-blur data: the paper's benchmark sets, folders, synthetic defocus scenes, checker.

Every mask tensor follows one convention: 1 = in-focus (sharp), 0 = blurred.
"""
from .base import CombinedDataset, DepthDataset, PairDataset, PhotoDataset, collate_test
from .errors import DatasetError, DatasetWarning
from .polarity import MaskPolarity
from .registry import build_dataset, dataset_names

__all__ = ["build_dataset", "dataset_names", "PhotoDataset", "DepthDataset", "collate_test",
           "PairDataset", "CombinedDataset", "DatasetError", "DatasetWarning", "MaskPolarity"]
