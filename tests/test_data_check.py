"""Unreadable images (error | skip), check_data, split provenance and identity, the training split alone."""

import hashlib
import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import colour_folder
from instruction_vit.config import DataConfig
from instruction_vit.data import (
    DataError,
    TransformedImages,
    check_data,
    drop_unreadable,
    image_folder,
    load_splits,
    probe_file,
    scan_unreadable,
    split_identity,
    split_info,
    training_split,
)
from instruction_vit.data.image_store import StoreDataset, build_store

LOGGER = "instruction_vit.data"


def _noisy_jpeg(size=64) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _ids(data) -> set[str]:
    return {data.image_id(i) for i in range(len(data))}


@pytest.fixture
def broken(tmp_path):
    """Three colour classes of 10 PNGs, plus a JPEG cut in its image data and a text file named .jpg."""
    root = colour_folder(tmp_path / "imgs", per_class=10)
    whole = _noisy_jpeg()
    (root / "red" / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # header intact, scan data cut
    (root / "green" / "text.jpg").write_text("this is not an image")
    return root


def test_truncated_jpeg_passes_verify_but_not_the_probe(broken):
    cut = broken / "red" / "cut.jpg"
    with Image.open(cut) as img:
        img.verify()  # Pillow's verify() does not see a cut JPEG ...
    assert not probe_file(cut).readable  # ... the probe does (no end-of-image marker: decoded in full)
    assert "truncated" in probe_file(cut).error
    assert probe_file(broken / "red" / "0.png").readable and probe_file(broken / "red" / "0.png").size == (16, 16)
    ok = broken / "ok.jpg"
    ok.write_bytes(_noisy_jpeg())
    assert probe_file(ok).readable and probe_file(ok, full_decode=True).readable
    assert [b.file for b in scan_unreadable(image_folder(broken))] == \
        [str(broken / "green" / "text.jpg"), str(broken / "red" / "cut.jpg")]


def test_error_mode_stops_naming_the_files(broken):
    splits = load_splits(DataConfig(dataset="folder", root=str(broken)))
    with pytest.raises(DataError, match=r"2 unreadable images.*data\.bad_images=skip") as err:
        drop_unreadable(splits, "error")
    assert str(broken / "red" / "cut.jpg") in str(err.value) and str(broken / "green" / "text.jpg") in str(err.value)
    train = TransformedImages(splits["train"], lambda im: torch.zeros(1))
    index = next(i for i in range(len(train)) if splits["train"].image_id(i).endswith((".jpg")))
    with pytest.raises(DataError, match=r"cannot read image .*\.jpg"):
        train[index]


def test_skip_mode_drops_logs_once_and_counts(broken, caplog):
    splits = load_splits(DataConfig(dataset="folder", root=str(broken)))
    before = {name: len(data) for name, data in splits.items()}
    caplog.set_level(logging.WARNING, logger=LOGGER)
    kept, report = drop_unreadable(splits, "skip", workers=2)
    assert report.count == 2 and report.checked == 32
    assert sum(before.values()) - sum(len(d) for d in kept.values()) == 2
    for name in ("red/cut.jpg", "green/text.jpg"):
        assert not any(name in _ids(d) for d in kept.values())
        assert sum(name in r.getMessage() for r in caplog.records) == 1  # logged once
    assert all(r.name == LOGGER and r.levelno == logging.WARNING for r in caplog.records)
    listed = [b["file"] for files in report.values() for b in files]  # {split: [{"file", "reason"}]}
    assert json.loads(json.dumps(report)) == dict(report) and report.to_dict()["count"] == 2
    assert sorted(listed) == sorted(str(broken / n) for n in ("green/text.jpg", "red/cut.jpg"))
    for data in kept.values():  # everything left reads
        for i in range(len(data)):
            data.load_image(i)
    clean = {n: kept[n] for n in kept}
    again, report2 = drop_unreadable(clean, "skip")
    assert report2.count == 0 and all(again[n] is clean[n] for n in clean)  # nothing to drop: the same objects


def test_skip_keeps_val_as_test_and_loader_substitutes(broken, tmp_path, caplog):
    rows = [[f"{c}/{i}.png", label, c] for label, c in enumerate(("blue", "green", "red")) for i in range(3)]
    (tmp_path / "split.json").write_text(json.dumps({"train": rows, "test": rows[::-1] + [["red/cut.jpg", 2, "red"]]}))
    splits = load_splits(DataConfig(dataset="split_file", root=str(broken), split_file=str(tmp_path / "split.json"),
                                    val_fraction=0.0))
    assert splits["val"] is splits["test"]
    kept, report = drop_unreadable(splits, "skip")
    assert kept["val"] is kept["test"] and len(kept["test"]) == 9 and kept["train"] is splits["train"]
    assert report.to_dict()["per_split"] == {"train": 0, "test": 1} and report.count == 1  # val is test: once
    assert sum("cut.jpg" in r.getMessage() for r in caplog.records) == 1  # in val and test: logged once
    # the loader's safety net (a file that fails only when read): the next readable image of its class
    caplog.clear()
    data = image_folder(broken)
    view = TransformedImages(data, lambda im: torch.from_numpy(np.asarray(im).copy()), bad_images="skip")
    cut = next(i for i in range(len(data)) if data.image_id(i) == "red/cut.jpg")
    image, label = view[cut]
    first_red = data.labels.index(data.labels[cut])  # red/cut.jpg is red's last: the search wraps to red/0.png
    assert label == data.labels[cut] and data.image_id(first_red) == "red/0.png"
    assert torch.equal(image, view[first_red][0])
    view[cut]
    assert sum("cut.jpg" in r.getMessage() for r in caplog.records) == 1


def test_store_honours_bad_images(broken, tmp_path, caplog):
    train = image_folder(broken)
    with pytest.raises(DataError, match="cannot read image .*text.jpg"):
        build_store(train, 8, tmp_path / "stores")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = build_store(train, 8, tmp_path / "stores", workers=2, bad_images="skip")
    store = StoreDataset(path)
    assert len(store) == len(train) - 2 and store.meta["count"] == len(train) - 2
    assert sorted(s["file"] for s in store.meta["skipped"]) == ["green/text.jpg", "red/cut.jpg"]
    assert sum("text.jpg" in r.getMessage() for r in caplog.records) == 1
    assert store.labels.tolist() == [y for i, y in enumerate(train.labels)
                                     if train.image_id(i) not in ("green/text.jpg", "red/cut.jpg")]
    with pytest.raises(DataError, match="built with data.bad_images=skip"):
        build_store(train, 8, tmp_path / "stores")  # found, but it lacks images: refused in error mode


def _problem_folder(tmp_path):
    root = colour_folder(tmp_path / "imgs", per_class=10, size=40)
    colour_folder(tmp_path / "few", per_class=2, colours={"owl": (90, 90, 90)}, size=40)
    shutil.move(tmp_path / "few" / "owl", root / "owl")  # a class of 2 images
    Image.new("RGB", (8, 8), (200, 30, 30)).save(root / "red" / "tiny.png")
    (root / "green" / "text.jpg").write_text("not an image")
    splits = load_splits(DataConfig(dataset="folder", root=str(root)))
    source = next(i for i in _ids(splits["train"]) if i.startswith("blue/"))
    copy = next(i for i in _ids(splits["test"]) if i.startswith("red/") and i != "red/tiny.png")
    shutil.copyfile(root / source, root / copy)  # same bytes, in train and in test: leakage
    return root, source, copy


def test_check_data_finds_the_problems(tmp_path):
    root, source, copy = _problem_folder(tmp_path)
    calls = []
    report = check_data(root, progress=lambda done, total: calls.append((done, total)), workers=2)
    assert not report.ok and calls[-1] == (report.files_checked, report.files_checked) == (34, 34)
    kinds = {p.kind: p for p in report.problems}
    assert kinds["unreadable"].files == [str(root / "green" / "text.jpg")] and kinds["unreadable"].severity == "error"
    assert kinds["tiny"].files == [str(root / "red" / "tiny.png")]
    assert kinds["too_few_images"].files == [str(root / "owl")] and "owl (2)" in kinds["too_few_images"].message
    assert "owl" in kinds["no_eval_images"].message  # 2 images: none held out for val or test
    leak = kinds["cross_split_duplicate"]
    assert leak.pairs == [(str(root / source), str(root / copy))] and "test" in leak.message
    assert "duplicate_within_split" not in kinds
    assert report.class_counts["train"]["owl"] == 2 and sum(report.sizes.values()) == 34
    json.dumps(report.to_dict())
    text = "\n".join(report.lines())
    assert "text.jpg" in text and "tiny.png" in text and f"{root / source} == {root / copy}" in text
    strict = check_data(DataConfig(dataset="folder", root=str(root)), min_size=4, min_per_class=2, workers=0)
    assert {p.kind for p in strict.problems} == {"unreadable", "cross_split_duplicate", "no_eval_images"}


def test_check_data_of_a_clean_folder_and_duplicates_within_a_split(tmp_path):
    root = colour_folder(tmp_path / "imgs", per_class=10, size=40)
    report = check_data(root, workers=0)
    assert report.ok and report.lines()[-1] == "no problems found" and report.split["source"] == "seeded"
    split = {"train": [["red/0.png", 0, "red"], ["red/1.png", 0, "red"], ["blue/0.png", 1, "blue"]],
             "val": [["red/2.png", 0, "red"], ["blue/1.png", 1, "blue"]],
             "test": [["red/3.png", 0, "red"], ["blue/2.png", 1, "blue"]]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    shutil.copyfile(root / "red" / "0.png", root / "red" / "1.png")
    cfg = DataConfig(dataset="split_file", root=str(root), split_file=str(tmp_path / "split.json"))
    report = check_data(cfg, min_per_class=1, workers=0)
    assert [(p.kind, p.files) for p in report.problems] == [("duplicate_within_split", [str(root / "red/1.png")])]


def test_split_info_seeded_and_split_file(tmp_path):
    root = colour_folder(tmp_path / "imgs", per_class=10)
    cfg = DataConfig(dataset="folder", root=str(root), val_fraction=0.2, split_seed=3)
    splits = load_splits(cfg)
    info = split_info(cfg, splits)
    assert info["source"] == "seeded" and info["seed"] == 3 and info["val_fraction"] == 0.2
    assert info["root"] == str(root.resolve()) and info["dataset"] == "folder" and info["num_classes"] == 3
    assert info["sizes"] == {"train": 18, "val": 6, "test": 6}
    json.dumps(info)

    split = {"train": [["red/0.png", 0, "red"], ["green/0.png", 1, "green"]],
             "val": [["red/1.png", 0, "red"], ["green/1.png", 1, "green"]],
             "test": [["red/2.png", 0, "red"], ["green/2.png", 1, "green"], ["green/3.png", 1, "green"]]}
    file = tmp_path / "split_zhou_Mine.json"
    file.write_text(json.dumps(split))
    cfg = DataConfig(dataset="split_file", root=str(root), split_file=str(file), shots=1)
    info = split_info(cfg, load_splits(cfg))
    assert info["source"] == "coop_split_file" and info["split_file"] == str(file.resolve())
    assert info["split_file_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert info["sizes"] == {"train": 2, "val": 2, "test": 3} and info["shots"] == 1 and info["shots_seed"] == 1


def test_split_identity(tmp_path, monkeypatch):
    root = colour_folder(tmp_path / "imgs", per_class=4)
    cfg = DataConfig(dataset="folder", root=str(root))
    ident = split_identity(cfg)
    assert ident == split_identity(DataConfig(dataset="folder", root=str(root)))
    monkeypatch.chdir(tmp_path)
    assert split_identity(DataConfig(dataset="folder", root="imgs")) == ident  # absolute root
    assert split_identity(DataConfig(dataset="folder", root=str(root), img_size=96, num_workers=3)) == ident
    assert split_identity(DataConfig(dataset="folder", root=str(root), split_seed=1)) != ident
    assert split_identity(DataConfig(dataset="folder", root=str(tmp_path / "other"))) != ident  # no walk: no error
    assert split_identity(DataConfig(dataset="folder", root=str(root), train_limit=6)) != ident

    file = tmp_path / "split.json"
    file.write_text(json.dumps({"train": [["red/0.png", 0, "red"]], "val": [], "test": [["red/1.png", 0, "red"]]}))
    coop = split_identity(DataConfig(dataset="split_file", root=str(root), split_file=str(file)))
    assert coop["split_file_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert split_identity(DataConfig(dataset="split_file", root=str(root), split_file=str(file),
                                     split_seed=5)) == coop  # the file has a val split: the seed shapes nothing
    file.write_text(json.dumps({"train": [["red/2.png", 0, "red"]], "val": [], "test": [["red/1.png", 0, "red"]]}))
    assert split_identity(DataConfig(dataset="split_file", root=str(root), split_file=str(file))) != coop

    bench = tmp_path / "bench" / "caltech101"
    bench.mkdir(parents=True)
    seeded = split_identity(DataConfig(dataset="caltech101", root=str(tmp_path / "bench")))
    assert seeded["source"] == "seeded" and "split_file" not in seeded
    (bench / "split_zhou_Caltech101.json").write_text(json.dumps({"train": [], "val": [], "test": []}))
    coop = split_identity(DataConfig(dataset="caltech101", root=str(tmp_path / "bench")))
    assert coop["source"] == "coop_split_file" and coop["split_file"].endswith("caltech101/split_zhou_Caltech101.json")


def test_training_split_is_the_runs_train_split(tmp_path):
    root = colour_folder(tmp_path / "imgs", per_class=10)
    splits = load_splits(DataConfig(dataset="folder", root=str(root), val_fraction=0.2, split_seed=4))
    train = training_split(root, val_fraction=0.2, split_seed=4)
    assert [train.image_id(i) for i in range(len(train))] == [splits["train"].image_id(i)
                                                             for i in range(len(splits["train"]))]
    assert not _ids(train) & (_ids(splits["val"]) | _ids(splits["test"])) and len(train) == 18
    assert train.class_names == ["blue", "green", "red"]
    (root / "red" / "text.jpg").write_text("not an image")
    skipped = training_split(root, val_fraction=0.2, split_seed=4, bad_images="skip")
    assert "red/text.jpg" not in _ids(skipped)


def test_check_data_of_in_memory_images(tmp_path):
    """Fashion-MNIST's arrays: hashed from their pixels (a test image equal to a training one is leakage), never
    unreadable, not checked for size (28 px by design)."""
    import gzip

    def idx(array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
        return gzip.compress(header + array.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (60, 28, 28)), rng.integers(0, 256, (20, 28, 28))
    test[5] = train[7]
    for prefix, images in (("train", train), ("t10k", test)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx(images))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx(np.arange(len(images)) % 10))
    report = check_data(DataConfig(root=str(tmp_path), val_fraction=0.2), min_per_class=1, workers=0)
    assert [p.kind for p in report.problems] == ["cross_split_duplicate"]
    assert report.problems[0].pairs == [("fashion_mnist/train/7", "fashion_mnist/test/5")]
    assert report.split["source"] == "official" and len(report.split["files"]) == 4
