"""End-to-end train -> eval -> predict on a generated image folder; resume, atomic saves, bad runs."""

import json

import pytest
import torch
from helpers import colour_folder, tiny_run

import instruction_vit.artifacts.checkpoint as checkpoint_module
from instruction_vit.artifacts.checkpoint import load_checkpoint
from instruction_vit.config import load_config
from instruction_vit.losses import InstructionLoss
from instruction_vit.training import train
from instruction_vit.training.loop import NonFiniteLossError, RunFolderError



@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return colour_folder(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture
def cfg(image_root, tiny_clip_dir, tmp_path):
    return tiny_run(image_root, tiny_clip_dir, tmp_path / "cache", "prompts.select_k=1", "train.epochs=3",
                    "train.deterministic=true")


def _weights(path):
    return load_checkpoint(path).model_state()


def test_train_eval_predict_end_to_end(cfg, tmp_path):
    out = tmp_path / "run"
    results = train(cfg, out)
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,step,lr,")
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < last["train_seconds"] <= last["epoch_seconds"] and last["train_images_per_second"] > 0
    assert (out / "config.yaml").is_file() and load_config(out / "config.yaml") == cfg
    assert json.loads((out / "results.json").read_text()) == results
    assert set(results["all_prompts"]) == {"head", "score", "combined"} and "select_k1" in results
    assert len(results["all_prompts"]["head"]["confusion"]) == 3
    ckpt = load_checkpoint(out)  # the run folder means its best checkpoint
    assert ckpt.class_names == ["blue", "green", "red"] and ckpt.meta["bank_kind"] == "text"
    model = ckpt.build_model().eval()
    x = torch.randn(2, 3, 16, 16)
    out_ = model(x, model.bank_prompts())
    assert out_.logits.shape == (2, 3) and out_.scores.shape == (2, 3)
    assert results["all_prompts"]["combined"]["top1"] > 50  # the colours are learnable


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(cfg, tmp_path, monkeypatch):
    cfg.train.mixup, cfg.train.cutmix, cfg.train.mixup_prob = 0.8, 1.0, 0.5  # NumPy RNG in play too
    cfg.data.randaugment = "rand-m9-mstd0.5"  # and Python's random
    train(cfg, tmp_path / "straight")

    calls = {"n": 0}
    original = InstructionLoss.forward

    def dies_mid_epoch_two(self, output, target):
        calls["n"] += 1
        if calls["n"] == 6:  # 3 steps per epoch: the 3rd step of epoch 2
            raise KeyboardInterrupt("killed")
        return original(self, output, target)

    monkeypatch.setattr(InstructionLoss, "forward", dies_mid_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed")
    monkeypatch.setattr(InstructionLoss, "forward", original)
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.safetensors").meta["epoch"] == 0
    train(cfg, tmp_path / "killed", resume=True)

    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    resumed = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    timing = ("epoch_seconds", "train_seconds", "train_images_per_second")
    strip = [{k: v for k, v in json.loads(r).items() if k not in timing} for r in straight]
    assert strip == [{k: v for k, v in json.loads(r).items() if k not in timing} for r in resumed]
    a = _weights(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b = _weights(tmp_path / "killed" / "checkpoints" / "last.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(cfg, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(cfg, out)
    last = out / "checkpoints" / "last.safetensors"
    before = _weights(last)
    real_save = checkpoint_module.save_file

    def dies_halfway(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # a half-written file...
            f.truncate(100)
        raise KeyboardInterrupt("killed while saving")  # ...and the process dies

    monkeypatch.setattr(checkpoint_module, "save_file", dies_halfway)
    model = load_checkpoint(last).build_model()
    with pytest.raises(KeyboardInterrupt):
        checkpoint_module.save_checkpoint(last, model, {"epoch": 99})
    after = _weights(last)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not list((out / "checkpoints").glob(".*tmp"))


def test_non_finite_loss_stops_with_a_message_and_keeps_the_checkpoint(cfg, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = InstructionLoss.forward

    def nan_in_epoch_two(self, output, target):
        calls["n"] += 1
        parts = original(self, output, target)
        if calls["n"] == 5:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(InstructionLoss, "forward", nan_in_epoch_two)
    with pytest.raises(NonFiniteLossError, match="the loss became non-finite .* in epoch 2.*Lower train.lr"):
        train(cfg, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").meta["epoch"] == 0


def test_run_folder_rules(cfg, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="already exists.*--resume.*--force"):
        train(cfg, out)
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(cfg, out, resume=True)


def test_plain_vit_run_has_only_the_head_route(cfg, tmp_path):
    cfg.prompts.kind = "none"
    cfg.train.epochs = 1
    results = train(cfg, tmp_path / "plain")
    assert set(results["all_prompts"]) == {"head"} and "select_k1" not in results


def test_gradient_accumulation_equals_the_full_batch(cfg, tmp_path):
    cfg.train.epochs = 1
    train(cfg, tmp_path / "full")
    cfg.train.batch_size, cfg.train.accum_steps = 4, 2
    train(cfg, tmp_path / "accum")
    a = _weights(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = _weights(tmp_path / "accum" / "checkpoints" / "last.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)


def test_training_with_selection_and_the_prototype_ranker(cfg, tmp_path):
    cfg.train.epochs, cfg.prompts.train_select_k, cfg.prompts.ranker = 1, 1, "prototype"
    cfg.train.mixup, cfg.train.mixup_prob = 0.8, 1.0  # soft targets: both mixed classes are kept (K=2 needed)
    with pytest.raises(ValueError, match="keeps 2 classes but only k=1"):
        train(cfg, tmp_path / "run")
    cfg.prompts.train_select_k = 2
    results = train(cfg, tmp_path / "run", force=True)
    assert "select_k1" in results and results["select_k1"]["score"]["top1"] >= 0


def test_a_saved_bank_must_match_the_classes(cfg, tmp_path, tiny_clip_dir):
    from instruction_vit.prompts import build_prompt_bank

    bank = build_prompt_bank("text", ["cat", "dog", "owl"], text_encoder=f"open_clip:local-dir:{tiny_clip_dir}")
    cfg.prompts.bank_file = str(bank.save(tmp_path / "bank"))
    with pytest.raises(ValueError, match="built for other classes"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize("overrides", [
    {"model.backbone": "resnet18", "model.backbone_kwargs": {}, "prompts.kind": "none", "model.regime": "full"},
    {"model.options": {"vpt_tokens": 2, "vpt_deep": True}, "prompts.kind": "none", "model.regime": "prompt"},
    {"prompts.kind": "none", "model.regime": "linear"},
])
def test_baselines_train_in_the_same_engine(cfg, tmp_path, overrides):
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    cfg.train.epochs = 1
    results = train(cfg, tmp_path / "run")
    assert set(results["all_prompts"]) == {"head"}
    model = load_checkpoint(tmp_path / "run").build_model()
    assert type(model).__name__ == ("PlainModel" if "resnet18" in str(overrides) else "InstructionViT")
    assert getattr(model, "vpt_tokens", 0) == cfg.model.options.get("vpt_tokens", 0)  # VPT's tokens were built


def test_base_to_novel_predicts_unseen_classes_through_the_score_head(cfg, tmp_path):
    cfg.data.classes, cfg.train.epochs = "base", 2
    results = train(cfg, tmp_path / "b2n")
    b2n = results["base_to_novel"]
    assert results["class_names"] == ["blue", "green"] and b2n["novel_class_names"] == ["red"]
    a, b = b2n["base_top1"], b2n["novel_top1"]
    assert b == 100.0  # one novel class: the score head can only pick it
    assert b2n["hm"] == pytest.approx(2 * a * b / (a + b))


def test_zero_shot_baseline(cfg, tmp_path):
    from instruction_vit.evaluation.transfer_protocols import zero_shot

    results = zero_shot(cfg, tmp_path / "zs")
    assert 0 <= results["top1"] <= 100 and len(results["zero_shot"]["confusion"]) == 3
    assert json.loads((tmp_path / "zs" / "results.json").read_text())["top1"] == results["top1"]


def test_a_run_can_start_from_another_runs_checkpoint(cfg, tmp_path):
    cfg.prompts.kind, cfg.train.epochs = "none", 1
    train(cfg, tmp_path / "first")
    first = _weights(tmp_path / "first" / "checkpoints" / "best.safetensors")
    cfg.model.pretrained = str(tmp_path / "first" / "checkpoints" / "best.safetensors")
    cfg.model.regime, cfg.train.lr = "linear", 0.0  # nothing moves: the backbone must equal the first run's
    train(cfg, tmp_path / "second")
    second = _weights(tmp_path / "second" / "checkpoints" / "last.safetensors")
    torch.testing.assert_close(second["backbone.pos_embed"], first["backbone.pos_embed"])
    torch.testing.assert_close(second["backbone.blocks.0.attn.qkv.weight"], first["backbone.blocks.0.attn.qkv.weight"])


def test_training_from_the_store_with_device_augmentation(cfg, tmp_path):
    cfg.data.gpu_augment, cfg.data.store_dir, cfg.data.randaugment = True, str(tmp_path / "stores"), "rand-m9-mstd0.5"
    cfg.train.epochs = 2
    results = train(cfg, tmp_path / "run")
    assert len(list((tmp_path / "stores").glob("store-18px-*/images.npy"))) == 1  # 16 / 0.875 -> 18 px
    assert results["top1"] > 50  # the colours survive the augmentation


def test_store_workers_persist_across_epochs_and_change_nothing(cfg, tmp_path):
    """With the store the loader workers do no random work: persistent workers give the weights of none, also
    when the run is stopped and resumed."""
    cfg.data.gpu_augment, cfg.data.store_dir, cfg.data.randaugment = True, str(tmp_path / "stores"), "rand-m9-mstd0.5"
    cfg.train.epochs, cfg.prompts.select_k = 2, None
    cfg.train.mixup, cfg.train.cutmix, cfg.train.mixup_prob, cfg.train.mixup_mode = 0.8, 1.0, 1.0, "elem"  # per sample
    train(cfg, tmp_path / "inline")
    cfg.data.num_workers = 2
    train(cfg, tmp_path / "workers")
    assert train(cfg, tmp_path / "resumed", stop_after_epochs=1) == {"stopped_after_epoch": 1}
    train(cfg, tmp_path / "resumed", resume=True)
    inline = _weights(tmp_path / "inline" / "checkpoints" / "last.safetensors")
    for run in ("workers", "resumed"):
        other = _weights(tmp_path / run / "checkpoints" / "last.safetensors")
        assert inline.keys() == other.keys()
        for name in inline:
            torch.testing.assert_close(other[name], inline[name], rtol=0, atol=0)
