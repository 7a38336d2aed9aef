"""CoOp baseline: learned context over a frozen CLIP (a tiny one saved in open_clip's real format)."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from instruction_vit.config import ConfigError, load_config
from instruction_vit.engine import CheckpointError, load_checkpoint, train
from instruction_vit.model import apply_regime
from instruction_vit.prompts import load_encoder
from instruction_vit.classifiers.coop import CoOpClassifier

CLASSES = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_encoder(f"open_clip:local-dir:{tiny_clip_dir}")


def test_initialised_from_a_phrase_it_is_clips_zero_shot_classifier(clip):
    coop = CoOpClassifier(clip, CLASSES, init="a photo of a").eval()
    expected = clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in CLASSES]))
    torch.testing.assert_close(coop.text_features(), expected, atol=1e-5, rtol=1e-4)
    images = torch.randn(2, 3, 32, 32)
    zero_shot = open_clip.build_zero_shot_classifier(clip.model, clip.tokenizer, CLASSES, ["a photo of a {}."])
    reference = clip.model.logit_scale.exp() * F.normalize(clip.model.encode_image(images), dim=-1) @ zero_shot
    torch.testing.assert_close(coop(images).logits, reference, atol=1e-4, rtol=1e-4)


def test_only_the_context_learns(clip):
    coop = CoOpClassifier(clip, CLASSES, context_length=4, init=None)
    assert coop.prompt_embed.context.shape == (4, 32)
    assert apply_regime(coop, "prompt") == ["prompt_embed.context"]
    coop(torch.randn(2, 3, 32, 32)).logits.sum().backward()
    assert coop.prompt_embed.context.grad is not None
    assert all(p.grad is None for n, p in coop.named_parameters() if n != "prompt_embed.context")
    assert coop.trainable_parameters("prompt") == [coop.prompt_embed.context]
    for regime in ("linear", "full"):  # no head; CLIP stays frozen (kept by reference in checkpoints)
        with pytest.raises(ConfigError, match=f"regime '{regime}' does not fit CoOp.*model.regime=prompt"):
            apply_regime(coop, regime)


def test_coop_trains_in_the_engine(tmp_path, tiny_clip_dir):
    from helpers import colour_folder

    cfg = load_config(None, [
        "data.dataset=folder", f"data.root={colour_folder(tmp_path / 'images')}", "data.val_fraction=0.25",
        "data.img_size=32", "data.randaugment=null", "data.num_workers=0", "prompts.kind=none", "model.method=coop",
        f"prompts.encoder=open_clip:local-dir:{tiny_clip_dir}", f"prompts.cache_dir={tmp_path / 'cache'}",
        "model.regime=prompt", "train.epochs=2", "train.batch_size=8", "train.lr=0.01", "train.mixup=0",
        "train.cutmix=0"])
    results = train(cfg, tmp_path / "run")
    assert set(results["all_prompts"]) == {"head"}
    model = load_checkpoint(tmp_path / "run").build_model()
    assert isinstance(model, CoOpClassifier)
    start = CoOpClassifier(load_encoder(f"open_clip:local-dir:{tiny_clip_dir}"), ["blue", "green", "red"])
    assert not torch.allclose(model.prompt_embed.context, start.prompt_embed.context)  # it learned
    torch.testing.assert_close(model.clip.visual.conv1.weight, start.clip.visual.conv1.weight)  # CLIP frozen

    # CLIP's frozen weights are saved by reference: the context alone, checked against the encoder's weights.
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert not [k for k in ckpt.tensors if k.startswith("model/clip.")] and "model/prompt_embed.context" in ckpt.tensors
    assert train(cfg, tmp_path / "resumed", stop_after_epochs=1) == {"stopped_after_epoch": 1}
    train(cfg, tmp_path / "resumed", resume=True)
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    context = "model/prompt_embed.context"
    torch.testing.assert_close(resumed.tensors[context], ckpt.tensors[context])
    ckpt.external = {**ckpt.external, "weights_id": "sha256:other"}
    with pytest.raises(CheckpointError, match="trained over encoder weights 'sha256:other'"):
        ckpt.build_model()
    with pytest.raises(ConfigError, match="set prompts.kind=none"):
        load_config(None, ["model.method=coop", "prompts.kind=text"])
    cfg.data.img_size = 48
    with pytest.raises(ConfigError, match="reads 32 px images"):
        train(cfg, tmp_path / "bad")


def test_coop_predicts_new_class_names_with_its_learned_context(tmp_path, tiny_clip_dir):
    """CoOp's context is class-agnostic: new names get the learned context before them (not 'a plain ViT')."""
    from helpers import colour_folder
    from typer.testing import CliRunner

    from instruction_vit.cli import app
    from instruction_vit.engine.classifier import Classifier

    images = colour_folder(tmp_path / "images")
    cfg = load_config(None, [
        "data.dataset=folder", f"data.root={images}", "data.val_fraction=0.25", "data.img_size=32",
        "data.randaugment=null", "data.num_workers=0", "prompts.kind=none", "model.method=coop",
        f"prompts.encoder=open_clip:local-dir:{tiny_clip_dir}", f"prompts.cache_dir={tmp_path / 'cache'}",
        "model.regime=prompt", "train.epochs=1", "train.batch_size=8", "train.mixup=0", "train.cutmix=0"])
    train(cfg, tmp_path / "run")
    classifier = Classifier.load(tmp_path / "run", "cpu")
    new = ["crimson", "lime", "navy", "coal"]
    ranked = classifier.predict([images / "red" / "0.png"], classes=new, top_k=10)[0]
    assert sorted(name for name, _ in ranked) == sorted(new) and abs(sum(p for _, p in ranked) - 1) < 1e-5
    reference = CoOpClassifier(load_encoder(f"open_clip:local-dir:{tiny_clip_dir}"), new)
    reference.prompt_embed.context.data.copy_(classifier.model.prompt_embed.context)
    torch.testing.assert_close(classifier.model.text_features(), reference.text_features())  # context + new names
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(images / "red" / "0.png"),
                                      "--classes", ",".join(new)])
    assert result.exit_code == 0, result.output
    assert "coop: its learned prompts with each new class name" in result.output and "plain" not in result.output
