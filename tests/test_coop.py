"""CoOp baseline: learned context over a frozen CLIP (a tiny one saved in open_clip's real format)."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from instruction_vit.api import load_config
from instruction_vit.artifacts.checkpoint import CheckpointError, load_checkpoint
from instruction_vit.config import ConfigError
from instruction_vit.methods import get_method
from instruction_vit.methods.cocoop import CoCoOpModel
from instruction_vit.methods.coop import CoOpModel
from instruction_vit.model import apply_regime
from instruction_vit.prompts import load_encoder
from instruction_vit.training import train

CLASSES = ["cat", "dog", "car"]


def test_initialised_from_a_phrase_it_is_clips_zero_shot_classifier(clip):
    coop = CoOpModel(clip, CLASSES, ctx_init="a photo of a").eval()
    expected = clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in CLASSES]))
    torch.testing.assert_close(coop.text_features(), expected, atol=1e-5, rtol=1e-4)
    images = torch.randn(2, 3, 32, 32)
    zero_shot = open_clip.build_zero_shot_classifier(clip.model, clip.tokenizer, CLASSES, ["a photo of a {}."])
    reference = clip.model.logit_scale.exp() * F.normalize(clip.model.encode_image(images), dim=-1) @ zero_shot
    torch.testing.assert_close(coop(images).logits, reference, atol=1e-4, rtol=1e-4)


def test_only_the_context_learns(clip):
    coop = CoOpModel(clip, CLASSES, n_ctx=4, ctx_init=None)
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
    assert isinstance(model, CoOpModel)
    start = CoOpModel(load_encoder(f"open_clip:local-dir:{tiny_clip_dir}"), ["blue", "green", "red"])
    assert not torch.allclose(model.prompt_embed.context, start.prompt_embed.context)  # it learned
    torch.testing.assert_close(model.image_tower.visual.conv1.weight, start.image_tower.visual.conv1.weight)  # frozen

    # CLIP's frozen weights are saved by reference: the context alone, checked against the encoder's weights.
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert [k for k in ckpt.tensors if k.startswith("model/")] == ["model/prompt_embed.context"]
    assert train(cfg, tmp_path / "resumed", stop_after_epochs=1) == {"stopped_after_epoch": 1}
    train(cfg, tmp_path / "resumed", resume=True)
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    context = "model/prompt_embed.context"
    torch.testing.assert_close(resumed.tensors[context], ckpt.tensors[context])
    # A checkpoint of the CoOp before its towers were split named CLIP by reference as "clip.": it still loads.
    older = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    older.external = {**older.external, "prefixes": ["clip."]}
    torch.testing.assert_close(older.build_model().prompt_embed.context, ckpt.tensors["model/prompt_embed.context"])
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
    from instruction_vit.artifacts.classifier import Classifier

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
    reference = CoOpModel(load_encoder(f"open_clip:local-dir:{tiny_clip_dir}"), new)
    reference.prompt_embed.context.data.copy_(classifier.model.prompt_embed.context)
    torch.testing.assert_close(classifier.model.text_features(), reference.text_features())  # context + new names
    # Its own classes again after new ones: the model is given them back (not the last names under the old labels).
    fresh = Classifier.load(tmp_path / "run", "cpu").predict([images / "red" / "0.png"], top_k=10)[0]
    assert classifier.predict([images / "red" / "0.png"], top_k=10)[0] == fresh
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(images / "red" / "0.png"),
                                      "--classes", ",".join(new)])
    assert result.exit_code == 0, result.output
    assert "coop: its learned prompts with each new class name" in result.output and "plain" not in result.output


@pytest.mark.parametrize("method", ["cocoop", "kgcoop"])  # CoOp's own: the two tests above
def test_each_coop_family_method_through_the_cli(method, tmp_path, tiny_clip_dir):
    """train -> (interrupted) train --resume -> eval -> predict --classes, for the other methods of the family."""
    from helpers import colour_folder
    from typer.testing import CliRunner

    from instruction_vit.cli import app

    images = colour_folder(tmp_path / "images", per_class=8)
    overrides = ["data.dataset=folder", f"data.root={images}", "data.val_fraction=0.25", "data.img_size=32",
                 "data.randaugment=null", "data.num_workers=0", "prompts.kind=none", f"model.method={method}",
                 f"prompts.encoder=open_clip:local-dir:{tiny_clip_dir}", f"prompts.cache_dir={tmp_path / 'cache'}",
                 "model.regime=prompt", "train.epochs=2", "train.batch_size=4", "train.lr=0.01", "train.mixup=0",
                 "train.cutmix=0"]
    runner = CliRunner()

    def ivit(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    ivit("train", "--out", str(tmp_path / "run"), *overrides)
    ivit("train", "--out", str(tmp_path / "resumed"), "--stop-after-epochs", "1", *overrides)
    ivit("train", "--out", str(tmp_path / "resumed"), "--resume")
    straight = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    model = straight.build_model()
    names = {id(p): n for n, p in model.named_parameters()}
    trained = sorted(f"model/{names[id(p)]}" for p in model.trainable_parameters("prompt"))
    assert sorted(k for k in straight.tensors if k.startswith("model/")) == trained  # what it trains, nothing else
    for key in trained:
        torch.testing.assert_close(resumed.tensors[key], straight.tensors[key])
    start = get_method(method).build(straight.config, straight.class_names)
    assert not torch.allclose(straight.tensors["model/prompt_embed.context"], start.prompt_embed.context)  # learned
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    assert ("train_kg" in metrics) == (method == "kgcoop")  # KgCoOp's extra term is logged under its name

    assert "top-1" in ivit("eval", str(tmp_path / "run"))
    new = ["crimson", "lime", "navy", "coal"]
    out = ivit("predict", str(tmp_path / "run"), str(images / "red" / "0.png"), "--classes", ",".join(new))
    assert f"4 classes; {method}: its learned prompts with each new class name" in out
    assert sum(name in out for name in new) == 4


# The offline text tower: MiniLM against ConSE image features (real models from site-packages, loaded once here).
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def conse():
    encoder = load_encoder("conse@32")
    encoder.label_embeddings  # noqa: B018 (computed once, for every model built from this encoder)
    return encoder


def test_over_conse_coop_starts_at_conse_zero_shot(conse):
    """MiniLM as the text tower: the context "a photo of a" in its word-embedding space, through BERT, mean pooling
    and normalisation, gives exactly the sentence-transformer's embeddings of "a photo of a {}."."""
    coop = CoOpModel(conse, FASHION, ctx_init="a photo of a").eval()
    assert coop.prompt_embed.context.shape == (4, 384) and coop.logit_scale.item() == 100.0
    expected = conse.encode_text([f"a photo of a {c}." for c in FASHION])
    torch.testing.assert_close(coop.text_features(), expected, atol=1e-5, rtol=1e-4)
    images = torch.randn(3, 3, 32, 32)
    zero_shot = 100.0 * F.normalize(conse.encode_images(images), dim=-1) @ F.normalize(expected, dim=-1).T
    torch.testing.assert_close(coop(images).logits, zero_shot, atol=1e-3, rtol=1e-4)
    assert coop.backbone.pretrained_cfg["input_size"] == (3, 32, 32) and coop.backbone.pretrained_cfg["mean"] == \
        (0.5, 0.5, 0.5)  # EfficientNet-Lite0's preprocessing drives the engine's transforms
    coop.train()
    assert not coop.image_tower.net.training and not coop.text_tower.bert.training  # no BN updates, no dropout
    cocoop = CoCoOpModel(conse, FASHION[:3]).eval()  # the meta-net maps ConSE's 384-d to MiniLM's width
    assert (cocoop.meta_net.linear1.out_features, cocoop.meta_net.linear2.out_features) == (24, 384)
    assert cocoop(images).logits.shape == (3, 3)


