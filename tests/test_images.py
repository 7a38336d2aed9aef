"""Images in bounded memory, and one conversion for every source: files, PIL images, numpy arrays, tensors.

Each in-memory image is checked against the same image written to disk (PNG, TIFF where PNG cannot hold the mode)
and read back: the model input must be identical. Large files are refused from their header over the pixel limit,
and reduced while decoding below it (a real photo's model input moves by at most a few 8-bit steps).
"""

import re
import struct
import warnings
import weakref
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from instruction_vit.artifacts import classifier as classifier_module
from instruction_vit.artifacts.checkpoint import model_from_config, save_checkpoint
from instruction_vit.artifacts.classifier import Classifier
from instruction_vit.config import load_config
from instruction_vit.data import DataError, FileImages, TransformedImages, eval_transform, read_image, train_transform
from instruction_vit.data import images as images_module

RNG = np.random.default_rng(0)


def _tiny_classifier(folder, img_size: int, patch: int) -> Classifier:
    """A random 1-block ViT (no prompts) saved as a checkpoint and loaded as ``ivit predict`` loads it."""
    cfg = load_config(None, ["prompts.kind=none", f"data.img_size={img_size}", "data.dataset=folder",
                             "data.root=unused", f"model.backbone_kwargs={{patch_size: {patch}, embed_dim: 32, "
                             "depth: 1, num_heads: 2}"])
    torch.manual_seed(0)
    model = model_from_config(cfg, ["a", "b", "c"], None, pretrained=False)
    with torch.no_grad():
        model.head.weight.mul_(20)  # a sharper head: different inputs give visibly different probabilities
    meta = {"config": cfg.to_dict(), "class_names": ["a", "b", "c"]}
    path = save_checkpoint(folder / "tiny.safetensors", model, meta)
    return Classifier.load(path, "cpu")


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    return _tiny_classifier(tmp_path_factory.mktemp("clf"), 16, 8)


def _png_bytes(width: int, height: int, bit_depth: int = 8, colour: int = 0, rows: bytes = b"") -> bytes:
    """A PNG of the given header; ``rows`` (filtered scanlines) compressed as its one IDAT chunk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _png16_rgb(path, array: np.ndarray):
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = array.shape
    rows = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(_png_bytes(w, h, 16, 2, rows))
    return path


def _noise(h=19, w=23, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _palette(transparency=None) -> Image.Image:
    image = Image.fromarray(_noise()).quantize(8)
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


def _modes() -> dict:
    """mode name -> (in-memory PIL image, file format that holds it)."""
    rgb = Image.fromarray(_noise())
    grey = Image.fromarray(_noise()[..., 0])
    sixteen = Image.fromarray(RNG.integers(0, 65536, (19, 23), dtype=np.uint16))
    return {
        "L": (grey, "PNG"),
        "1": (Image.fromarray(_noise()[..., 0] > 127), "PNG"),
        "P": (_palette(), "PNG"),
        "P+tRNS bytes": (_palette(bytes([0, 64, 128, 255, 255, 255, 10, 200])), "PNG"),
        "P+tRNS index": (_palette(3), "PNG"),
        "RGBA": (Image.fromarray(_noise(c=4)), "PNG"),
        "LA": (Image.merge("LA", [grey, Image.fromarray(_noise()[..., 1])]), "PNG"),
        "PA": (Image.merge("PA", [_palette().convert("L").convert("P"), grey]), "TIFF"),
        "I;16": (sixteen, "PNG"),
        "I": (sixteen.convert("I"), "TIFF"),
        "F": (Image.fromarray(RNG.uniform(-20, 300, (19, 23)).astype(np.float32)), "TIFF"),
        "CMYK": (Image.fromarray(_noise(c=4), "RGBA").convert("CMYK"), "TIFF"),
        "RGB": (rgb, "PNG"),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_a_pil_image_gives_the_model_input_of_the_same_image_saved_and_read(clf, tmp_path, mode):
    image, fmt = _modes()[mode]
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    with Image.open(path) as back:
        assert back.mode == image.mode  # the file holds the same image
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning on the way (tRNS bytes, bomb)
        from_memory, from_file = clf.preprocess(image), clf.preprocess(path)
    assert from_memory.shape == (3, 16, 16)
    assert torch.equal(from_memory, from_file)


def test_predict_reads_every_mode_as_its_file(clf, tmp_path):
    """The API's predict on in-memory images of every mode (a grey one crashed it) equals predict on the files."""
    cases = list(_modes().values())
    files = []
    for i, (image, fmt) in enumerate(cases):
        files.append(tmp_path / f"{i}.{fmt.lower()}")
        image.save(files[-1], fmt)
    ycbcr = Image.fromarray(_noise()).convert("YCbCr")  # no lossless file holds YCbCr: a JPEG decodes to RGB
    ycbcr.convert("RGB").save(tmp_path / "ycbcr.png")
    in_memory = clf.predict([image for image, _ in cases] + [ycbcr], top_k=3, batch_size=4)
    on_disk = clf.predict(files + [tmp_path / "ycbcr.png"], top_k=3, batch_size=4)
    assert in_memory == on_disk
    assert len({tuple(p for _, p in ranked) for ranked in on_disk}) > len(cases) // 2  # the inputs differ


