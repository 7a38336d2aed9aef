"""Shared model folders: ``ivit save`` writes one, ``ivit push`` uploads one (huggingface_hub monkeypatched: no
network here), and the folder, local or ``hf-hub:ORG/NAME`` from a Hugging Face cache filled on disk, works wherever
a checkpoint does: predict, eval, load_classifier, model.pretrained and prompts.bank_file."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import HF_REV, colour_folder, fill_hf_cache, tiny_run
from safetensors import safe_open
from typer.testing import CliRunner

import instruction_vit as ivit
from instruction_vit.artifacts.checkpoint import CheckpointError, load_checkpoint
from instruction_vit.artifacts.checkpoint import model_from_config
from instruction_vit.artifacts.sharing import HubUploadError
from instruction_vit.cli import app
from instruction_vit.config import load_config
from instruction_vit.errors import RunFolderError, WeightsUnavailableError
from instruction_vit.prompts import PromptBank
from instruction_vit.training import train

REPO = "someorg/tiny-ivit"
FILES = ("README.md", "config.json", "model.safetensors", "prompts.json", "prompts.safetensors")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return colour_folder(tmp_path_factory.mktemp("data") / "images", per_class=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_root, tiny_clip_dir):
    """A tiny trained Instruction-ViT run folder (text prompts from the tiny CLIP)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_run(image_root, tiny_clip_dir, out.parent / "cache", "train.epochs=1"), out)
    return out


@pytest.fixture(scope="module")
def folder(run, tmp_path_factory):
    return ivit.save_pretrained(run, tmp_path_factory.mktemp("shared") / "tiny-ivit")


def cached_repo(hf_cache, folder, repo=REPO):
    return fill_hf_cache(hf_cache, repo, {f.name: f for f in folder.iterdir()})


