"""The decode-once store and the batch-wise device augmentation (run here on the CPU), op by op against timm."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from instruction_vit.data import image_folder
from instruction_vit.data.gpu_augment import GEOMETRIC, OPS, GpuAugment, apply_layers, parse_randaugment
from instruction_vit.data.image_store import StoreDataset, build_store

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    return image_folder(tmp_path / "imgs")


@pytest.mark.parametrize("workers", [0, 2])
def test_store_decodes_once_and_reads_back(folder, tmp_path, workers):
    path = build_store(folder, 24, tmp_path / "stores", workers=workers)
    data = StoreDataset(path)
    assert len(data) == 6 and data.meta["class_names"] == ["a", "b"]
    image, label = data[4]
    assert image.shape == (24, 24, 3) and image.dtype == torch.uint8 and label == 1
    pil = folder.load_image(4).resize((32, 24), Image.BICUBIC)  # shorter side 30 -> 24, then centre crop
    expected = np.asarray(pil)[:, 4:28]
    assert np.array_equal(image.numpy(), expected)
    assert build_store(folder, 24, tmp_path / "stores") == path  # found, not rebuilt


def test_identity_crop_is_the_image():
    images = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    aug = GpuAugment(16, MEAN, STD, scale=(1, 1), ratio=(1, 1), hflip=0.0, randaugment=None)
    out = aug(images)
    expected = (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    flipped = GpuAugment(16, MEAN, STD, scale=(1, 1), ratio=(1, 1), hflip=1.0, randaugment=None)(images)
    torch.testing.assert_close(flipped, expected.flip(-1), atol=1e-5, rtol=0)


def test_per_sample_randomness_shapes_and_range():
    images = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8).expand(8, -1, -1, -1)
    torch.manual_seed(0)
    out = GpuAugment(24, MEAN, STD, randaugment="rand-m9-n2-mstd0.5")(images)
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) == 8  # every sample its own augmentation
    torch.manual_seed(0)
    again = GpuAugment(24, MEAN, STD, randaugment="rand-m9-n2-mstd0.5")(images)
    torch.testing.assert_close(out, again)  # seeded


def test_randaugment_strings_read_as_timm_reads_them():
    spec = parse_randaugment("rand-m9-mstd0.5")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std, spec.prob, spec.increasing) == (2, 9, 0.5, 0.5, False)
    spec = parse_randaugment("rand-n3-inc1-p0.7-mmax12-mstd101")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_max, spec.prob, spec.increasing) == (3, 10, 12, 0.7, True)
    assert spec.magnitude_std == math.inf  # timm: mstd > 100 samples uniformly in [0, m]
    assert parse_randaugment(None) is None
    with pytest.raises(ValueError, match="RandAugment strings"):
        parse_randaugment("augmix-m5")
    with pytest.raises(ValueError, match="'tweights'.*gpu_augment=false"):
        GpuAugment(8, MEAN, STD, randaugment="rand-m9-tweights")


# timm's names of our ops (_RAND_TRANSFORMS; with inc1 the ones that differ take timm's "Increasing" variant)
TIMM = dict(autocontrast="AutoContrast", equalize="Equalize", invert="Invert", rotate="Rotate",
            posterize="Posterize", solarize="Solarize", solarize_add="SolarizeAdd", color="Color", contrast="Contrast",
            brightness="Brightness", sharpness="Sharpness", shear_x="ShearX", shear_y="ShearY",
            translate_x="TranslateXRel", translate_y="TranslateYRel")
INCREASING = ("posterize", "solarize", "color", "contrast", "brightness", "sharpness")
FILL = (124, 116, 104)  # timm's img_mean for ImageNet's mean


def _images():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(noise[:8, :8]).resize((64, 64), Image.BILINEAR))  # for the warps
    return noise, smooth


def _timm(image, ops, monkeypatch, increasing=False):
    """timm's PIL RandAugment ops applied in order: [(name, level, sign)], bilinear, filling with FILL."""
    from timm.data import auto_augment as aa

    out = Image.fromarray(image)
    for name, level, sign in ops:
        timm_name = TIMM[name].replace(name.capitalize(), name.capitalize() + "Increasing") \
            if increasing and name in INCREASING else TIMM[name]
        monkeypatch.setattr(aa, "_randomly_negate", lambda v, s=sign: v * s)
        level_fn = aa.LEVEL_TO_ARG[timm_name]
        args = level_fn(level, {}) if level_fn else ()
        out = aa.NAME_TO_OP[timm_name](out, *args, fillcolor=FILL, resample=Image.BILINEAR)
    return np.asarray(out).astype(float)


def _ours(image, ops, increasing=False, masked=False):
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
    picks = torch.tensor([[OPS.index(name) for name, _, _ in ops]])
    level, sign = torch.tensor([[op[1] for op in ops]]), torch.tensor([[op[2] for op in ops]])
    fill = torch.tensor(FILL).view(1, 3, 1, 1) / 255
    out = apply_layers(x, picks, torch.ones_like(picks, dtype=torch.bool), level, sign, increasing, fill, masked)
    return (out[0].permute(1, 2, 0) * 255).round().numpy()