def test_sixteen_bit_images_keep_their_range(clf, tmp_path):
    """16-bit samples map to 8 bits by their high byte; Pillow's convert("RGB") clipped them all to white."""
    values = RNG.integers(0, 65536, (19, 23), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    Image.fromarray((values >> 8).astype(np.uint8)).save(tmp_path / "high_byte.png")
    assert torch.equal(clf.preprocess(tmp_path / "deep.png"), clf.preprocess(tmp_path / "high_byte.png"))
    rgb = read_image(tmp_path / "deep.png")
    assert np.array_equal(np.asarray(rgb)[..., 0], values >> 8) and np.asarray(rgb).mean() < 200


def _float_file(tmp_path, array: np.ndarray):
    """``array`` (floats in [0, 1], (H, W[, C])) saved as torchvision.utils.save_image writes it."""
    pixels = np.clip(np.floor(array * 255 + 0.5), 0, 255).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(
        tmp_path / "float.png")
    return tmp_path / "float.png"


def test_numpy_arrays_and_tensors_read_as_the_same_image_saved_to_a_file(clf, tmp_path):
    grey, rgb, rgba = _noise()[..., 0], _noise(), _noise(c=4)
    deep = RNG.integers(0, 65536, (19, 23), dtype=np.uint16)
    deep_rgb = RNG.integers(0, 65536, (19, 23, 3), dtype=np.uint16)
    unit = RNG.uniform(0, 1, (19, 23, 3))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(deep).save(tmp_path / "deep.png")
    _png16_rgb(tmp_path / "deep_rgb.png", deep_rgb)
    cases = [
        (grey, "grey.png"), (grey[..., None], "grey.png"), (rgb, "rgb.png"), (rgba, "rgba.png"),
        (deep, "deep.png"), (deep[..., None], "deep.png"), (deep_rgb, "deep_rgb.png"),
        (torch.from_numpy(grey), "grey.png"), (torch.from_numpy(grey)[None], "grey.png"),
        (torch.from_numpy(rgb).permute(2, 0, 1), "rgb.png"), (torch.from_numpy(rgba).permute(2, 0, 1), "rgba.png"),
        (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, "rgb.png"),
    ]
    for value, name in cases:
        assert torch.equal(clf.preprocess(value), clf.preprocess(tmp_path / name)), (type(value), value.shape, name)
    float_file = _float_file(tmp_path, unit)
    assert torch.equal(clf.preprocess(unit), clf.preprocess(float_file))
    assert torch.equal(clf.preprocess(torch.from_numpy(unit).permute(2, 0, 1).float()), clf.preprocess(float_file))
    assert clf.predict([v for v, _ in cases]) == clf.predict([tmp_path / n for _, n in cases])


@pytest.mark.parametrize("value, words", [
    (np.zeros((3, 20, 20), np.uint8), ["(3, 20, 20)", "channels first"]),
    (np.zeros((20, 20, 2), np.uint8), ["(20, 20, 2)", "C 1, 3 or 4"]),
    (np.zeros((20, 20), np.int32), ["int32", "uint8, uint16 or float"]),
    (np.full((20, 20), 1.5, np.float32), ["[0, 1]", "1.5"]),
    (torch.zeros(20, 20, 3, dtype=torch.uint8), ["[20, 20, 3]", "channels last"]),
    (torch.zeros(1, 3, 20, 20), ["[1, 3, 20, 20]", "one by one"]),
    (torch.full((3, 20, 20), -0.5), ["[0, 1]", "normalisation"]),
    ("a photo", ["str"]),
])
def test_an_unreadable_layout_is_refused_in_one_line(clf, value, words):
    preprocess = clf.preprocess if not isinstance(value, str) else lambda v: images_module.rgb_image(v)
    with pytest.raises(DataError) as caught:
        preprocess(value)
    message = str(caught.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_file_over_the_pixel_limit_is_refused_from_its_header(clf, tmp_path, monkeypatch):
    """A 200-byte PNG that claims 20000x20000 (400 MP): refused by name before any decoding (load would fail)."""
    path = tmp_path / "huge.png"
    path.write_bytes(_png_bytes(20000, 20000))

    def no_decode(self, *args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(Image.Image, "load", no_decode)
    for read in (lambda: read_image(path), lambda: clf.predict([path]), lambda: clf.preprocess(path)):
        with pytest.raises(DataError) as caught:
            read()
        message = str(caught.value)
        assert "\n" not in message and str(path) in message, message
        assert all(w in message for w in ("20000x20000", "400.0 MP", "limit of 150 MP", "data.max_image_pixels",
                                          "--max-pixels")), message
    small = tmp_path / "small.png"
    small.write_bytes(_png_bytes(100, 100))
    with pytest.raises(DataError, match=r"100x100 = 0.0 MP, over the limit of 0.005 MP"):
        clf.predict([small], max_pixels=5000)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's global is left alone


def test_images_under_the_limit_pass_pillows_bomb_check_silently(tmp_path):
    """100 MP (over Pillow's 89 MP warning) is under the default limit: no warning; 400 MP with a raised limit
    gets past Pillow's 179 MP error too. Both files are cut after the header: their decode fails, as it should."""
    mid, huge = tmp_path / "mid.png", tmp_path / "huge.png"
    mid.write_bytes(_png_bytes(10000, 10000))
    huge.write_bytes(_png_bytes(20000, 20000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="cannot read image .*truncated"):
            read_image(mid)
        with pytest.raises(DataError, match="cannot read image .*truncated"):
            read_image(huge, max_pixels=500_000_000)
        with images_module.open_image(huge, max_pixels=None) as header:
            assert header.size == (20000, 20000)


def test_the_run_limit_comes_from_the_config_and_is_checked_before_training(tmp_path):
    from helpers import colour_folder

    from instruction_vit.data import check_data, drop_unreadable, load_splits

    root = colour_folder(tmp_path / "images", per_class=4)
    cfg = load_config(None, ["data.dataset=folder", f"data.root={root}", "data.val_fraction=0.25",
                             "data.max_image_pixels=200"]).data
    splits = load_splits(cfg)
    with pytest.raises(DataError, match=r"16x16 = 0.0 MP, over the limit of 0.0002 MP"):
        splits["train"].load_image(0)
    with pytest.raises(DataError, match=r"unreadable images? in the data .*over the limit"):
        drop_unreadable(splits)
    report = check_data(cfg, workers=0)
    assert report.problem("unreadable") is not None and len(report.problem("unreadable").files) == 12
    cfg.max_image_pixels = 256
    assert check_data(cfg, workers=0).problem("unreadable") is None
    with pytest.raises(Exception, match="data.max_image_pixels"):
        load_config(None, ["data.max_image_pixels=0"])


def _gradient(side: int, mode: str) -> Image.Image:
    ramp = np.linspace(0, 255, side).astype(np.uint8)
    x, y = np.broadcast_to(ramp[None], (side, side)), np.broadcast_to(ramp[:, None], (side, side))
    bands = [Image.fromarray(np.ascontiguousarray(b)) for b in (x, y, 255 - x)]
    return bands[0] if mode == "L" else Image.merge("RGB", bands)


@pytest.mark.parametrize("fmt, mode, decoded, side", [("JPEG", "RGB", 375, 54), ("PNG", "RGB", 3000, 48),
                                                      ("PNG", "L", 3000, 48), ("PNG", "RGBA", 3000, 48)])
def test_a_large_file_is_reduced_before_it_is_converted(clf, tmp_path, monkeypatch, fmt, mode, decoded, side):
    """A 3000x3000 file for a 16-px model: a JPEG is decoded at 1/8 scale (375 px, then 375 / (375 // 48) = 54),
    a PNG whole (3000 / (3000 // 48) = 48); every image reaches RGB only reduced (shorter side >= 3 x 16 px), for
    predict and for training and evaluation data alike."""
    image = _gradient(3000, mode) if mode != "RGBA" else _gradient(3000, "RGB").convert("RGBA")
    path = tmp_path / f"big.{fmt.lower()}"
    image.save(path, fmt)
    handed, converted = [], []
    to_rgb, convert = images_module.to_rgb, Image.Image.convert

    def spy_to_rgb(img, *args, **kwargs):
        handed.append(img.size)
        return to_rgb(img, *args, **kwargs)

    def spy_convert(self, mode=None, *args, **kwargs):
        if mode == "RGB":
            converted.append(self.size)
        return convert(self, mode, *args, **kwargs)

    monkeypatch.setattr(images_module, "to_rgb", spy_to_rgb)
    monkeypatch.setattr(Image.Image, "convert", spy_convert)
    tensor = clf.preprocess(path)
    assert handed == [(decoded, decoded)]
    # never a full-size RGB image: reduced ones, or strips of a few million pixels (other modes than L, RGB)
    assert converted and max(w * h for w, h in converted) <= 2 * images_module.STRIP_PIXELS
    assert read_image(path, min_side=clf.min_side).size == (side, side)
    whole = clf.transform(convert(Image.open(path), "RGB"))
    assert (tensor - whole).abs().max() * 255 * 0.5 < 3  # a smooth picture: the same within 8-bit rounding

    handed.clear()
    data = FileImages(tmp_path, [path.name], [0], ["a"])
    TransformedImages(data, eval_transform(16, (0.5,) * 3, (0.5,) * 3))[0]
    TransformedImages(data, train_transform(16, (0.5,) * 3, (0.5,) * 3, crop_scale=(0.5, 1.0)))[0]
    assert handed == [(decoded, decoded)] * 2


def test_small_images_give_bit_identical_inputs(clf, tmp_path):
    """Images not over 2 x 3 x the transform's side (and every in-memory 28-px image of the demo) are decoded
    whole, as before: pixel for pixel what Pillow's open + convert("RGB") gives."""
    from instruction_vit.data import ArrayImages

    for size, fmt in (((95, 95), "PNG"), ((60, 40), "JPEG"), ((28, 28), "PNG"), ((300, 95), "PNG")):
        path = tmp_path / f"small{size[0]}.{fmt.lower()}"
        Image.fromarray(_noise(size[1], size[0])).save(path, fmt)
        with Image.open(path) as plain:
            expected = plain.convert("RGB")
        got = read_image(path, min_side=clf.min_side)
        assert got.size == size and np.array_equal(np.asarray(got), np.asarray(expected))
        assert torch.equal(clf.preprocess(path), clf.transform(expected))
    items = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)  # Fashion-MNIST's layout
    demo = ArrayImages(items, [0, 1, 2], ["a", "b", "c"], "demo")
    for i in range(3):
        assert np.array_equal(np.asarray(demo.load_image(i)), np.asarray(Image.fromarray(items[i]).convert("RGB")))


def test_a_real_photo_read_reduced_gives_essentially_the_same_prediction(tmp_path):
    """Grace Hopper (matplotlib's sample photo) enlarged to 2021x2369 (odd sizes: partial blocks, JPEG scaled
    decode), for a 224-px model: reduced while decoding to 674x790, its model input differs from the whole read by
    at most 2 8-bit steps (mean 0.16; 0.1% of values by more than 1 step) and the probabilities by under 1e-4."""
    from matplotlib import cbook

    clf = _tiny_classifier(tmp_path, 224, 16)
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    big = photo.resize((2021, 2369), Image.LANCZOS)
    for fmt in ("PNG", "JPEG"):
        path = tmp_path / f"photo.{fmt.lower()}"
        big.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        reduced = read_image(path, min_side=clf.min_side)
        assert reduced.size == (674, 790)
        whole = clf.transform(read_image(path))
        steps = (clf.preprocess(path) - whole).abs() * 255 * 0.5  # the model's std is 0.5 (timm's ViT default)
        assert steps.max() <= 3 and steps.mean() < 0.25 and (steps > 1).float().mean() < 0.005, \
            (fmt, steps.max(), steps.mean())
        use = clf.class_prompts()
        p_reduced = clf.probabilities(clf.preprocess(path)[None], use)
        p_whole = clf.probabilities(whole[None], use)
        assert (p_reduced - p_whole).abs().max() < 1e-3 and p_reduced.argmax() == p_whole.argmax()


def test_predict_holds_one_decoded_image_at_a_time(clf, tmp_path, monkeypatch):
    """Predicting 7 files in batches of 3: each image the reader hands on is gone (only its model input is kept)
    before the next one is read; the batch held every decoded image before."""
    files = []
    for i in range(7):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(_noise(40, 40)).save(files[-1])
    alive: list[weakref.ref] = []
    read = classifier_module.read_image

    def spy(*args, **kwargs):
        assert all(ref() is None for ref in alive), "an earlier decoded image is still held"
        image = read(*args, **kwargs)
        alive.append(weakref.ref(image))
        return image

    monkeypatch.setattr(classifier_module, "read_image", spy)
    ranked = clf.predict(files, batch_size=3)
    assert len(ranked) == 7 and len(alive) == 7
    alone = [clf.predict([f])[0] for f in files]  # the same results one by one (to float rounding across batches)
    assert [[c for c, _ in r] for r in ranked] == [[c for c, _ in r] for r in alone]
    assert [p for r in ranked for _, p in r] == pytest.approx([p for r in alone for _, p in r], abs=1e-6)


def test_predict_takes_max_pixels_from_the_caller_never_from_the_model_folder(tmp_path):
    """A shared model whose config sets a huge limit does not raise the reader's: site settings are the user's."""
    from typer.testing import CliRunner

    from instruction_vit.cli import app

    folder = tmp_path / "model"
    folder.mkdir()
    clf = _tiny_classifier(folder, 16, 8)
    assert clf.config.data.max_image_pixels == 150_000_000
    cfg = clf.checkpoint.meta["config"]
    cfg["data"]["max_image_pixels"] = 10**12
    model = clf.model
    path = save_checkpoint(folder / "generous.safetensors", model, {"config": cfg, "class_names": ["a", "b", "c"]})
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_bytes(20000, 20000))
    generous = Classifier.load(path, "cpu")
    with pytest.raises(DataError, match="limit of 150 MP"):
        generous.predict([huge])
    image = tmp_path / "image.png"
    Image.fromarray(_noise(100, 100)).save(image)
    result = CliRunner().invoke(app, ["predict", str(path), str(image), "--max-pixels", "5000", "--device", "cpu"])
    assert result.exit_code == 2 and re.search(r"100x100 = 0.0 MP, over the limit of 0.005 MP", result.output)
    result = CliRunner().invoke(app, ["predict", str(path), str(image), "--max-pixels", "10000", "--device", "cpu"])
    assert result.exit_code == 0, result.output
