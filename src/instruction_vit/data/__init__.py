"""Data: datasets that carry their class names, splits, templates, transforms."""

from .datasets import (
    FASHION_MNIST_CLASSES,
    ArrayImages,
    DataError,
    FileImages,
    LabelledImages,
    Subset,
    balanced_limit,
    class_subset,
    coop_split,
    fashion_mnist,
    few_shot,
    image_folder,
    read_image,
    stratified_split,
)
from .scan import BadImage, SkipReport, drop_unreadable, image_files, probe_file, scan_unreadable
from .splits import load_splits, split_identity, split_info, training_split
from .check import DataReport, Problem, check_data
from .templates import COOP_TEMPLATES, TEMPLATE_SET_NAMES, check_templates, template_set
from .transforms import TransformedImages, eval_transform, train_transform

__all__ = [
    "COOP_TEMPLATES",
    "FASHION_MNIST_CLASSES",
    "TEMPLATE_SET_NAMES",
    "ArrayImages",
    "BadImage",
    "DataReport",
    "DataError",
    "FileImages",
    "LabelledImages",
    "Problem",
    "SkipReport",
    "Subset",
    "TransformedImages",
    "balanced_limit",
    "check_data",
    "check_templates",
    "class_subset",
    "coop_split",
    "drop_unreadable",
    "eval_transform",
    "fashion_mnist",
    "few_shot",
    "image_files",
    "image_folder",
    "load_splits",
    "probe_file",
    "read_image",
    "scan_unreadable",
    "split_identity",
    "split_info",
    "stratified_split",
    "template_set",
    "train_transform",
    "training_split",
]
