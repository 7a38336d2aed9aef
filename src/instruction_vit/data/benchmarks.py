"""The paper's four datasets, read from their official on-disk layouts (the ones torchvision reads).

``root`` is the folder torchvision's ``root`` argument names; inside it::

    caltech101/101_ObjectCategories/<category>/image_0001.jpg        Caltech101
    oxford-iiit-pet/images/<Breed_Name>_<n>.jpg                      OxfordIIITPet
    oxford-iiit-pet/annotations/{trainval,test}.txt
    stanford_cars/{cars_train,cars_test}/<00001>.jpg                 StanfordCars
    stanford_cars/devkit/{cars_meta.mat,cars_train_annos.mat}
    stanford_cars/cars_test_annos_withlabels.mat
    flowers-102/jpg/image_00001.jpg                                  Flowers102
    flowers-102/{imagelabels.mat,setid.mat}

A CoOp split file (``split_zhou_Caltech101.json``, ``split_zhou_OxfordPets.json``,
``split_zhou_StanfordCars.json``, ``split_zhou_OxfordFlowers.json``) placed in the dataset's folder
(``caltech101/``, ``oxford-iiit-pet/``, ``stanford_cars/``, ``flowers-102/``) is used when present. Otherwise
the splits follow CoOp's recipe: Pets and Cars split their official train(val) set 80/20 into train/val
(seeded) and keep the official test set; Flowers keeps its official train/val/test; Caltech-101 is split per
class 50/20/30. Class names are cleaned as CoOp does (and underscores become spaces, as CoOp's prompt
learner does before encoding).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from .datasets import DataError, FileImages, coop_split

# CoOp's Caltech-101: two folders dropped, four renamed.
CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

BENCHMARKS = {  # config name -> (folder under root, CoOp split file in it)
    "caltech101": ("caltech101", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford-iiit-pet", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("stanford_cars", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("flowers-102", "split_zhou_OxfordFlowers.json"),
}
COOP_IMAGE_DIRS = {"caltech101": "101_ObjectCategories", "oxford_pets": "images", "stanford_cars": "",
                   "oxford_flowers": "jpg"}


def clean_name(name: str) -> str:
    return name.replace("_", " ").strip()


def load_benchmark(name: str, root: str | Path, val_fraction: float = 0.2, seed: int = 1) -> dict[str, FileImages]:
    """``{"train", "val", "test"}`` of one of :data:`BENCHMARKS`."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    folder, split_name = BENCHMARKS[name]
    base = Path(root) / folder
    if not base.is_dir():
        raise DataError(f"{name}: folder {base} not found; data.root must be the folder that holds {folder}/ "
                        "(see docs/datasets.md for where each file goes)")
    split_file = base / split_name
    if split_file.is_file():
        splits = coop_split(split_file, base / COOP_IMAGE_DIRS[name])
        for data in splits.values():
            data.class_names = [clean_name(c) for c in data.class_names]
        return splits
    readers: dict[str, Callable[..., dict[str, FileImages]]] = {
        "caltech101": _caltech101, "oxford_pets": _oxford_pets, "stanford_cars": _stanford_cars,
        "oxford_flowers": _flowers102,
    }
    return readers[name](base, val_fraction, seed)


def _need(path: Path, name: str) -> Path:
    if not path.exists():
        raise DataError(f"{name}: {path} not found (see docs/datasets.md for the expected layout)")
    return path


def _split_train(data: FileImages, fraction: float, seed: int) -> tuple[FileImages, FileImages]:
    """CoOp's per-class split of a train(val) set into train and val."""
    rng = random.Random(seed)
    train, val = [], []
    for c in range(len(data.class_names)):
        idx = [i for i, y in enumerate(data.labels) if y == c]
        rng.shuffle(idx)
        n_val = round(len(idx) * fraction)
        val += idx[:n_val]
        train += idx[n_val:]
    pick = lambda idx: FileImages(data.root, [data.paths[i] for i in sorted(idx)],  # noqa: E731
                                  [data.labels[i] for i in sorted(idx)], data.class_names)
    return pick(train), pick(val)


