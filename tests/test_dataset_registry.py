"""The data-set registry: every entry declares what it must, unknown names are ConfigErrors, and a new data set is
one class: in a new file of ``instruction_vit/data/sets``, registered with ``register_dataset``, or declared under
the ``instruction_vit.datasets`` entry-point group."""

import sys
import textwrap
from contextlib import contextmanager
from importlib.metadata import EntryPoint

import numpy as np
import pytest

import instruction_vit.data.sets as sets
import instruction_vit.registry as registry
from instruction_vit.config import DataConfig
from instruction_vit.data import (
    ArrayImages,
    DataSet,
    check_templates,
    dataset,
    list_datasets,
    load_splits,
    per_class_split,
    register_dataset,
    split_identity,
    template_set,
    template_set_names,
)
from instruction_vit.errors import ConfigError

SEVEN = ["caltech101", "fashion_mnist", "folder", "oxford_flowers", "oxford_pets", "split_file", "stanford_cars"]
COOP_TEMPLATES = {  # CoOp's per-dataset templates, exactly as the table before the registry held them
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fashion_mnist": "a photo of a {}, a type of clothing.",
}


class Stripes(DataSet):
    """A tiny in-memory data set: horizontal or vertical stripes, 8 of each in train and in test."""

    coop_template = "a photo of {} stripes."

    def read(self, cfg):
        out = {}
        for split, offset in (("train", 0), ("test", 1)):
            images = np.zeros((16, 8, 8), np.uint8)
            images[:8, offset::2, :] = 255  # horizontal
            images[8:, :, offset::2] = 255  # vertical
            out[split] = ArrayImages(images, [0] * 8 + [1] * 8, ["horizontal", "vertical"], f"stripes/{split}")
        return out

    def source(self, cfg):
        return {"source": "generated", "per_class": 8, "val_from_train": None}  # None: load_splits carves val


class PlainStripes(Stripes):
    """The same, for an entry point (not decorated: the entry point's name is its name)."""


@contextmanager
def registry_as_it_was(reload: bool = False):
    """Registrations made inside the block are gone afterwards; ``reload``: read as a new process would."""
    with sets.DATASETS.isolated(reload), pytest.MonkeyPatch.context() as mp:
        yield mp


def test_list_datasets_lists_the_seven():
    assert list_datasets() == SEVEN


@pytest.mark.parametrize("name", list_datasets())  # installed third-party data sets included
def test_every_data_set_declares_what_it_must(name):
    entry = dataset(name)
    assert isinstance(entry, DataSet) and entry.name == name
    assert type(entry).read is not DataSet.read and type(entry).source is not DataSet.source
    if name in SEVEN:
        assert entry.coop_template == COOP_TEMPLATES.get(name)
        assert sys.modules[type(entry).__module__].__doc__  # each module documents its data set's layout
    if entry.coop_template is not None:
        check_templates([entry.coop_template])
        assert template_set(f"coop:{name}") == [entry.coop_template] and f"coop:{name}" in template_set_names()
    else:
        assert f"coop:{name}" not in template_set_names()
    if entry.split_file is not None:  # a CoOp split file lives in the data set's own folder
        assert entry.folder and entry.split_file.endswith(".json")


def test_unknown_names_are_config_errors_with_the_closest():
    with pytest.raises(ConfigError, match="unknown data set 'oxford_pet'; did you mean oxford_pets"):
        dataset("oxford_pet")
    with pytest.raises(ConfigError, match="did you mean stanford_cars"):
        load_splits(DataConfig(dataset="stanford_car", root="/nowhere"))
    with pytest.raises(ConfigError, match="unknown data set 'caltech'"):
        split_identity(DataConfig(dataset="caltech", root="/nowhere"))
    with pytest.raises(ConfigError, match="no CoOp template for 'folder'"):
        template_set("coop:folder")
    with pytest.raises(ConfigError, match="no CoOp template for 'pets'; known: caltech101"):
        template_set("coop:pets")


