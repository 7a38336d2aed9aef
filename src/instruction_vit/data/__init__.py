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
from .splits import load_splits
from .templates import COOP_TEMPLATES, TEMPLATE_SET_NAMES, check_templates, template_set
from .transforms import TransformedImages, eval_transform, train_transform

__all__ = [
    "COOP_TEMPLATES",
    "FASHION_MNIST_CLASSES",
    "TEMPLATE_SET_NAMES",
    "ArrayImages",
    "DataError",
    "FileImages",
    "LabelledImages",
    "Subset",
    "TransformedImages",
    "balanced_limit",
    "class_subset",
    "check_templates",
    "coop_split",
    "eval_transform",
    "fashion_mnist",
    "few_shot",
    "image_folder",
    "load_splits",
    "read_image",
    "stratified_split",
    "template_set",
    "train_transform",
]