@pytest.mark.parametrize("increasing", [False, True])
@pytest.mark.parametrize("name", OPS)
def test_each_op_matches_timm(name, increasing, monkeypatch):
    if increasing and name not in INCREASING:
        pytest.skip("the same op in both sets")
    noise, smooth = _images()
    for level, sign in ((3.0, 1.0), (9.0, -1.0), (9.0, 1.0)):
        if name in GEOMETRIC:  # bilinear either way; the one-pixel edge to the fill is soft here, hard in PIL
            diff = np.abs(_ours(smooth, [(name, level, sign)]) - _timm(smooth, [(name, level, sign)], monkeypatch))
            assert diff.mean() < 1.5 and (diff > 3).mean() < 0.04, (name, level, sign)
        else:  # PIL rounds to 8 bits after each op
            ours = _ours(noise, [(name, level, sign)], increasing)
            assert np.abs(ours - _timm(noise, [(name, level, sign)], monkeypatch, increasing)).max() <= 1
    if name not in ("invert", "equalize", "autocontrast"):  # the level matters (not an identity by mistake)
        image = smooth if name in GEOMETRIC else noise
        assert not np.array_equal(_ours(image, [(name, 3.0, 1.0)], increasing), _ours(image, [(name, 9.0, 1.0)],
                                                                                          increasing))


@pytest.mark.parametrize("first, second", [("invert", "translate_x"), ("translate_x", "invert"),
                                           ("rotate", "shear_x"), ("solarize", "brightness")])
def test_layers_run_in_the_order_drawn(first, second, monkeypatch):
    _, smooth = _images()
    ops = [(first, 9.0, 1.0), (second, 9.0, 1.0)]
    expected, swapped = _timm(smooth, ops, monkeypatch), _timm(smooth, ops[::-1], monkeypatch)
    assert np.abs(expected - swapped).mean() > 5  # the order matters for this pair
    diff = np.abs(_ours(smooth, ops) - expected)
    assert diff.mean() < 1.5 and (diff > 3).mean() < 0.05


def test_masked_and_subset_paths_agree():
    torch.manual_seed(0)
    x = torch.rand(12, 3, 8, 8)
    picks = torch.arange(24).view(12, 2) % len(OPS)
    applied = torch.rand(12, 2) < 0.7
    level, sign = torch.rand(12, 2) * 10, torch.where(torch.rand(12, 2) < 0.5, -1.0, 1.0)
    fill = torch.full((1, 3, 1, 1), 0.5)
    masked = apply_layers(x, picks, applied, level, sign, False, fill, masked=True)
    subset = apply_layers(x, picks, applied, level, sign, False, fill, masked=False)
    torch.testing.assert_close(masked, subset)
    assert not torch.allclose(masked, x)


def test_color_jitter_when_randaugment_is_off():
    images = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8)
    plain = GpuAugment(16, MEAN, STD, scale=(1, 1), ratio=(1, 1), hflip=0.0, randaugment=None)(images)
    torch.manual_seed(0)
    jittered = GpuAugment(16, MEAN, STD, scale=(1, 1), ratio=(1, 1), hflip=0.0, randaugment=None,
                          color_jitter=0.4)(images)
    assert not torch.allclose(plain, jittered)
    brightness = (jittered.mean((1, 2, 3)) + 1) / (plain.mean((1, 2, 3)) + 1)  # about the brightness factor
    assert ((brightness > 0.4) & (brightness < 1.6)).all()


def test_equalize_matches_pil():
    from PIL import ImageOps

    from instruction_vit.data.gpu_augment import equalize

    rng = np.random.default_rng(0)
    images = [rng.integers(40, 160, (12, 10, 3), dtype=np.uint8), np.full((12, 10, 3), 77, np.uint8)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    out = (equalize(batch) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for got, image in zip(out, images):
        assert np.array_equal(got, np.asarray(ImageOps.equalize(Image.fromarray(image))))


def test_random_resized_crop_draws_as_torchvision():
    """Draws that do not fit are redrawn (up to 10 times), not clipped: every crop keeps an area in the range."""
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    theta = GpuAugment(8, MEAN, STD, scale=(0.8, 1.0))._crop(4000, "cpu")
    area = theta[:, 0, 0].abs() * theta[:, 1, 1]
    assert area.min() >= 0.8 - 1e-6 and area.max() <= 1 + 1e-6
    side = 200
    params = [RandomResizedCrop.get_params(torch.zeros(1, side, side), (0.8, 1.0), (3 / 4, 4 / 3)) for _ in range(4000)]
    reference = np.mean([h * w / side**2 for _, _, h, w in params])
    assert abs(area.mean().item() - reference) < 0.01
