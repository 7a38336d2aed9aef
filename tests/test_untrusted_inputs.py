"""Files and input from others (issue: nothing runs, nothing escapes, nothing half-written): each case that gave a
wrong model, a traceback or a write outside its folder on an earlier main is now right, or one line and exit 2."""

import pytest

from instruction_vit.config import load_config
from instruction_vit.errors import ConfigError
from instruction_vit.model import build_model


def test_a_flow_mapping_without_spaces_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"write \{patch_size: 8, depth: 1\}"):
        load_config(None, ["model.backbone_kwargs={patch_size:8, depth:1}"])
    with pytest.raises(ConfigError, match="model.options"):
        load_config(None, ["model.method=coop", "prompts.kind=none", "model.options={n:4}"])
    assert load_config(None, ["model.backbone_kwargs={patch_size: 8, depth: 1}"]).model.backbone_kwargs == \
        {"patch_size": 8, "depth": 1}


def test_an_unknown_backbone_argument_is_one_line_naming_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"takes no depht \(did you mean depth\?\); it takes: .*embed_dim, depth"):
        build_model("vit_tiny_patch16_224", 3, None, depht=1)


# -- model folders are data ---------------------------------------------------------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from helpers import colour_folder, tiny_run  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import instruction_vit as ivit  # noqa: E402
from instruction_vit.artifacts.checkpoint import CheckpointError, load_checkpoint
from instruction_vit.cli import app  # noqa: E402
from instruction_vit.errors import DataError, DiskFullError, RunFolderError, UserError  # noqa: E402
from instruction_vit.prompts import PromptBank  # noqa: E402
from instruction_vit.training import train

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return colour_folder(tmp_path_factory.mktemp("data") / "images", per_class=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_root, tiny_clip_dir):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_run(image_root, tiny_clip_dir, out.parent / "cache", "train.epochs=1"), out)
    return out


@pytest.fixture(scope="module")
def folder(run, tmp_path_factory):
    return ivit.save_pretrained(run, tmp_path_factory.mktemp("shared") / "model")