def _caltech101(base: Path, val_fraction: float, seed: int) -> dict[str, FileImages]:
    images = _need(base / "101_ObjectCategories", "caltech101")
    categories = sorted(p.name for p in images.iterdir() if p.is_dir() and p.name not in CALTECH_IGNORED)
    rng = random.Random(seed)
    parts: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for label, category in enumerate(categories):
        files = sorted(f"{category}/{p.name}" for p in (images / category).iterdir() if p.suffix.lower() == ".jpg")
        rng.shuffle(files)
        n_train, n_val = round(len(files) * 0.5), round(len(files) * 0.2)
        for split, chunk in (("train", files[:n_train]), ("val", files[n_train:n_train + n_val]),
                             ("test", files[n_train + n_val:])):
            parts[split][0].extend(sorted(chunk))
            parts[split][1].extend([label] * len(chunk))
    names = [clean_name(CALTECH_RENAMES.get(c, c)) for c in categories]
    return {split: FileImages(images, paths, labels, names) for split, (paths, labels) in parts.items()}


def _pets_list(base: Path, split: str) -> tuple[list[str], list[int], dict[int, str]]:
    paths, labels, names = [], [], {}
    for line in _need(base / "annotations" / f"{split}.txt", "oxford_pets").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        image_id, label = line.split()[:2]
        paths.append(f"{image_id}.jpg")
        labels.append(int(label) - 1)
        names[int(label) - 1] = clean_name(image_id.rsplit("_", 1)[0].lower())
    return paths, labels, names


def _oxford_pets(base: Path, val_fraction: float, seed: int) -> dict[str, FileImages]:
    images = _need(base / "images", "oxford_pets")
    tv_paths, tv_labels, names = _pets_list(base, "trainval")
    te_paths, te_labels, _ = _pets_list(base, "test")
    class_names = [names[i] for i in range(len(names))]
    train, val = _split_train(FileImages(images, tv_paths, tv_labels, class_names), val_fraction, seed)
    return {"train": train, "val": val, "test": FileImages(images, te_paths, te_labels, class_names)}


def _loadmat(path: Path):
    from scipy.io import loadmat

    return loadmat(str(path), squeeze_me=True)


def _stanford_cars(base: Path, val_fraction: float, seed: int) -> dict[str, FileImages]:
    meta = _loadmat(_need(base / "devkit" / "cars_meta.mat", "stanford_cars"))["class_names"].tolist()
    # CoOp moves the year to the front: "AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV".
    class_names = [" ".join([n.split(" ")[-1], *n.split(" ")[:-1]]) for n in meta]

    def read(annos: Path, folder: str) -> FileImages:
        rows = _loadmat(_need(annos, "stanford_cars"))["annotations"]
        _need(base / folder, "stanford_cars")
        return FileImages(base, [f"{folder}/{r['fname']}" for r in rows], [int(r["class"]) - 1 for r in rows],
                          class_names)

    train, val = _split_train(read(base / "devkit" / "cars_train_annos.mat", "cars_train"), val_fraction, seed)
    return {"train": train, "val": val, "test": read(base / "cars_test_annos_withlabels.mat", "cars_test")}


def _flowers102(base: Path, val_fraction: float, seed: int) -> dict[str, FileImages]:
    from torchvision.datasets import Flowers102

    labels = _loadmat(_need(base / "imagelabels.mat", "oxford_flowers"))["labels"]
    setid = _loadmat(_need(base / "setid.mat", "oxford_flowers"))
    images = _need(base / "jpg", "oxford_flowers")
    out = {}
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        ids = [int(i) for i in setid[key].tolist()]
        out[split] = FileImages(images, [f"image_{i:05d}.jpg" for i in ids], [int(labels[i - 1]) - 1 for i in ids],
                                list(Flowers102.classes))
    return out
