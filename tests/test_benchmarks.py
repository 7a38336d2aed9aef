"""Miniature copies of the four official layouts: our readers agree with torchvision's dataset classes."""

import json

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image
from scipy.io import savemat

from instruction_vit.data import DataError
from instruction_vit.data.benchmarks import load_benchmark


def _jpg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def caltech(tmp_path):
    cats = {"BACKGROUND_Google": 3, "Faces": 4, "Faces_easy": 4, "Leopards": 5, "accordion": 10, "yin_yang": 6}
    for cat, n in cats.items():
        for i in range(1, n + 1):
            _jpg(tmp_path / "caltech101" / "101_ObjectCategories" / cat / f"image_{i:04d}.jpg", i)
    return tmp_path


@pytest.fixture
def pets(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    breeds = ["Abyssinian", "american_bulldog", "Bengal"]
    lines = {"trainval": [], "test": []}
    for label, breed in enumerate(breeds, 1):
        for i in range(1, 8):
            _jpg(base / "images" / f"{breed}_{i}.jpg", i)
            lines["test" if i > 5 else "trainval"].append(f"{breed}_{i} {label} {1 + (label == 2)} 1")
    (base / "annotations").mkdir()
    for split, rows in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.fixture
def cars(tmp_path):
    base = tmp_path / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Tesla Model S Sedan 2012"]
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})

    def annos(folder, n):
        rows = np.zeros((1, n), dtype=[("fname", "O"), ("class", "O")])
        for i in range(n):
            rows[0, i] = (f"{i + 1:05d}.jpg", np.array([[i % 3 + 1]], dtype=np.uint8))
            _jpg(base / folder / f"{i + 1:05d}.jpg", i)
        return {"annotations": rows}

    savemat(base / "devkit" / "cars_train_annos.mat", annos("cars_train", 15))
    savemat(base / "cars_test_annos_withlabels.mat", annos("cars_test", 6))
    return tmp_path


@pytest.fixture
def flowers(tmp_path, monkeypatch):
    base = tmp_path / "flowers-102"
    labels = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 102, 102, 1])
    for i in range(1, len(labels) + 1):
        _jpg(base / "jpg" / f"image_{i:05d}.jpg", i)
    savemat(base / "imagelabels.mat", {"labels": labels[None]})
    savemat(base / "setid.mat", {"trnid": np.array([[1, 2, 3, 10]]), "valid": np.array([[4, 5, 11]]),
                                 "tstid": np.array([[6, 7, 8, 9, 12]])})
    monkeypatch.setattr(tvd.flowers102, "check_integrity", lambda *a, **k: True)  # md5s of the real files
    return tmp_path


def _samples(data):
    return sorted((str(data.root / p), y) for p, y in zip(data.paths, data.labels))


def test_caltech101_matches_torchvision_minus_coop_drops(caltech):
    ours = load_benchmark("caltech101", caltech)
    tv = tvd.Caltech101(str(caltech), download=False)
    assert ours["train"].class_names == ["face", "leopard", "accordion", "yin yang"]
    kept = [c for c in tv.categories if c != "Faces_easy"]
    expected = sorted((str(caltech / "caltech101" / "101_ObjectCategories" / tv.categories[y] /
                           f"image_{i:04d}.jpg"), kept.index(tv.categories[y]))
                      for i, y in zip(tv.index, tv.y) if tv.categories[y] != "Faces_easy")
    assert sorted(sum((_samples(ours[s]) for s in ("train", "val", "test")), [])) == expected
    sizes = [4, 5, 10, 6]  # per kept class; CoOp: round(n * 0.5) train, round(n * 0.2) val, the rest test
    n_train, n_val = sum(round(n * 0.5) for n in sizes), sum(round(n * 0.2) for n in sizes)
    assert [len(ours[s]) for s in ("train", "val", "test")] == [n_train, n_val, sum(sizes) - n_train - n_val]


def test_oxford_pets_matches_torchvision(pets):
    ours = load_benchmark("oxford_pets", pets, val_fraction=0.2, seed=1)
    tv_trainval = tvd.OxfordIIITPet(str(pets), split="trainval")
    tv_test = tvd.OxfordIIITPet(str(pets), split="test")
    assert ours["train"].class_names == [c.lower() for c in tv_trainval.classes]
    assert ours["train"].class_names == ["abyssinian", "american bulldog", "bengal"]
    union = sorted(_samples(ours["train"]) + _samples(ours["val"]))
    assert union == sorted((str(p), y) for p, y in zip(tv_trainval._images, tv_trainval._labels))
    assert _samples(ours["test"]) == sorted((str(p), y) for p, y in zip(tv_test._images, tv_test._labels))
    assert len(ours["val"]) == 3  # one per class (20% of 5)


def test_stanford_cars_matches_torchvision(cars):
    ours = load_benchmark("stanford_cars", cars)
    tv_train, tv_test = tvd.StanfordCars(str(cars), split="train"), tvd.StanfordCars(str(cars), split="test")
    assert ours["train"].class_names == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Tesla Model S Sedan"]
    assert [n.split(" ", 1)[1] + " " + n.split(" ", 1)[0] for n in ours["train"].class_names] == tv_train.classes
    assert sorted(_samples(ours["train"]) + _samples(ours["val"])) == sorted(tv_train._samples)
    assert _samples(ours["test"]) == sorted(tv_test._samples)


def test_flowers102_matches_torchvision(flowers):
    ours = load_benchmark("oxford_flowers", flowers)
    for split in ("train", "val", "test"):
        tv = tvd.Flowers102(str(flowers), split=split)
        assert _samples(ours[split]) == sorted((str(p), y) for p, y in zip(tv._image_files, tv._labels))
    assert ours["train"].class_names == list(tvd.Flowers102.classes) and len(ours["train"].class_names) == 102


def test_coop_split_file_takes_precedence(pets):
    split = {"train": [["Bengal_1.jpg", 0, "Bengal"]], "val": [["Bengal_2.jpg", 0, "Bengal"]],
             "test": [["Bengal_3.jpg", 0, "Bengal"]]}
    (pets / "oxford-iiit-pet" / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    ours = load_benchmark("oxford_pets", pets)
    assert len(ours["train"]) == 1 and ours["train"].class_names == ["Bengal"]
    assert ours["test"].load_image(0).size == (8, 8)


def test_missing_layout_names_the_folder(tmp_path):
    with pytest.raises(DataError, match="folder .*caltech101 not found"):
        load_benchmark("caltech101", tmp_path)
    (tmp_path / "stanford_cars").mkdir()
    with pytest.raises(DataError, match="cars_meta.mat not found"):
        load_benchmark("stanford_cars", tmp_path)
