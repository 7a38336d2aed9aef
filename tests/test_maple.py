"""MaPLe and the deep-prompt runner it shares with PromptSRC, on a tiny 3-layer CLIP saved in open_clip's format."""


import pytest
import torch

from helpers import DEEP_CLIP_CFG, save_clip

from instruction_vit.config import ConfigError
from instruction_vit.methods import deep_prompts as dp
from instruction_vit.methods.maple import MaPLeModel
from instruction_vit.model import apply_regime
from instruction_vit.prompts import load_encoder

CLASSES = ["cat", "dog", "car"]
@pytest.fixture(scope="module")
def encoder(deep_clip):
    return load_encoder(deep_clip)


def test_deep_runner_without_prompts_is_plain_clip(encoder):
    """Block by block with zero prompt tokens, both towers compute exactly open_clip's encode_text / encode_image."""
    clip = encoder.model
    tokens = encoder.tokenizer(["a photo of a cat.", "dog"])
    tower = dp.text_tower(clip, "test")
    empty_text = [torch.zeros(0, 24)] * 2
    text = dp.encode_text(tower, tower.token_embedding(tokens), tokens, empty_text)
    assert torch.equal(text, clip.encode_text(tokens))
    images = torch.randn(2, 3, 32, 32)
    image = dp.encode_image(clip.visual, images, torch.zeros(0, 32), [torch.zeros(0, 32)] * 2)
    torch.testing.assert_close(image, clip.encode_image(images), atol=1e-6, rtol=0)
    assert torch.equal(dp.encode_image(clip.visual, images), clip.encode_image(images))


def _official_image(visual, images, prompts, deep):
    """The official MaPLe/PromptSRC vision forward (clip/model.py), sequence-first, [CLS] pooled."""
    x = visual.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = x + visual.positional_embedding
    x = torch.cat([x, prompts.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)  # LND
    n = prompts.shape[0]
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:x.shape[0] - n], deep[i - 1].expand(x.shape[1], -1, -1).permute(1, 0, 2)], dim=0)
        x = block(x.permute(1, 0, 2)).permute(1, 0, 2)
    return visual.ln_post(x.permute(1, 0, 2)[:, 0]) @ visual.proj


def _official_text(clip, embeddings, tokens, deep):
    x = (embeddings + clip.positional_embedding).permute(1, 0, 2)
    n = deep[0].shape[0]
    for i, block in enumerate(clip.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:1], deep[i - 1].expand(x.shape[1], -1, -1).permute(1, 0, 2), x[1 + n:]], dim=0)
        x = block(x.permute(1, 0, 2), attn_mask=clip.attn_mask).permute(1, 0, 2)
    x = clip.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ clip.text_projection


def test_deep_prompts_sit_where_the_official_code_puts_them(encoder):
    clip = encoder.model
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    prompts, deep = torch.randn(2, 32), [torch.randn(2, 32), torch.randn(2, 32)]
    expected = _official_image(clip.visual, images, prompts, deep)
    torch.testing.assert_close(dp.encode_image(clip.visual, images, prompts, deep), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, clip.encode_image(images), atol=1e-3)  # the prompts do act
    tokens = encoder.tokenizer(["X X cat.", "X X dog."])
    tower = dp.text_tower(clip, "test")
    embeddings = tower.token_embedding(tokens)
    embeddings[:, 1:3] = torch.randn(2, 24)
    deep_text = [torch.randn(2, 24), torch.randn(2, 24)]
    torch.testing.assert_close(dp.encode_text(tower, embeddings, tokens, deep_text),
                               _official_text(clip, embeddings, tokens, deep_text), atol=1e-5, rtol=1e-5)


def test_maple_trains_exactly_its_prompts_and_couplings(encoder):
    maple = MaPLeModel(encoder, CLASSES, n_ctx=2, depth=3)
    assert apply_regime(maple, "prompt") == [
        "prompt_learner.context", "prompt_learner.deep_text.0", "prompt_learner.deep_text.1",
        "prompt_learner.coupling.0.weight", "prompt_learner.coupling.0.bias",
        "prompt_learner.coupling.1.weight", "prompt_learner.coupling.1.bias",
        "prompt_learner.coupling.2.weight", "prompt_learner.coupling.2.bias"]
    assert maple.prompt_learner.coupling[0].weight.shape == (32, 24)  # text width -> vision width
    # The context starts as the first 2 tokens of "a photo of a" (the official init), and so do the class texts.
    tokens = encoder.tokenizer(["a photo of a"])
    torch.testing.assert_close(maple.prompt_learner.context, encoder.model.token_embedding(tokens)[0, 1:3])
    # The rest of the phrase stays in the text, as the official prompt "[SOS] v1 v2 of a <name>. [EOS]"; shallow
    # (depth 1), the text side at init is CLIP's own encoding of "a photo of a <name>.".
    shallow = MaPLeModel(encoder, CLASSES, n_ctx=2, depth=1)
    texts = encoder.tokenizer([f"a photo of a {name}." for name in CLASSES])
    assert torch.equal(shallow.texts.tokens, texts)
    with torch.no_grad():
        torch.testing.assert_close(shallow.text_features(), encoder.model.encode_text(texts))
    for regime in ("linear", "full"):
        with pytest.raises(ConfigError, match=f"regime '{regime}' does not fit MaPLe.*model.regime=prompt"):
            apply_regime(maple, regime)