@pytest.mark.parametrize("method", ["kgcoop"])
def test_over_conse_a_method_learns_its_context_in_the_engine(method, conse, tmp_path, monkeypatch):
    from helpers import colour_folder

    from instruction_vit.artifacts.classifier import Classifier

    monkeypatch.setattr("instruction_vit.methods.coop.load_encoder", lambda spec: conse)  # loaded once above
    images = colour_folder(tmp_path / "images", per_class=4)
    cfg = load_config(None, [  # the 6 training images in one batch: each epoch's loss is that of the whole set
        "data.dataset=folder", f"data.root={images}", "data.val_fraction=0.25", "data.img_size=32",
        "data.randaugment=null", "data.num_workers=0", "prompts.kind=none", f"model.method={method}",
        "prompts.encoder=conse@32", f"prompts.cache_dir={tmp_path / 'cache'}", "model.regime=prompt",
        "train.epochs=4", "train.batch_size=6", "train.lr=0.003", "train.warmup_epochs=0", "train.mixup=0",
        "train.cutmix=0", "data.crop_min_scale=1", "data.hflip=0", "data.color_jitter=0"])  # no augmentation
    train(cfg, tmp_path / "run")
    import csv

    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    losses = [float(r["train_head"]) for r in rows]  # the classification loss, without KgCoOp's own term
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.05, losses  # it learns
    assert 0 < float(rows[-1]["train_kg"]) < 8.0  # ... while its context moves away from "a photo of a"
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert all(k.startswith(("model/prompt_embed.", "model/meta_net.")) for k in ckpt.tensors if k.startswith("model/"))
    assert ckpt.external["weights_id"] == conse.weights_id()
    classifier = Classifier.load(tmp_path / "run", "cpu")
    ranked = classifier.predict([images / "red" / "0.png"], classes=["crimson", "lime"], top_k=2)[0]
    assert sorted(name for name, _ in ranked) == ["crimson", "lime"]
