import pytest
import timm
import torch
from safetensors.torch import save_file

from instruction_vit.model import build_model


def test_unknown_backbone_names_the_problem():
    with pytest.raises(ValueError, match="unknown backbone 'vit_bass_patch16_224'.*vit_base_patch16_224"):
        build_model("vit_bass_patch16_224", 10, 16)


def test_non_vit_backbone_is_refused():
    from instruction_vit.errors import ConfigError

    with pytest.raises(ConfigError, match="resnet18 is not a timm VisionTransformer.*prompts.kind=none"):
        build_model("resnet18", 10, 16)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_model("vit_tiny_patch16_224", 10, 16, pretrained=missing)


def test_unreadable_weights_suffix(tmp_path):
    bad = tmp_path / "weights.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="expected one of"):
        build_model("vit_tiny_patch16_224", 10, 16, pretrained=bad)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("vit_tiny_patch16_224", 0, 16)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_are_loaded(tmp_path, tiny_vit_kwargs, suffix):
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, **tiny_vit_kwargs)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"vit{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)

    same_head = build_model("vit_tiny_patch16_224", 10, 16, pretrained=path, **tiny_vit_kwargs)
    for name, value in same_head.backbone.state_dict().items():
        torch.testing.assert_close(value, state[name], msg=name)

    new_head = build_model("vit_tiny_patch16_224", 3, 16, pretrained=path, **tiny_vit_kwargs)
    torch.testing.assert_close(new_head.backbone.pos_embed, state["pos_embed"])
    torch.testing.assert_close(new_head.backbone.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    assert new_head.backbone.head.weight.shape == (3, 32)


def test_random_init_by_default(tiny_vit_kwargs):
    torch.manual_seed(0)
    a = build_model("vit_tiny_patch16_224", 4, 16, **tiny_vit_kwargs)
    torch.manual_seed(1)
    b = build_model("vit_tiny_patch16_224", 4, 16, **tiny_vit_kwargs)
    assert not torch.equal(a.backbone.pos_embed, b.backbone.pos_embed)


def test_npz_goes_to_timms_jax_loader(tmp_path, tiny_vit_kwargs, monkeypatch):
    """timm converts big_vision/JAX .npz checkpoints itself; we must route the file to it (and then check
    what it loaded: a loader that writes nothing is refused)."""
    from timm.models.vision_transformer import VisionTransformer

    from instruction_vit.errors import WeightsError

    calls = []
    monkeypatch.setattr(VisionTransformer, "load_pretrained", lambda self, path, prefix="": calls.append(path))
    path = tmp_path / "ViT-B_16.npz"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match="0 matched"):
        build_model("vit_tiny_patch16_224", 10, 16, pretrained=path, **tiny_vit_kwargs)
    assert calls == [str(path)]


def test_timm_weights_offline_fail_with_advice():
    with pytest.raises(RuntimeError, match="pass pretrained=/path/to/weights.safetensors"):
        build_model("vit_tiny_patch16_224", 10, 16, pretrained=True)
