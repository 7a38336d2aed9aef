"""PromptSRC: deep independent prompts, its regularisers towards the frozen CLIP, Gaussian prompt aggregation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector
from helpers import DEEP_CLIP_CFG, save_clip

from instruction_vit.config import ConfigError, load_config
from instruction_vit.methods.promptsrc import PromptSRCModel, promptsrc_templates
from instruction_vit.model import apply_regime
from instruction_vit.prompts import load_encoder

CLASSES = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def encoder(deep_clip):
    return load_encoder(deep_clip)


def test_promptsrc_trains_exactly_its_vision_and_language_prompts(encoder):
    model = PromptSRCModel(encoder, CLASSES, depth_text=3, depth_vision=2)
    assert apply_regime(model, "prompt") == [
        "prompt_learner.context", "prompt_learner.vision", "prompt_learner.deep_text.0", "prompt_learner.deep_text.1",
        "prompt_learner.deep_vision.0"]
    assert model.prompt_learner.context.shape == (4, 24) and model.prompt_learner.vision.shape == (4, 32)
    tokens = encoder.tokenizer(["a photo of a"])  # all 4 tokens of the phrase
    torch.testing.assert_close(model.prompt_learner.context, encoder.model.token_embedding(tokens)[0, 1:5])
    with pytest.raises(ConfigError, match="regime 'full' does not fit PromptSRC"):
        apply_regime(model, "full")
    assert len(promptsrc_templates("promptsrc")) == 60 and promptsrc_templates("photo") == ["a photo of a {}."]


def test_regularisers_vanish_when_the_prompts_reproduce_frozen_clip_and_grow_as_they_move(encoder):
    """Text context = "a photo of a", no deep or vision prompts, one template "a photo of a {}.": the prompted model
    is the frozen CLIP, so all three terms are zero; moving a prompt makes them positive (KL(frozen || prompted))."""
    model = PromptSRCModel(encoder, CLASSES, depth_text=1, n_ctx_vision=0,
                                templates=["a photo of a {}."]).train()
    images = torch.randn(4, 3, 32, 32)
    aux = model(images).aux
    assert set(aux) == {"scl_text", "scl_image", "scl_logits"}
    assert all(abs(v.item()) < 1e-6 for v in aux.values()), aux
    assert model.eval()(images).aux is None  # only in training

    moved = PromptSRCModel(encoder, CLASSES, depth_text=2, depth_vision=2, templates=["a photo of a {}."],
                                text_loss_weight=25, image_loss_weight=10, logits_loss_weight=1).train()
    out = moved(images)
    clip = encoder.model
    frozen_text = F.normalize(clip.encode_text(encoder.tokenizer([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    frozen_image = F.normalize(clip.encode_image(images), dim=-1)
    text, image = F.normalize(moved.text_features(), dim=-1), F.normalize(moved.image_features(images), dim=-1)
    torch.testing.assert_close(out.aux["scl_text"], 25 * (text - frozen_text).abs().mean())
    torch.testing.assert_close(out.aux["scl_image"], 10 * (image - frozen_image).abs().mean())
    p_frozen = (clip.logit_scale.exp() * frozen_image @ frozen_text.T).softmax(-1)
    p = out.logits.softmax(-1)
    torch.testing.assert_close(out.aux["scl_logits"], (p_frozen * (p_frozen.log() - p.log())).sum() / p.numel())
    assert all(v.item() > 1e-4 for v in out.aux.values())


def test_the_aggregate_is_the_gaussian_weighted_mean_of_the_epochs_prompts(encoder):
    model = PromptSRCModel(encoder, CLASSES, depth_text=2, depth_vision=2, gpa_mean=2.0, gpa_std=1.5)
    params = list(model.prompt_learner.parameters())
    epochs, seen = 4, []
    for epoch in range(epochs):
        with torch.no_grad():
            for p in params:
                p.copy_(torch.randn_like(p))
        seen.append(parameters_to_vector(params).detach().clone())
        model.end_epoch(epoch, epochs)
        if epoch + 1 < epochs:  # not yet aggregated
            assert torch.equal(parameters_to_vector(params), seen[-1])
    # The official weights: gauss(1..N), normalised over the N epochs.
    gauss = np.array([math.exp(-0.5 * ((a - 2.0) / 1.5) ** 2) for a in range(1, epochs + 1)])
    expected = sum(float(w) * s.double() for w, s in zip(gauss / gauss.sum(), seen))
    torch.testing.assert_close(parameters_to_vector(params).double(), expected, atol=1e-6, rtol=1e-6)
    assert {"gpa_sum", "gpa_weight"} <= set(model.state_dict())  # persistent: a resumed run continues the sum


def test_promptsrc_through_the_cli_aggregates_checkpoints_resumes_and_predicts(tmp_path, deep_clip):
    from helpers import colour_folder
    from typer.testing import CliRunner

    from instruction_vit.cli import app
    from instruction_vit.artifacts.checkpoint import load_checkpoint

    images = colour_folder(tmp_path / "images", per_class=8)
    args = ["data.dataset=folder", f"data.root={images}", "data.val_fraction=0.25", "data.img_size=32",
            "data.randaugment=null", "data.num_workers=0", "prompts.kind=none", "model.method=promptsrc",
            f"prompts.encoder={deep_clip}", f"prompts.cache_dir={tmp_path / 'cache'}", "model.regime=prompt",
            "model.options.depth_text=3", "model.options.depth_vision=3", "model.options.gpa_mean=2",
            "train.epochs=2", "train.batch_size=6", "train.lr=0.05", "train.mixup=0", "train.cutmix=0",
            "train.warmup_epochs=0"]
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), *args, "--stop-after-epochs", "1"])
    assert result.exit_code == 0, result.output
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    order = ["context", "vision", "deep_text.0", "deep_text.1", "deep_vision.0", "deep_vision.1"]  # parameters()
    prompts = [f"model/prompt_learner.{name}" for name in order]
    assert set(prompts) == {k for k in first.tensors if k.startswith("model/prompt_learner.")}
    assert not [k for k in first.tensors if k.startswith("model/clip.")] and len(prompts) == 6
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--resume"])
    assert result.exit_code == 0, result.output
    assert "train_scl_text" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]

    # The saved prompts are the aggregate of epoch 1's (from the stopped run) and epoch 2's, weighted N(e; 2, 1).
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    w1, w2 = (math.exp(-0.5 * (e - 2.0) ** 2) / math.sqrt(2 * math.pi) for e in (1, 2))
    epoch1 = torch.cat([first.tensors[k].flatten() for k in prompts]).double()
    torch.testing.assert_close(first.tensors["model/gpa_sum"], w1 * epoch1)
    assert last.tensors["model/gpa_weight"].item() == pytest.approx(w1 + w2)
    epoch2 = (last.tensors["model/gpa_sum"] - w1 * epoch1) / w2
    final = torch.cat([last.tensors[k].flatten() for k in prompts]).double()
    torch.testing.assert_close(final, (w1 * epoch1 + w2 * epoch2) / (w1 + w2), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(final, epoch2, atol=1e-4)  # it is not simply the last epoch's prompts
    # The run's result is the aggregate: best.safetensors holds it, whatever the validation scores were.
    best = load_checkpoint(tmp_path / "run")
    assert all(torch.equal(best.tensors[k], last.tensors[k]) for k in prompts)

    new = ["crimson", "lime", "navy"]
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(images / "red" / "0.png"), "--classes",
                                 ",".join(new)])
    assert result.exit_code == 0 and "promptsrc: its learned prompts with each new class name" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output


def test_promptsrc_config_errors(tmp_path, encoder):

    resnet = dict(DEEP_CLIP_CFG, vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 16})
    rn = load_encoder(save_clip(tmp_path / "rn", resnet))
    with pytest.raises(ConfigError, match="deep vision prompts need a transformer image tower"):
        PromptSRCModel(rn, CLASSES, depth_text=2, depth_vision=2)
    assert PromptSRCModel(rn, CLASSES, depth_text=2, n_ctx_vision=0).prompt_learner.vision.numel() == 0
    with pytest.raises(ConfigError, match="depth_text=9 does not fit"):
        PromptSRCModel(encoder, CLASSES)
    with pytest.raises(ConfigError, match="unknown template set 'nope'"):
        promptsrc_templates("nope")
    cfg = load_config(None, ["model.method=promptsrc", "prompts.kind=none", "train.epochs=2",
                             "model.options.gpa_mean=500", "model.options.depth_text=2"])
    from instruction_vit.methods import get_method

    with pytest.raises(ConfigError, match="aggregation weights of all 2 epochs vanish"):
        get_method("promptsrc").build(cfg, CLASSES)
