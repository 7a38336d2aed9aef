"""Backbone weights load through one verified path: every backbone tensor from the source, or a WeightsError."""

import argparse
import hashlib
import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from instruction_vit.errors import WeightsError, WeightsUnavailableError
from instruction_vit.model import build_model
from instruction_vit.model.weights import WeightsReport, file_sha256, load_weights

VIT = "vit_tiny_patch16_224"
HEAD = ("head.weight", "head.bias")


def tiny_state(kwargs, num_classes=10, seed=1, **over):
    """The state dict of a random tiny timm ViT (``over`` changes its architecture)."""
    torch.manual_seed(seed)
    net = timm.create_model(VIT, num_classes=num_classes, **{**kwargs, **over})
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def save(state, path):
    save_file(state, path) if path.suffix == ".safetensors" else torch.save(state, path)
    return path


def assert_backbone_equal(model, state, skip=HEAD):
    for name, value in model.backbone.state_dict().items():
        if name not in skip:
            torch.testing.assert_close(value, state[name], msg=name)


def to_jax_npz(state, path, heads):
    """``state`` written in the layout of Google's ViT .npz checkpoints (what timm's ``_load_weights`` reads)."""
    t = {k: v.numpy() for k, v in state.items()}
    dim = t["cls_token"].shape[-1]
    out = {
        "embedding/kernel": t["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": t["patch_embed.proj.bias"],
        "cls": t["cls_token"],
        "Transformer/posembed_input/pos_embedding": t["pos_embed"],
        "Transformer/encoder_norm/scale": t["norm.weight"],
        "Transformer/encoder_norm/bias": t["norm.bias"],
        "head/kernel": t["head.weight"].T,
        "head/bias": t["head.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("blocks."))
    for i in range(depth):
        b, j = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        qkv_w, qkv_b = np.split(t[b + "attn.qkv.weight"], 3), np.split(t[b + "attn.qkv.bias"], 3)
        for n, w, bias in zip(("query", "key", "value"), qkv_w, qkv_b):
            out[f"{j}MultiHeadDotProductAttention_1/{n}/kernel"] = w.T.reshape(dim, heads, dim // heads)
            out[f"{j}MultiHeadDotProductAttention_1/{n}/bias"] = bias.reshape(heads, dim // heads)
        out[f"{j}MultiHeadDotProductAttention_1/out/kernel"] = (
            t[b + "attn.proj.weight"].reshape(dim, heads, dim // heads).transpose(1, 2, 0))
        out[f"{j}MultiHeadDotProductAttention_1/out/bias"] = t[b + "attn.proj.bias"]
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{j}{ln}/scale"], out[f"{j}{ln}/bias"] = t[b + norm + ".weight"], t[b + norm + ".bias"]
        for r in range(2):
            out[f"{j}MlpBlock_3/Dense_{r}/kernel"] = t[f"{b}mlp.fc{r + 1}.weight"].T
            out[f"{j}MlpBlock_3/Dense_{r}/bias"] = t[f"{b}mlp.fc{r + 1}.bias"]
    np.savez(path, **out)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_plain_files_load_and_report(tmp_path, tiny_vit_kwargs, suffix):
    state = tiny_state(tiny_vit_kwargs)
    path = save(state, tmp_path / f"vit{suffix}")
    model = build_model(VIT, 10, 16, pretrained=path, **tiny_vit_kwargs)
    assert_backbone_equal(model, state, skip=())
    report = model.weights_report
    assert isinstance(report, WeightsReport)
    assert (report.loaded, report.total, report.new) == (len(state), len(state), ())
    assert report.format == ("safetensors" if suffix == ".safetensors" else "pth")
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report.summary() == (f"loaded {len(state)}/{len(state)} backbone tensors from {path} "
                                f"(sha256 {report.sha256[:8]}…)")
    assert json.loads(json.dumps(report.to_dict()))["sha256"] == report.sha256


@pytest.mark.parametrize("wrap", ["model", "state_dict", "dino"])
def test_wrapped_pth(tmp_path, tiny_vit_kwargs, wrap):
    state = tiny_state(tiny_vit_kwargs)
    if wrap == "dino":  # DINO's full checkpoint: teacher/student with backbone. + a projection head, and args
        dino = {**{f"backbone.{k}": v for k, v in state.items()}, "head.mlp.0.weight": torch.zeros(8, 32)}
        payload = {"teacher": dino, "student": {k: v + 1 for k, v in dino.items()}, "epoch": 100,
                   "args": argparse.Namespace(arch="vit_tiny")}
    else:
        payload = {wrap: state, "epoch": 3}
    path = save(payload, tmp_path / "ckpt.pth")
    model = build_model(VIT, 10, 16, pretrained=path, **tiny_vit_kwargs)
    assert_backbone_equal(model, state, skip=())
    report = model.weights_report
    assert report.loaded == report.total == len(state)
    if wrap == "dino":
        assert (report.stripped_prefix, report.ignored) == ("backbone.", 1)
        assert "prefix 'backbone.' stripped, 1 other tensors ignored" in report.summary()


@pytest.mark.parametrize("prefix", ["module.", "encoder.", "model.", "module.backbone."])
def test_prefixed_keys_are_stripped(tmp_path, tiny_vit_kwargs, prefix):
    state = tiny_state(tiny_vit_kwargs)
    path = save({prefix + k: v for k, v in state.items()}, tmp_path / "vit.safetensors")
    model = build_model(VIT, 10, 16, pretrained=path, **tiny_vit_kwargs)
    assert_backbone_equal(model, state, skip=())
    report = model.weights_report
    assert report.stripped_prefix == prefix
    assert f"loaded {len(state)}/{len(state)}" in report.summary()
    assert f"prefix '{prefix}' stripped" in report.summary()


@pytest.mark.parametrize("num_classes", [10, 3])
def test_jax_npz_is_loaded_and_checked(tmp_path, tiny_vit_kwargs, num_classes):
    state = tiny_state(tiny_vit_kwargs)
    path = to_jax_npz(state, tmp_path / "Ti_16.npz", heads=tiny_vit_kwargs["num_heads"])
    model = build_model(VIT, num_classes, 16, pretrained=path, **tiny_vit_kwargs)
    report = model.weights_report
    new = () if num_classes == 10 else HEAD
    assert_backbone_equal(model, state, skip=new)
    assert (report.format, report.new, report.loaded) == ("npz", new, len(state) - len(new))
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not model.backbone.head.weight.isnan().any()


def test_npz_missing_a_block_is_refused(tmp_path, tiny_vit_kwargs):
    path = to_jax_npz(tiny_state(tiny_vit_kwargs, depth=1), tmp_path / "short.npz", heads=2)
    with pytest.raises(WeightsError, match=r"short\.npz: cannot load it into vit_tiny_patch16_224 \(KeyError"):
        build_model(VIT, 10, 16, pretrained=path, **tiny_vit_kwargs)


def test_clip_visual_tower_is_refused(tmp_path, tiny_vit_kwargs, tiny_clip_dir):
    clip = load_file(tiny_clip_dir / "open_clip_model.safetensors")
    visual = {k.removeprefix("visual."): v for k, v in clip.items() if k.startswith("visual.")}
    path = save(visual, tmp_path / "clip_visual.safetensors")
    n = len(tiny_state(tiny_vit_kwargs)) - len(HEAD)
    with pytest.raises(WeightsError, match=rf"0 matched, {n} missing \(e\.g\. .*\), {len(visual)} unexpected") as err:
        build_model(VIT, 10, 16, pretrained=path, **tiny_vit_kwargs)
    assert "is this a weights file for vit_tiny_patch16_224?" in str(err.value)


def test_random_keys_are_refused(tmp_path, tiny_vit_kwargs):
    path = save({f"layer{i}.weight": torch.randn(4, 4) for i in range(5)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"0 matched, \d+ missing .* 5 unexpected \(e\.g\. layer0.weight"):
        build_model(VIT, 10, 16, pretrained=path, **tiny_vit_kwargs)


def test_other_width_is_a_short_weights_error(tmp_path, tiny_vit_kwargs):
    path = save(tiny_state(tiny_vit_kwargs, embed_dim=48), tmp_path / "vit_s.safetensors")
    with pytest.raises(WeightsError, match=r"of another shape \(e\.g\. cls_token \[1, 1, 48\] vs \[1, 1, 32\]") as err:
        build_model(VIT, 10, 16, pretrained=path, **tiny_vit_kwargs)
    assert "\n" not in str(err.value) and len(str(err.value)) < 700


def test_deeper_vit_is_refused(tmp_path, tiny_vit_kwargs):
    path = save(tiny_state(tiny_vit_kwargs, depth=3), tmp_path / "deep.safetensors")
    with pytest.raises(WeightsError, match=r"\d+ unexpected \(e\.g\. blocks\.2\."):
        build_model(VIT, 10, 16, pretrained=path, **tiny_vit_kwargs)


def test_vit_weights_for_a_resnet_are_refused(tmp_path, tiny_vit_kwargs):
    path = save(tiny_state(tiny_vit_kwargs), tmp_path / "vit.safetensors")
    with pytest.raises(WeightsError, match="weights do not fit resnet18: 0 matched"):
        build_model("resnet18", 10, None, pretrained=path)


def test_resnet_checkpoint_without_step_counters_loads(tmp_path):
    """An old torchvision-style checkpoint (no BatchNorm ``num_batches_tracked``) behind DDP's ``module.``."""
    torch.manual_seed(0)
    state = {k: v for k, v in timm.create_model("resnet18").state_dict().items() if "num_batches_tracked" not in k}
    path = save({f"module.{k}": v for k, v in state.items()}, tmp_path / "r18.pth")
    model = build_model("resnet18", 5, None, pretrained=path)
    assert_backbone_equal(model, state, skip=("fc.weight", "fc.bias") + tuple(
        k for k in model.backbone.state_dict() if "num_batches_tracked" in k))
    assert model.weights_report.new == ("fc.weight", "fc.bias")
    assert model.weights_report.loaded == len(state) - 2


def test_other_class_count_gets_a_new_head(tmp_path, tiny_vit_kwargs):
    state = tiny_state(tiny_vit_kwargs, num_classes=1000)
    path = save(state, tmp_path / "in1k.safetensors")
    model = build_model(VIT, 3, 16, pretrained=path, **tiny_vit_kwargs)
    assert_backbone_equal(model, state)
    report = model.weights_report
    assert report.new == HEAD and report.loaded == report.total == len(state) - 2
    assert report.summary().endswith("new head: head.weight, head.bias)")
    assert model.backbone.head.weight.shape == (3, 32)


def test_position_embeddings_are_resized_by_timms_filter(tmp_path, tiny_vit_kwargs):
    state = tiny_state(tiny_vit_kwargs)
    path = save(state, tmp_path / "vit32.safetensors")
    model = build_model(VIT, 10, 16, pretrained=path, **{**tiny_vit_kwargs, "img_size": 48})
    assert model.backbone.pos_embed.shape == (1, 1 + 6 * 6, 32)
    assert_backbone_equal(model, state, skip=("pos_embed",))
    torch.testing.assert_close(model.backbone.pos_embed[:, 0], state["pos_embed"][:, 0])
    assert model.weights_report.loaded == len(state)


def test_state_dict_in_memory(tiny_vit_kwargs):
    state = tiny_state(tiny_vit_kwargs, num_classes=5)
    model = build_model(VIT, 10, 16, pretrained=state, **tiny_vit_kwargs)
    assert_backbone_equal(model, state)
    report = model.weights_report
    assert (report.source, report.format, report.sha256, report.new) == ("state dict", "state_dict", None, HEAD)
    assert "state_dict" not in model.backbone.pretrained_cfg
    with pytest.raises(WeightsError, match="state dict: weights do not fit"):
        build_model(VIT, 10, 16, pretrained=tiny_state(tiny_vit_kwargs, embed_dim=48), **tiny_vit_kwargs)


def test_random_init_has_no_report(tiny_vit_kwargs):
    assert build_model(VIT, 10, 16, pretrained=None, **tiny_vit_kwargs).weights_report is None


def test_unreadable_pth_is_a_weights_error(tmp_path, tiny_vit_kwargs):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match=r"broken\.pth: cannot read it as a torch state dict"):
        build_model(VIT, 10, 16, pretrained=path, **tiny_vit_kwargs)


def test_timm_source_is_verified(monkeypatch, tiny_vit_kwargs):
    """``pretrained=True``: timm fetches (here a fake hub), the same checks load."""
    hub = {"state": tiny_state(tiny_vit_kwargs, num_classes=1000)}
    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", lambda *a, **k: dict(hub["state"]))
    model = build_model(VIT, 10, 16, pretrained=True, **tiny_vit_kwargs)
    assert_backbone_equal(model, hub["state"])
    report = model.weights_report
    assert (report.source, report.format, report.sha256) == (f"timm:{VIT}.augreg_in21k_ft_in1k", "timm", None)
    assert report.new == HEAD
    assert "load_pretrained" not in vars(model.backbone)
    hub["state"] = tiny_state(tiny_vit_kwargs, embed_dim=48)
    with pytest.raises(WeightsError, match=f"timm:{VIT}.augreg_in21k_ft_in1k: weights do not fit"):
        build_model(VIT, 10, 16, pretrained=True, **tiny_vit_kwargs)


def test_timm_jax_source_is_verified(monkeypatch, tmp_path, tiny_vit_kwargs):
    """A timm source in JAX format (url + custom_load): timm downloads, the checked in-place loader reads it."""
    state = tiny_state(tiny_vit_kwargs, num_classes=1000)
    path = to_jax_npz(state, tmp_path / "augreg.npz", heads=tiny_vit_kwargs["num_heads"])
    monkeypatch.setattr("timm.models._builder.has_hf_hub", lambda necessary=False: False)
    monkeypatch.setattr("timm.models._builder.download_cached_file", lambda url, **kwargs: str(path))
    model = build_model(VIT, 10, 16, pretrained=True, **tiny_vit_kwargs)
    assert_backbone_equal(model, state)
    assert (model.weights_report.format, model.weights_report.new) == ("timm", HEAD)


def test_timm_source_offline_is_unavailable(monkeypatch, tiny_vit_kwargs):
    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", offline)
    net = timm.create_model(VIT, num_classes=10, **tiny_vit_kwargs)
    with pytest.raises(WeightsUnavailableError, match="pass pretrained=/path/to/weights.safetensors"):
        load_weights(net, True)
    assert "load_pretrained" not in vars(net)


def test_sha256_is_hashed_once_per_file_version(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 3_000_000)
    first = file_sha256(path)
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(tmp_path / "." / "w.bin") == first
    path.write_bytes(b"y" * 10)
    assert file_sha256(path) == hashlib.sha256(b"y" * 10).hexdigest()


def test_load_weights_on_a_bare_timm_model(tmp_path, tiny_vit_kwargs):
    state = tiny_state(tiny_vit_kwargs)
    net = timm.create_model(VIT, num_classes=10, **tiny_vit_kwargs)
    report = load_weights(net, save(state, tmp_path / "vit.pt"))
    assert report.loaded == len(state) and report.format == "pth"
    torch.testing.assert_close(net.pos_embed, state["pos_embed"])