def hostile(folder: Path, tmp_path: Path, change) -> Path:
    """A copy of ``folder`` whose config.json ``change(config)`` edited."""
    copy = shutil.copytree(folder, tmp_path / f"hostile-{len(list(tmp_path.iterdir()))}")
    config = json.loads((copy / "config.json").read_text())
    change(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_site_keys_in_a_folder_are_not_honoured(folder, tmp_path, image_root, tiny_clip_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # this machine's default caches go here
    outside = tmp_path / "outside"

    def site(config):
        config["config"]["prompts"]["cache_dir"] = str(outside / "cache")
        config["config"]["data"]["store_dir"] = "../../escaped-store"
        config["config"]["data"]["root"] = "/etc"
        config["config"]["prompts"]["bank_file"] = "/etc/passwd"
        config["config"]["model"]["pretrained"] = str(outside / "weights.safetensors")

    copy = hostile(folder, tmp_path, site)
    ckpt = load_checkpoint(copy)
    defaults = ivit.Config()
    assert ckpt.config.prompts.cache_dir == defaults.prompts.cache_dir and ckpt.config.data.root == defaults.data.root
    assert ckpt.config.prompts.bank_file is None and ckpt.config.model.pretrained is None
    images = sorted(image_root.rglob("*.png"))[:2]
    ranked = ivit.load_classifier(copy, "cpu", encoder=f"open_clip:local-dir:{tiny_clip_dir}").predict(
        images, ["crimson", "navy"])
    assert len(ranked) == 2 and not outside.exists() and not (tmp_path.parent.parent / "escaped-store").exists()


def test_files_named_by_a_folder_are_not_read_and_not_quoted(folder, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the-secret-first-line {}\n")
    for key in ("templates", "descriptions"):
        copy = hostile(folder, tmp_path, lambda c, k=key: c["config"]["prompts"].__setitem__(k, str(secret)))
        with pytest.raises(CheckpointError, match=f"names {key} by a file") as err:
            load_checkpoint(copy)
        assert "the-secret" not in str(err.value)
    # Templates read from a file by the saver's run are carried inline.
    assert isinstance(load_checkpoint(folder).config.prompts.templates, (str, list))


@pytest.mark.parametrize("where", ["folder", "hf-hub"])
def test_a_torchscript_payload_named_by_a_folder_never_runs(folder, tmp_path, image_root, hf_cache, where):
    """A model folder (local, or an hf-hub: repo in a filled cache) whose config.json names an armed TorchScript
    archive as its CLIP: predicting with new class names (which needs the encoder) writes no marker and stops in one
    line naming --encoder; the archive is not even opened."""
    from helpers import armed_archive, fill_hf_cache

    archive, marker = armed_archive(tmp_path)
    copy = hostile(folder, tmp_path, lambda c: c["config"]["prompts"].__setitem__(
        "encoder", f"open_clip:tiny-openai@{archive}"))
    source = str(copy)
    if where == "hf-hub":
        fill_hf_cache(hf_cache, "someorg/hostile", {f.name: f for f in copy.iterdir()})
        source = "hf-hub:someorg/hostile"
    image = str(image_root / "red" / "0.png")
    for args in (["--classes", "crimson, navy"], []):
        result = CliRunner().invoke(app, ["predict", source, image, *args])
        assert not marker.exists(), "code in the archive ran"
        if args:
            assert result.exit_code == 2 and "--encoder open_clip:tiny-openai@/path/to/tiny-openai.pt" in \
                result.output, result.output
        else:  # its own classes need no encoder: it predicts
            assert result.exit_code == 0, result.output


def test_sizes_that_do_not_fit_are_refused_before_the_model_is_built(folder, tmp_path, monkeypatch):
    from instruction_vit.artifacts import checkpoint

    def huge(config):
        config["config"]["model"]["backbone_kwargs"].update(embed_dim=2048, depth=24, num_heads=16)

    copy = hostile(folder, tmp_path, huge)
    monkeypatch.setattr(checkpoint, "model_from_config", lambda *a, **k: pytest.fail("the model was allocated"))
    with pytest.raises(CheckpointError, match="do not fit the model its config describes"):
        ivit.load_classifier(copy, "cpu")


@pytest.mark.parametrize("names", [{"a": 1}, ["red", "red", "blue"], ["red", ""], ["red", "green"]])
def test_wrong_class_names_are_one_line(folder, tmp_path, names):
    copy = hostile(folder, tmp_path, lambda c: c.__setitem__("class_names", names))
    result = CliRunner().invoke(app, ["predict", str(copy), __file__])
    assert result.exit_code == 2 and "Traceback" not in result.output and "error:" in result.output, result.output


def test_deeply_nested_or_huge_json_is_one_line(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "nested")
    (copy / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(copy)
    (copy / "prompts.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(DataError, match="not valid JSON"):
        PromptBank.load(copy)


def test_a_pickle_named_safetensors_is_one_line(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "pickled")
    torch.save({"prompts": torch.zeros(3, 16)}, copy / "prompts.safetensors")
    with pytest.raises(DataError, match="not a readable safetensors file") as err:
        PromptBank.load(copy)
    assert "Traceback" not in str(err.value)
    torch.save({"x": torch.zeros(1)}, copy / "model.safetensors")
    result = CliRunner().invoke(app, ["predict", str(copy), __file__])
    assert result.exit_code == 2 and "model.safetensors is not a readable safetensors file" in result.output


def test_a_malformed_safetensors_file_as_starting_weights_is_one_line(tmp_path, image_root, tiny_clip_dir):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    cfg = tiny_run(image_root, tiny_clip_dir, tmp_path / "cache", "train.epochs=1", f"model.pretrained={bad}")
    with pytest.raises(UserError, match="cannot read it as .safetensors"):
        train(cfg, tmp_path / "out")


# -- whole or nothing on disk -------------------------------------------------------------------------------------
def test_save_refuses_a_model_folder_without_force_and_is_byte_identical(run, folder, tmp_path):
    target = shutil.copytree(folder, tmp_path / folder.name)  # the card names the folder: the same name
    (target / "config.json").write_text("{}")  # changed since: the save must really write
    with pytest.raises(RunFolderError, match="--force"):
        ivit.save_pretrained(run, target)
    ivit.save_pretrained(run, target, force=True)
    for f in folder.iterdir():
        assert (target / f.name).read_bytes() == f.read_bytes(), f.name  # saving twice gives the same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # nothing left beside it


KILLER = """
import os, signal, sys
sys.path.insert(0, {src!r})
import safetensors.torch, pathlib
import instruction_vit as ivit
calls = [0]
def killing(original):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == {at}:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapped
import instruction_vit.artifacts.sharing as hub
hub.save_file = killing(hub.save_file)
pathlib.Path.write_text = killing(pathlib.Path.write_text)
import instruction_vit.files as files
files.os.replace = killing(files.os.replace)
files._exchange = killing(files._exchange)
ivit.save_pretrained({run!r}, {target!r}, force=True)
"""


def test_a_save_killed_at_any_moment_leaves_one_whole_folder(run, folder, tmp_path, image_root, tiny_clip_dir):
    other = tmp_path / "run2"  # a second run: its folder differs from the first's in every file
    train(tiny_run(image_root, tiny_clip_dir, tmp_path / "cache", "train.epochs=1", "train.seed=7"), other)
    new = ivit.save_pretrained(other, tmp_path / "reference" / folder.name)  # the card names the folder
    old = {f.name: f.read_bytes() for f in folder.iterdir()}
    fresh = {f.name: f.read_bytes() for f in new.iterdir()}
    killed = 0
    for at in range(1, 8):
        target = shutil.copytree(folder, tmp_path / f"at-{at}" / folder.name)
        code = KILLER.format(src=str(SRC), at=at, run=str(other), target=str(target))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode in (0, -9), done.stderr[-2000:]
        killed += done.returncode == -9
        found = {f.name: f.read_bytes() for f in target.iterdir()}
        assert found in (old, fresh), f"a mix after a kill at call {at}"
        ivit.save_pretrained(other, target, force=True)  # the next write removes what the killed one left
        assert [p.name for p in target.parent.iterdir()] == [folder.name]
    assert killed >= 6  # every file, and the swap itself

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where it cannot be mounted)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()[:100]}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(run, small_disk, tmp_path):
    from instruction_vit.artifacts.checkpoint import save_checkpoint

    ckpt = load_checkpoint(run)
    model = ckpt.build_model()
    path = save_checkpoint(small_disk / "last.safetensors", model, ckpt.meta)
    before = path.read_bytes()
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - len(before) // 2))  # no room for a second copy
    with pytest.raises(DiskFullError, match=r"no space left .* last.safetensors in .*small-disk \(\d+ MiB free\)"):
        save_checkpoint(path, model, ckpt.meta)
    assert path.read_bytes() == before and [p.name for p in small_disk.iterdir()] == ["filler", "last.safetensors"]
    result = CliRunner().invoke(app, ["save", str(run), str(small_disk / "shared")])
    assert result.exit_code == 2 and "no space left" in result.output and not (small_disk / "shared").exists()


def test_written_files_have_ordinary_permissions(run, folder):
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    for f in [*(run / "checkpoints").iterdir(), run / "config.yaml", *folder.iterdir()]:
        assert f.stat().st_mode & 0o777 in (expected, 0o644), f


# -- nothing quietly ignored --------------------------------------------------------------------------------------
def test_empty_or_blank_class_names_are_refused(run, image_root):
    image = str(image_root / "red" / "0.png")
    for given in ("", " , ,"):
        result = CliRunner().invoke(app, ["predict", str(run), image, "--classes", given])
        assert result.exit_code == 2 and "--classes names no classes" in result.output, result.output
    classifier = ivit.load_classifier(run, "cpu")
    for names, message in (([""], "is empty"), ([], "no class names"), (["a", "a"], "given twice"),
                           ("cat", "a list of names")):
        with pytest.raises(ConfigError, match=message):
            classifier.predict([image], names)


def test_a_class_without_evaluation_images_stops_training_unless_allowed(tmp_path, tiny_clip_dir):
    root = colour_folder(tmp_path / "images", per_class=8)
    for f in sorted((root / "blue").iterdir())[1:]:
        f.unlink()  # one blue image: it goes to training, none to validation or test
    base = ("train.epochs=1",)
    with pytest.raises(DataError, match=r"without val images \(blue\).*data.missing_eval_classes=allow"):
        train(tiny_run(root, tiny_clip_dir, tmp_path / "cache", *base), tmp_path / "refused")
    results = train(tiny_run(root, tiny_clip_dir, tmp_path / "cache", *base, "data.missing_eval_classes=allow"),
                    tmp_path / "allowed")
    assert results["data"]["classes_without_eval_images"] == {"val": ["blue"], "test": ["blue"]}


def test_a_warm_up_as_long_as_the_run_is_said(run, tmp_path, image_root, tiny_clip_dir, caplog):
    caplog.set_level("INFO", logger="instruction_vit")
    train(tiny_run(image_root, tiny_clip_dir, tmp_path / "cache", "train.epochs=1", "train.warmup_epochs=5"),
          tmp_path / "warm")
    assert "train.warmup_epochs=5 is not shorter than train.epochs=1" in caplog.text


def test_a_class_folder_linking_to_the_root_or_another_class_is_refused(tmp_path):
    from instruction_vit.data import image_folder

    root = colour_folder(tmp_path / "images", per_class=2)
    (root / "zzz-everything").symlink_to(root)
    with pytest.raises(DataError, match="is a link to the data root"):
        image_folder(root)
    (root / "zzz-everything").unlink()
    (root / "zzz-more-red").symlink_to(root / "red")
    with pytest.raises(DataError, match="links into class folder"):
        image_folder(root)
    (root / "zzz-more-red").unlink()
    elsewhere = colour_folder(tmp_path / "elsewhere", per_class=2, colours={"teal": (0, 128, 128)})
    (root / "teal").symlink_to(elsewhere / "teal")  # a class kept elsewhere: fine
    assert image_folder(root).class_names == ["blue", "green", "red", "teal"]