def test_a_new_data_set_is_one_registered_class():
    with registry_as_it_was():
        register_dataset("stripes")(Stripes)
        assert "stripes" in list_datasets() and dataset("stripes").name == "stripes"
        cfg = DataConfig(dataset="stripes", root="unused", val_fraction=0.25, split_seed=0)
        splits = load_splits(cfg)  # no val split: carved from train, 2 of 8 per class
        assert {name: len(data) for name, data in splits.items()} == {"train": 12, "val": 4, "test": 16}
        assert splits["test"].class_names == ["horizontal", "vertical"]
        assert splits["train"].load_image(0).size == (8, 8)
        identity = split_identity(cfg)
        assert identity["source"] == "generated" and identity["val_from_train"] == {"fraction": 0.25, "seed": 0}
        assert template_set("coop:stripes") == ["a photo of {} stripes."]
        with pytest.raises(ConfigError, match="'stripes' is registered twice"):
            register_dataset("stripes")(PlainStripes)
    assert "stripes" not in list_datasets() and "coop:stripes" not in template_set_names()


def test_a_registered_data_set_is_a_complete_data_set_class():
    with pytest.raises(TypeError, match="register a DataSet subclass"):
        register_dataset("nothing")(object)

    class NoSource(DataSet):
        def read(self, cfg):
            return {}

    with pytest.raises(TypeError, match=r"'no_source' \(.*NoSource\) does not define source"):
        register_dataset("no_source")(NoSource)
    assert "no_source" not in list_datasets()


NEW_FILE = '''
"""Stripes, as a new file in the package: 4 images of each class in train and in test."""

import numpy as np

from instruction_vit.data import ArrayImages
from instruction_vit.data.sets import DataSet, register_dataset


@register_dataset("file_stripes")
class FileStripes(DataSet):
    coop_template = "a photo of {} file stripes."

    def read(self, cfg):
        images = np.zeros((8, 8, 8), np.uint8)
        images[:4, ::2, :] = images[4:, :, ::2] = 255
        return {split: ArrayImages(images, [0] * 4 + [1] * 4, ["horizontal", "vertical"], f"file_stripes/{split}")
                for split in ("train", "test")}

    def source(self, cfg):
        return {"source": "generated", "per_class": 4, "val_from_train": None}
'''


def test_a_new_file_in_the_package_is_a_data_set(tmp_path):
    """A file dropped beside the built-in data sets (here: in a second folder of the package's path) is found by
    the registry and read by load_splits and template_set without touching anything else."""
    (tmp_path / "file_stripes.py").write_text(textwrap.dedent(NEW_FILE), encoding="utf-8")
    with registry_as_it_was(reload=True) as mp:
        mp.setattr(sets, "__path__", [*sets.__path__, str(tmp_path)])
        mp.delitem(sys.modules, "instruction_vit.data.sets.file_stripes", raising=False)
        assert list_datasets() == sorted([*SEVEN, "file_stripes"])
        assert len(load_splits(DataConfig(dataset="file_stripes", root="unused", val_fraction=0.25))["test"]) == 8
        assert template_set("coop:file_stripes") == ["a photo of {} file stripes."]
    sys.modules.pop("instruction_vit.data.sets.file_stripes", None)
    assert list_datasets() == SEVEN


def test_third_party_data_sets_come_in_through_entry_points(monkeypatch):
    point = EntryPoint(name="stripes", value=f"{__name__}:PlainStripes", group="instruction_vit.datasets")
    monkeypatch.setattr(registry, "entry_points", lambda group: [point] if group == point.group else [])
    with registry_as_it_was(reload=True):
        assert list_datasets() == sorted([*SEVEN, "stripes"])
        assert sets.DATASETS.get("stripes") is PlainStripes and dataset("stripes").name == "stripes"
        splits = load_splits(DataConfig(dataset="stripes", root="unused", val_fraction=0.0))
        assert splits["val"] is splits["test"] and len(splits["train"]) == 16
    assert list_datasets() == SEVEN


def test_one_per_class_split_serves_every_recipe():
    labels = [0, 1, 0, 1, 0, 1, 0, 0, 1, 2, 2, 0, 1, 1, 0]
    # Caltech-101's 50/20/30 and a held-out quarter, exactly as the three copies before it chose them.
    assert per_class_split(labels, 3, (0.5, 0.2), seed=1) == [[1, 3, 4, 5, 6, 9, 11, 14], [0, 12], [2, 7, 8, 10, 13]]
    assert per_class_split(labels, 3, (0.25,), seed=3) == [[0, 3, 4, 8], [1, 2, 5, 6, 7, 9, 10, 11, 12, 13, 14]]
    pieces = per_class_split(labels, 3, (0.3, 0.3), seed=0)
    assert sorted(sum(pieces, [])) == list(range(len(labels)))
