"""Data for bitkit: cards, loaders, BiT preprocessing, few-shot subsets, the embedded world.

>>> from bitkit.data import load, preprocess
>>> raw = load("world-objects", "train")            # (uint8 image, label) pairs
>>> train = preprocess(raw, train=True)             # (float tensor in [-1, 1], label)
"""

from bitkit.data.base import ImageDataset, JoinedDataset, SubsetDataset
from bitkit.data.cards import CardError, DataCard, get_card, list_cards
from bitkit.data.corrupt import CorruptReport
from bitkit.data.fewshot import (
    SplitSizeWarning,
    kshot,
    kshot_family,
    kshot_indices,
    vtab1k_split,
)
from bitkit.data.loading import load, vtab1k
from bitkit.data.transforms import (
    BiTTransform,
    InceptionTransform,
    Preprocessed,
    preprocess,
    preprocess_stream,
)

__all__ = [
    "BiTTransform", "CardError", "CorruptReport", "DataCard", "ImageDataset",
    "InceptionTransform", "JoinedDataset", "Preprocessed", "SplitSizeWarning", "SubsetDataset",
    "get_card", "kshot", "kshot_family", "kshot_indices", "list_cards", "load",
    "preprocess", "preprocess_stream", "vtab1k", "vtab1k_split",
]
