import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from instruction_vit.config import DataConfig
from instruction_vit.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    TransformedImages,
    balanced_limit,
    coop_split,
    eval_transform,
    fashion_mnist,
    image_folder,
    load_splits,
    read_image,
    stratified_split,
    train_transform,
)


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def fmnist_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))  # plain and .gz both read
    return tmp_path


def make_folder(root, classes=("cat", "dog", "owl"), per_class=5, size=20):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_fashion_mnist_idx_files(fmnist_root):
    data = fashion_mnist(fmnist_root)
    assert len(data["train"]) == 50 and len(data["test"]) == 20
    assert data["train"].class_names == list(FASHION_MNIST_CLASSES) and data["train"].labels[:3] == [0, 1, 2]
    assert data["train"].load_image(0).mode == "RGB" and data["train"].load_image(0).size == (28, 28)


def test_fashion_mnist_missing_and_truncated(tmp_path, fmnist_root):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(tmp_path / "nowhere")
    blob = (fmnist_root / "t10k-labels-idx1-ubyte").read_bytes()
    (fmnist_root / "t10k-labels-idx1-ubyte").write_bytes(blob[:-5])
    with pytest.raises(DataError, match="truncated"):
        fashion_mnist(fmnist_root)


def test_image_folder(tmp_path):
    data = image_folder(make_folder(tmp_path / "imgs"))
    assert data.class_names == ["cat", "dog", "owl"] and len(data) == 15
    assert data.labels == [0] * 5 + [1] * 5 + [2] * 5 and data.image_id(5) == "dog/0.png"
    with pytest.raises(DataError, match="no class subfolders"):
        image_folder(tmp_path / "imgs" / "cat")
    with pytest.raises(DataError, match="image folder not found"):
        image_folder(tmp_path / "missing")


def test_unreadable_and_truncated_images_are_named(tmp_path):
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image .*bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    with pytest.raises(DataError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


def test_coop_split_file(tmp_path):
    make_folder(tmp_path / "imgs")
    split = {
        "train": [["cat/0.png", 0, "cat"], ["dog/0.png", 1, "dog"], ["owl/0.png", 2, "owl"]],
        "val": [["cat/1.png", 0, "cat"]],
        "test": [["dog/2.png", 1, "dog"], ["owl/3.png", 2, "owl"]],
    }
    f = tmp_path / "split_zhou_Mine.json"
    f.write_text(json.dumps(split))
    data = coop_split(f, tmp_path / "imgs")
    assert data["train"].class_names == ["cat", "dog", "owl"] and data["test"].labels == [1, 2]
    assert np.asarray(data["test"].load_image(1)).shape == (20, 20, 3)
    split["val"][0][2] = "kitten"
    f.write_text(json.dumps(split))
    with pytest.raises(DataError, match="named both 'cat' and 'kitten'"):
        coop_split(f, tmp_path / "imgs")


def test_seeded_stratified_split_and_limit(fmnist_root):
    train = fashion_mnist(fmnist_root)["train"]
    a_keep, a_held = stratified_split(train, 0.2, seed=1)
    b_keep, b_held = stratified_split(train, 0.2, seed=1)
    assert a_held.indices == b_held.indices and not set(a_keep.indices) & set(a_held.indices)
    assert sorted(a_held.labels) == list(range(10))  # one per class (5 each, 20%)
    assert stratified_split(train, 0.2, seed=2)[1].indices != a_held.indices
    limited = balanced_limit(train, 20, seed=0)
    assert len(limited) == 20 and sorted(limited.labels) == sorted(list(range(10)) * 2)


def test_load_splits_carves_val(fmnist_root):
    splits = load_splits(DataConfig(root=str(fmnist_root), val_fraction=0.2, eval_limit=10))
    assert len(splits["train"]) == 40 and len(splits["val"]) == 10 and len(splits["test"]) == 10
    with pytest.raises(DataError, match="val split of fashion_mnist .* no images; raise data.val_fraction"):
        load_splits(DataConfig(root=str(fmnist_root), val_fraction=0.01))  # 5 per class: none held out


def test_transforms_and_dataset_view(tmp_path):
    data = image_folder(make_folder(tmp_path / "imgs"))
    mean, std = (0.5,) * 3, (0.5,) * 3
    train = TransformedImages(data, train_transform(16, mean, std, randaugment="rand-m9-mstd0.5"))
    image, label = train[7]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
    evaluated = TransformedImages(data, eval_transform(16, mean, std))
    torch.testing.assert_close(evaluated[3][0], evaluated[3][0])  # deterministic


def test_few_shot_is_coop_sampling(fmnist_root):
    from instruction_vit.data import few_shot

    train = fashion_mnist(fmnist_root)["train"]
    a, b = few_shot(train, 2, seed=1), few_shot(train, 2, seed=1)
    assert a.indices == b.indices and sorted(a.labels) == sorted(list(range(10)) * 2)
    assert few_shot(train, 2, seed=2).indices != a.indices
    assert len(few_shot(train, 99, seed=1)) == 50  # a class with fewer keeps all it has


def test_base_and_novel_classes(fmnist_root):
    from instruction_vit.data import class_subset

    test = fashion_mnist(fmnist_root)["test"]
    base, novel = class_subset(test, "base"), class_subset(test, "novel")
    assert base.class_names == list(FASHION_MNIST_CLASSES[:5]) and novel.class_names == list(FASHION_MNIST_CLASSES[5:])
    assert set(base.labels) == set(range(5)) and set(novel.labels) == set(range(5))
    i = novel.labels.index(0)
    assert test.labels[novel.indices[i]] == 5  # relabelled: sandal (5) is novel class 0
    assert class_subset(test, "all") is test


def test_load_splits_few_shot_and_novel(fmnist_root):
    splits = load_splits(DataConfig(root=str(fmnist_root), val_fraction=0.2, shots=3, classes="novel"))
    assert len(splits["train"]) == 15 and len(splits["val"]) == 5 and splits["test"].class_names[0] == "sandal"
