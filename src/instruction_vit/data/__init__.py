"""Data: data sets that carry their class names (one registered entry each), splits, templates, transforms."""

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
    per_class_split,
    read_image,
    stratified_split,
)
from .scan import BadImage, SkipReport, drop_unreadable, image_files, probe_file, scan_unreadable
from .sets import DataSet, dataset, list_datasets, register_dataset
from .splits import load_splits, split_identity, split_info, training_split
from .check import DataReport, Problem, check_data
from .templates import check_templates, class_text, template_set, template_set_names
from .transforms import TransformedImages, eval_transform, train_transform

__all__ = [
    "FASHION_MNIST_CLASSES",
    "ArrayImages",
    "BadImage",
    "DataReport",
    "DataError",
    "DataSet",
    "FileImages",
    "LabelledImages",
    "Problem",
    "SkipReport",
    "Subset",
    "TransformedImages",
    "balanced_limit",
    "check_data",
    "check_templates",
    "class_text",
    "class_subset",
    "coop_split",
    "dataset",
    "drop_unreadable",
    "eval_transform",
    "fashion_mnist",
    "few_shot",
    "image_files",
    "image_folder",
    "list_datasets",
    "load_splits",
    "per_class_split",
    "probe_file",
    "read_image",
    "register_dataset",
    "scan_unreadable",
    "split_identity",
    "split_info",
    "stratified_split",
    "template_set",
    "template_set_names",
    "train_transform",
    "training_split",
]