def test_maple_vision_prompts_are_functions_of_its_language_prompts(encoder):
    maple = MaPLeModel(encoder, CLASSES, n_ctx=2, depth=3)
    learner = maple.prompt_learner
    images = torch.randn(2, 3, 32, 32)
    before = maple.image_features(images).detach()
    with torch.no_grad():
        learner.deep_text[1].add_(torch.randn(2, 24))  # a language prompt changes ...
    vision = learner.vision()
    torch.testing.assert_close(vision[2], learner.coupling[2](learner.deep_text[1]))  # ... its vision prompt follows
    torch.testing.assert_close(vision[0], learner.coupling[0](learner.context))
    assert not torch.allclose(maple.image_features(images), before)  # and so does the image tower's output
    # An image-only loss reaches the language prompts through the couplings; CLIP stays frozen.
    apply_regime(maple, "prompt")
    maple.image_features(images).square().sum().backward()
    assert learner.context.grad.abs().sum() > 0 and learner.deep_text[1].grad.abs().sum() > 0
    assert all(learner.coupling[i].weight.grad.abs().sum() > 0 for i in range(3))
    assert all(p.grad is None for n, p in maple.named_parameters() if n.startswith("clip."))


def test_towers_that_cannot_take_deep_prompts_are_config_errors(tmp_path, encoder):
    resnet = dict(DEEP_CLIP_CFG, vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 16})
    with pytest.raises(ConfigError, match="deep vision prompts need a transformer image tower.*ModifiedResNet"):
        MaPLeModel(load_encoder(save_clip(tmp_path / "rn", resnet)), CLASSES)
    with pytest.raises(ConfigError, match="model.options.depth=9 does not fit.*3 layers"):
        MaPLeModel(encoder, CLASSES)  # the paper's J=9 needs 9 layers
    with pytest.raises(ConfigError, match="model.options.n_ctx=5 .*gives 4.*model.options.ctx_init=null"):
        MaPLeModel(encoder, CLASSES, n_ctx=5, depth=2)


def test_maple_through_the_cli_train_resume_eval_predict(tmp_path, deep_clip):
    """model.method=maple trains, resumes, evaluates and predicts new class names like CoOp; CLIP by reference."""
    from helpers import colour_folder
    from typer.testing import CliRunner

    from instruction_vit.cli import app
    from instruction_vit.artifacts.checkpoint import CheckpointError, load_checkpoint

    images = colour_folder(tmp_path / "images", per_class=8)
    args = ["data.dataset=folder", f"data.root={images}", "data.val_fraction=0.25", "data.img_size=32",
            "data.randaugment=null", "data.num_workers=0", "prompts.kind=none", "model.method=maple",
            f"prompts.encoder={deep_clip}", f"prompts.cache_dir={tmp_path / 'cache'}", "model.regime=prompt",
            "model.options.depth=3", "train.epochs=2", "train.batch_size=6", "train.lr=0.01", "train.mixup=0",
            "train.cutmix=0", "train.warmup_epochs=0"]
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), *args, "--stop-after-epochs", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--resume"])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert ckpt.meta["epoch"] == 1 and ckpt.config.model.options == {"n_ctx": 2, "depth": 3, "ctx_init": "a photo of a"}
    assert not [k for k in ckpt.tensors if k.startswith("model/clip.")]
    assert "model/prompt_learner.coupling.2.weight" in ckpt.tensors
    model = ckpt.build_model()
    start = MaPLeModel(load_encoder(deep_clip), ["blue", "green", "red"], depth=3)
    assert not torch.allclose(model.prompt_learner.deep_text[0], start.prompt_learner.deep_text[0])  # it learned
    torch.testing.assert_close(model.clip.visual.conv1.weight, start.clip.visual.conv1.weight)  # CLIP frozen
    ckpt.external = {**ckpt.external, "weights_id": "sha256:other"}
    with pytest.raises(CheckpointError, match="trained over encoder weights 'sha256:other'"):
        ckpt.build_model()  # CLIP is kept by reference: other weights are refused

    result = runner.invoke(app, ["eval", str(tmp_path / "run")])
    assert result.exit_code == 0 and "head" in result.output, result.output
    new = ["crimson", "lime", "navy", "coal"]
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(images / "red" / "0.png"),
                                 "--classes", ",".join(new)])
    assert result.exit_code == 0, result.output
    assert "4 classes; maple: its learned prompts with each new class name" in result.output
    assert all(name in result.output for name in new)
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "bad"), *args, "model.options.depth=9"])
    assert result.exit_code == 2 and "depth=9 does not fit" in result.output
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "bad2"), *args, "model.options.deep=2"])
    assert result.exit_code == 2 and "deep" in result.output
