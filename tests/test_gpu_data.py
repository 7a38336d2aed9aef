"""The decode-once store and the batch-wise device augmentation (run here on the CPU)."""

import numpy as np
import pytest
import torch
from PIL import Image

from instruction_vit.data import image_folder
from instruction_vit.data.gpu_augment import GpuAugment, parse_randaugment
from instruction_vit.data.store import StoreDataset, build_store

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


def test_randaugment_strings():
    assert parse_randaugment("rand-m9-mstd0.5") == (2, 0.9, 0.05)
    assert parse_randaugment("rand-m7-n3") == (3, 0.7, 0.0)
    assert parse_randaugment(None) == (0, 0.0, 0.0)
    with pytest.raises(ValueError, match="RandAugment strings"):
        parse_randaugment("augmix-m5")


def test_masked_and_subset_colour_paths_agree():
    from instruction_vit.data.gpu_augment import COLOUR, COLOUR_OPS

    assert tuple(COLOUR_OPS) == COLOUR
    torch.manual_seed(0)
    x, mag = torch.rand(6, 3, 8, 8), torch.rand(6)
    chosen = {name: torch.zeros(6) for name in COLOUR}
    for i, name in enumerate(("solarize", "posterize", "autocontrast", "invert")):  # the deterministic ops
        chosen[name][i] = chosen[name][i + 2] = 1.0
    masked = GpuAugment._colour(x.clone(), chosen, mag, masked=True)
    subset = GpuAugment._colour(x.clone(), chosen, mag, masked=False)  # (writes into its input)
    torch.testing.assert_close(masked, subset)
    assert not torch.allclose(masked, x)


def test_equalize_matches_pil():
    from PIL import ImageOps

    from instruction_vit.data.gpu_augment import equalize

    rng = np.random.default_rng(0)
    images = [rng.integers(40, 160, (12, 10, 3), dtype=np.uint8), np.full((12, 10, 3), 77, np.uint8)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    out = (equalize(batch) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for got, image in zip(out, images):
        assert np.array_equal(got, np.asarray(ImageOps.equalize(Image.fromarray(image))))