def test_saved_folder_holds_the_model_and_predicts_as_the_checkpoint(run, folder, image_root, tiny_clip_dir):
    assert sorted(f.name for f in folder.iterdir()) == list(FILES)
    ckpt = load_checkpoint(run)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:  # the model state, nothing else
        saved = {k: f.get_tensor(k) for k in f.keys()}
    state = ckpt.model_state()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    config = json.loads((folder / "config.json").read_text())
    assert config["class_names"] == ["blue", "green", "red"] and config["format"] == "instruction-vit-model/1"
    assert config["preprocessing"] == {"size": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                                       "crop_pct": 1.0}
    assert config["prompts"]["kind"] == "text" and config["prompts"]["encoders"]["text_weights"].startswith("sha256:")
    assert config["library_version"] == ivit.__version__
    # Portable: the run config without the saver's paths (site keys written relative, ignored on load).
    assert config["config"]["model"] == ckpt.meta["config"]["model"] and config["config"]["train"] == \
        ckpt.meta["config"]["train"]
    assert config["config"]["data"]["root"] == image_root.name
    assert config["config"]["prompts"]["encoder"] == f"open_clip:local-dir:{tiny_clip_dir.name}"
    for file in folder.iterdir():
        assert str(tiny_clip_dir.parent) not in file.read_text(errors="ignore"), file
        assert file.stat().st_mode & 0o777 == 0o644, file  # a folder to share: others may read it

    card = (folder / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: instruction-vit" in front and "license: mit" in front and "datasets:" in front
    results = json.loads((run / "results.json").read_text())
    head = f"{results['all_prompts']['head']['top1']:.2f}"
    assert f"| all prompts | {head} |" in card  # the metrics table from results.json
    assert "images per split: train 12" in card and "Instruction-ViT: Multi-Modal Prompts" in card
    assert 'ivit.load_classifier("hf-hub:ORG/tiny-ivit")' in card

    images = sorted(image_root.rglob("*.png"))[:6]
    assert ivit.load_classifier(folder, "cpu").predict(images) == ivit.load_classifier(run, "cpu").predict(images)
    new = ["crimson", "navy", "lime"]  # new names: text prompts encoded again (the same up to float rounding)
    with pytest.raises(CheckpointError, match="pass|--encoder open_clip:local-dir:/path/to/tiny_clip"):
        ivit.load_classifier(folder, "cpu").predict(images, new)  # the folder's CLIP path is not followed
    encoder = f"open_clip:local-dir:{tiny_clip_dir}"
    shared, original = (ivit.load_classifier(x, "cpu", encoder=encoder).predict(images, new) for x in (folder, run))
    assert [[n for n, _ in r] for r in shared] == [[n for n, _ in r] for r in original]
    assert [p for r in shared for _, p in r] == pytest.approx([p for r in original for _, p in r], abs=1e-5)

    bank = PromptBank.load(folder)  # prompts.safetensors + prompts.json: a bank file pair
    assert bank.class_names == ckpt.class_names and bank.key == ckpt.meta["bank_key"]
    torch.testing.assert_close(bank.features["text"], state["prompt_bank.prompts"])
    with safe_open(str(folder / "prompts.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["class_names"]) == ckpt.class_names


def test_hf_hub_repo_loads_offline_in_predict_and_eval(run, folder, hf_cache, image_root):
    cached_repo(hf_cache, folder)
    image = str(image_root / "red" / "0.png")
    local = CliRunner().invoke(app, ["predict", str(run), image])
    for spec in (f"hf-hub:{REPO}", f"hf-hub:{REPO}@{HF_REV}"):
        result = CliRunner().invoke(app, ["predict", spec, image])
        assert result.exit_code == 0, result.output
        assert f"loaded hf-hub:{REPO} (revision {HF_REV[:12]}) from the Hugging Face cache" in result.output
        assert result.output.strip().splitlines()[-1] == local.output.strip().splitlines()[-1]
    result = CliRunner().invoke(app, ["eval", f"hf-hub:{REPO}"])
    assert result.exit_code == 2 and "pass data.root=FOLDER" in result.output  # a folder names no data path
    result = CliRunner().invoke(app, ["eval", f"hf-hub:{REPO}", f"data.root={image_root}"])
    assert result.exit_code == 0, result.output
    expected = json.loads((run / "results.json").read_text())["all_prompts"]["combined"]["top1"]
    assert f"{expected:.2f}" in result.output
    assert ivit.evaluate(f"hf-hub:{REPO}", overrides=[f"data.root={image_root}"])["checkpoint"].startswith(
        f"hf-hub:{REPO} (revision")

    missing = CliRunner().invoke(app, ["predict", "hf-hub:someorg/not-cached", image])
    assert missing.exit_code == 2
    assert "someorg/not-cached" in missing.output and "hf download someorg/not-cached" in missing.output
    with pytest.raises(WeightsUnavailableError, match="at revision v9"):
        load_checkpoint(f"hf-hub:{REPO}@v9")


def test_hf_hub_repo_starts_a_new_run_as_pretrained_weights_and_bank(run, folder, hf_cache, image_root,
                                                                     tiny_clip_dir, tmp_path):
    cached_repo(hf_cache, folder)
    cfg = tiny_run(image_root, tiny_clip_dir, tmp_path / "cache", "train.epochs=1",
                   f"model.pretrained=hf-hub:{REPO}", f"prompts.bank_file=hf-hub:{REPO}")
    saved = load_checkpoint(run).model_state()
    model = model_from_config(cfg, ["blue", "green", "red"], 16)
    backbone = {k: v for k, v in saved.items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())
    assert model.weights_report.source.startswith(f"hf-hub:{REPO} (revision")

    (tmp_path / "further.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "further"), "--config",
                                      str(tmp_path / "further.yaml")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "further" / "results.json").read_text())
    assert results["backbone_weights"]["format"] == "instruction-vit model folder"
    assert results["backbone_weights"]["loaded"] == results["backbone_weights"]["total"] > 0
    further = load_checkpoint(tmp_path / "further")
    assert further.meta["bank_key"] == load_checkpoint(run).meta["bank_key"]  # the folder's bank, not a new one
    assert "prompt bank: prompts.safetensors of hf-hub:someorg/tiny-ivit" in result.output

    # A reproduce cell that starts from the repo is keyed by the content of its files, not by the name.
    from instruction_vit.studies.keys import Identities
    from instruction_vit.files import file_sha256

    ids = Identities()
    assert ids.file(f"hf-hub:{REPO}") == f"sha256:{file_sha256(folder / 'model.safetensors')}"
    assert ids.file(str(folder)) == ids.file(f"hf-hub:{REPO}")


def test_push_uploads_the_saved_folder(run, monkeypatch):
    from huggingface_hub import HfApi, constants

    calls = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        calls["create"] = (repo_id, private, exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
        files = {p.name: p.read_bytes() for p in sorted(Path(folder_path).iterdir())}
        calls["upload"] = (repo_id, files)
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    result = CliRunner().invoke(app, ["push", str(run), REPO, "--private", "--license", "apache-2.0"])
    assert result.exit_code == 0, result.output
    assert calls["create"] == (REPO, True, True)
    repo_id, files = calls["upload"]
    assert repo_id == REPO and sorted(files) == list(FILES)
    assert b"license: apache-2.0" in files["README.md"] and f"hf-hub:{REPO}".encode() in files["README.md"]
    assert json.loads(files["config.json"])["class_names"] == ["blue", "green", "red"]
    assert "https://huggingface.co/someorg/tiny-ivit/commit/abc" in result.output

    def refused(self, *args, **kwargs):
        raise RuntimeError("401 Client Error: Invalid user token.\nmore lines")

    monkeypatch.setattr(HfApi, "create_repo", refused)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubUploadError, match=r"someorg/tiny-ivit .*401.*hf auth login") as info:
        ivit.push_to_hub(run, REPO)
    assert "\n" not in str(info.value)
    failed = CliRunner().invoke(app, ["push", str(run), "not-a-repo-id"])
    assert failed.exit_code == 2 and "ORG/NAME" in failed.output


def test_broken_folders_are_clear_errors(run, folder, tmp_path, image_root):
    image = str(image_root / "red" / "0.png")
    broken = shutil.copytree(folder, tmp_path / "no-weights")
    (broken / "model.safetensors").unlink()
    result = CliRunner().invoke(app, ["predict", str(broken), image])
    assert result.exit_code == 2 and "model.safetensors missing" in result.output
    other = shutil.copytree(folder, tmp_path / "other-format")
    (other / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an instruction-vit model config"):
        load_checkpoint(other)
    garbled = shutil.copytree(folder, tmp_path / "garbled")
    (garbled / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        load_checkpoint(garbled)
    no_bank = shutil.copytree(folder, tmp_path / "no-bank")
    (no_bank / "prompts.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no prompt bank"):
        PromptBank.load(no_bank)
    with pytest.raises(CheckpointError, match="hf-hub:ORG/NAME"):
        load_checkpoint("hf-hub:just-a-name")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(RunFolderError, match="choose a new folder"):
            ivit.save_pretrained(run, tmp_path / "busy", force=force)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_coop_folder_keeps_clip_by_reference_and_checks_it(tmp_path, tiny_clip_dir, image_root):
    cfg = load_config(None, [
        "data.dataset=folder", f"data.root={image_root}", "data.val_fraction=0.25", "data.img_size=32",
        "data.randaugment=null", "data.num_workers=0", "prompts.kind=none", "model.method=coop",
        f"prompts.encoder=open_clip:local-dir:{tiny_clip_dir}", f"prompts.cache_dir={tmp_path / 'cache'}",
        "model.regime=prompt", "train.epochs=1", "train.batch_size=8", "train.lr=0.01", "train.mixup=0",
        "train.cutmix=0"])
    train(cfg, tmp_path / "coop")
    folder = ivit.save_pretrained(tmp_path / "coop", tmp_path / "coop-folder")
    assert not (folder / "prompts.safetensors").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["external"]["encoder"] == f"open_clip:local-dir:{tiny_clip_dir.name}"  # no saver's path
    prefixes = tuple(config["external"]["prefixes"])  # CLIP's frozen parts, kept by reference
    assert config["external"]["weights_id"].startswith("sha256:") and prefixes
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert "prompt_embed.context" in f.keys() and not [k for k in f.keys() if k.startswith(prefixes)]
    images = sorted(image_root.rglob("*.png"))[:4]
    with pytest.raises(CheckpointError, match="--encoder open_clip:local-dir:/path/to/"):
        ivit.load_classifier(folder, "cpu")  # its CLIP is a folder of the saver's machine: not followed
    encoder = f"open_clip:local-dir:{tiny_clip_dir}"
    assert ivit.load_classifier(folder, "cpu", encoder=encoder).predict(images) == \
        ivit.load_classifier(tmp_path / "coop", "cpu").predict(images)
    config["external"]["weights_id"] = "sha256:other"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="trained over encoder weights 'sha256:other'"):
        ivit.load_classifier(folder, "cpu", encoder=encoder)

