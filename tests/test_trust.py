"""Paths that used to give a wrong result with exit status 0: each is now right or a clear stop."""

import json

import click
import pytest
import typer
from helpers import colour_folder, tiny_run
from typer.testing import CliRunner

from instruction_vit.cli import app
from instruction_vit.config import load_config
from instruction_vit.training import train
from instruction_vit.training.loop import RunFolderError

runner = CliRunner()


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_help_prints():
    paths = list(_commands(typer.main.get_command(app)))
    assert ("reproduce",) in paths and ("prompts", "build") in paths and ("data", "check") in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return colour_folder(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture
def cfg(image_root, tiny_clip_dir, tmp_path):
    return tiny_run(image_root, tiny_clip_dir, tmp_path / "cache", "train.epochs=2")


def _write(cfg, path):
    path.write_text(cfg.to_yaml())
    return path


def test_a_run_that_failed_before_its_first_checkpoint_is_retried_without_force(cfg, tmp_path):
    out = tmp_path / "run"
    bad = load_config(None, [f"data.root={tmp_path / 'nowhere'}"], base=cfg.to_dict())
    result = runner.invoke(app, ["train", "--out", str(out), "--config", str(_write(bad, tmp_path / "bad.yaml"))])
    assert result.exit_code == 2 and (out / "config.yaml").is_file()
    result = runner.invoke(app, ["train", "--out", str(out), "--config", str(_write(cfg, tmp_path / "good.yaml"))])
    assert result.exit_code == 0, result.output
    assert load_config(out / "config.yaml") == cfg
    (out / "notes.txt").write_text("a finished run with a file of mine: never overwritten without --force")
    with pytest.raises(RunFolderError, match="already exists"):
        train(cfg, out)


def test_resume_honours_safe_overrides_and_refuses_the_others(cfg, tmp_path):
    out = tmp_path / "run"
    assert train(cfg, out, stop_after_epochs=1) == {"stopped_after_epoch": 1}
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "train.epochs=30"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "train.epochs: 2 -> 30" in message and "model.pretrained=RUN/checkpoints/last.safetensors" in message
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "train.log_every=7"])
    assert result.exit_code == 0, result.output
    assert "resuming with train.log_every: 50 -> 7" in result.output
    assert load_config(out / "config.yaml").train.log_every == 7
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--config", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2 and "drop --config" in result.output


def test_results_record_the_splits_the_weights_and_the_prompts(cfg, tmp_path, tiny_vit_kwargs, caplog):
    import hashlib

    import timm
    from safetensors.torch import save_file

    kwargs = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16}
    source = timm.create_model("vit_tiny_patch16_224", num_classes=3, **kwargs)
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    cfg = load_config(None, [f"model.pretrained={weights}"], base=cfg.to_dict())
    with caplog.at_level("INFO", logger="instruction_vit"):
        results = train(cfg, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("data: folder at ") and "seeded split (seed 0" in line and "3 classes" in line
               for line in lines), lines
    assert any(line.startswith("loaded ") and f"from {weights}" in line for line in lines), lines
    assert any(line.startswith("prompts: text, 3 classes, from open_clip:local-dir:") for line in lines), lines
    data = results["data"]
    assert data["source"] == "seeded" and data["num_classes"] == 3
    assert sum(data["sizes"].values()) == 48
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert results["backbone_weights"]["sha256"] == sha
    assert results["backbone_weights"]["loaded"] == results["backbone_weights"]["total"]
    assert results["prompt_bank"]["kind"] == "text" and results["prompt_bank"]["templates"]
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results


def test_select_k_at_least_the_class_count_is_said(cfg, tmp_path, caplog):
    cfg.prompts.select_k = 5
    cfg.train.epochs = 1
    with caplog.at_level("INFO", logger="instruction_vit"):
        train(cfg, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records]
    assert any("prompts.select_k=5 >= 3 classes" in line for line in lines)


def test_epoch_line_shows_slow_throughput():
    from instruction_vit.training.logs import _rate

    assert _rate(0.42) == "0.42" and _rate(12.345) == "12.3" and _rate(2413.4) == "2,413"


@pytest.fixture(scope="module")
def image_run(image_root, tiny_clip_dir, tmp_path_factory):
    """A run with image prompts (the tiny CLIP: one image-text space)."""
    tmp = tmp_path_factory.mktemp("image_run")
    cfg = tiny_run(image_root, tiny_clip_dir, tmp / "cache", "prompts.kind=image", "train.epochs=1")
    train(cfg, tmp / "run")
    return tmp


def test_predict_new_classes_on_an_image_prompt_run_says_what_it_uses(image_run, image_root):
    image = str(image_root / "red" / "0.png")
    result = runner.invoke(app, ["predict", str(image_run / "run"), image, "--classes", "crimson,lime,navy,coal"])
    assert result.exit_code == 0, result.output
    assert "text prompts from open_clip:local-dir:" in result.output
    assert "in place of the checkpoint's image prompts" in result.output
    examples = colour_folder(image_run / "examples", per_class=2,
                             colours={"coal": (20, 20, 20), "snow": (240, 240, 240)})
    result = runner.invoke(app, ["predict", str(image_run / "run"), image, "--examples", str(examples),
                                 "--top-k", "5"])
    assert result.exit_code == 0, result.output
    assert "image prompts from open_clip:local-dir:" in result.output and str(examples) in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.count("%") == 2  # top-5 of two classes shows both, no nan


def test_prompts_build_folder_draws_image_prompts_from_the_training_split(image_run, image_root, tiny_clip_dir):
    from instruction_vit.config import DataConfig
    from instruction_vit.data import load_splits

    out = image_run / "bank"
    result = runner.invoke(app, ["prompts", "build", "--out", str(out), "--folder", str(image_root), "--kind", "image",
                                 "--per-class", "20", "--encoder", f"open_clip:local-dir:{tiny_clip_dir}"])
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    used = {i for ids in meta["image_ids"] for i in ids}
    splits = load_splits(DataConfig(dataset="folder", root=str(image_root)))
    held_out = {splits[s].image_id(i) for s in ("val", "test") for i in range(len(splits[s]))}
    train_ids = {splits["train"].image_id(i) for i in range(len(splits["train"]))}
    assert used == train_ids and not used & held_out and meta["image_split"] == "train"


def test_an_unreadable_image_stops_the_run_or_is_skipped_and_counted(cfg, tmp_path, caplog):
    import shutil

    from instruction_vit.data import DataError

    root = tmp_path / "images"
    shutil.copytree(cfg.data.root, root)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cfg = load_config(None, [f"data.root={root}", "train.epochs=1"], base=cfg.to_dict())
    with pytest.raises(DataError, match=r"broken\.png.*data\.bad_images=skip"):
        train(cfg, tmp_path / "strict")
    assert not (tmp_path / "strict" / "checkpoints").exists()  # stopped before any training
    cfg.data.bad_images = "skip"
    with caplog.at_level("INFO", logger="instruction_vit"):
        results = train(cfg, tmp_path / "lenient")
    lines = [r.getMessage() for r in caplog.records]
    skipped = results["data"]["skipped_images"]
    assert skipped["mode"] == "skip" and skipped["count"] == 1 and skipped["checked"] == 48 + 1
    files = [item["file"] for items in skipped["files"].values() for item in items]
    assert len(set(files)) == 1 and files[0].endswith("broken.png")
    assert any("1 unreadable image(s) skipped" in line for line in lines), lines


def test_weights_that_do_not_fit_end_in_one_line_and_exit_2(cfg, tmp_path):
    import timm
    from safetensors.torch import save_file

    wider = timm.create_model("vit_tiny_patch16_224", num_classes=3, patch_size=8, embed_dim=48, depth=1,
                              num_heads=2, img_size=16)
    path = tmp_path / "vit_s.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in wider.state_dict().items()}, path)
    config = _write(load_config(None, [f"model.pretrained={path}"], base=cfg.to_dict()), tmp_path / "run.yaml")
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("error: ") and "weights do not fit vit_tiny_patch16_224" in error
    assert "of another shape" in error and "model.pretrained=null" in error


def test_bar_chart_gives_each_method_its_own_colour(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from instruction_vit.studies.report import bar_chart

    colours = []
    real_bar = Axes.bar
    monkeypatch.setattr(Axes, "bar", lambda self, *a, **k: colours.append(k.get("color")) or real_bar(self, *a, **k))
    records = [{"column": "c", "metric": "top-1", "row": f"r{i}", "label": f"method {i}", "values": [50.0 + i],
                "paper": None} for i in range(14)]  # Table 1 has 14 rows: more than one cycle of 10 colours
    bar_chart(records, tmp_path / "chart.png")
    assert len(colours) == 14 and len(set(colours)) == 14


def test_an_error_quoting_another_ends_its_sentence_once():
    from instruction_vit.cli import _one_sentence_end

    assert _one_sentence_end("could not load x: no such file.. Offline, pass a file.") == \
        "could not load x: no such file. Offline, pass a file."
    assert _one_sentence_end("classes a, b, ... and more...") == "classes a, b, ... and more..."


def test_prompt_encoding_shows_progress(tiny_clip_dir):
    """The library reports long steps to the reporter its caller installed; it is handed no progress object."""
    from instruction_vit.progress import reporting
    from instruction_vit.prompts import build_prompt_bank

    class Recorder:
        def __init__(self):
            self.tasks, self.done, self.stopped = {}, {}, []

        def start(self, description, total):
            self.tasks[description], self.done[description] = total, 0
            return description

        def advance(self, handle, amount=1, description=None):
            self.done[handle] += amount

        def stop(self, handle):
            self.stopped.append(handle)

    recorder = Recorder()
    names = [f"class {i}" for i in range(5)]
    with reporting(recorder):
        build_prompt_bank("text", names, text_encoder=f"open_clip:local-dir:{tiny_clip_dir}",
                          templates=["a photo of a {}.", "a {}."])
    (task,) = recorder.tasks
    assert "encoding 10 prompt texts" in task and recorder.tasks[task] == recorder.done[task] == 10
    assert recorder.stopped == [task]
    build_prompt_bank("text", names[:2], text_encoder=f"open_clip:local-dir:{tiny_clip_dir}")  # no reporter: quiet
    assert len(recorder.tasks) == 1


def test_a_bank_file_with_test_images_or_another_encoder_is_refused(image_run, image_root, tiny_clip_dir, tmp_path):
    bank = image_run / "bank_default_split"
    result = runner.invoke(app, ["prompts", "build", "--out", str(bank), "--folder", str(image_root), "--kind", "image",
                                 "--per-class", "20", "--encoder", f"open_clip:local-dir:{tiny_clip_dir}"])
    assert result.exit_code == 0, result.output
    cfg = load_config(image_run / "run" / "config.yaml", [f"prompts.bank_file={bank}"])  # val_fraction 0.25, not 0.1
    with pytest.raises(ValueError, match="not in this run's training split.*--val-fraction 0.25"):
        train(cfg, tmp_path / "run")


def test_resume_refuses_prompts_that_changed_and_keeps_its_weights(cfg, tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\n")
    cfg.prompts.templates = str(templates)
    out = tmp_path / "run"
    train(cfg, out, stop_after_epochs=1)
    templates.write_text("a drawing of a {}.\n")
    with pytest.raises(RunFolderError, match="prompts of .* have changed since it started"):
        train(cfg, out, resume=True)


def test_new_class_prompts_must_come_from_the_runs_encoder(image_run):
    from instruction_vit.artifacts.checkpoint import CheckpointError
    from instruction_vit.artifacts.classifier import Classifier

    classifier = Classifier.load(image_run / "run", "cpu")
    assert classifier.checkpoint.meta["bank_encoders"]["image_weights"].startswith("sha256:")
    classifier.checkpoint.meta["bank_encoders"]["text_weights"] = "sha256:other+quick_gelu"
    with pytest.raises(CheckpointError, match="sha256:other.*point prompts.encoder"):
        classifier.class_prompts(["crimson", "navy"])


def test_caches_of_images_know_where_the_images_are(tmp_path):
    from instruction_vit.data import image_folder
    from instruction_vit.data.image_store import store_key

    a = colour_folder(tmp_path / "a", per_class=2)
    b = colour_folder(tmp_path / "b", per_class=2)  # the same relative paths, another copy
    assert [image_folder(a).image_id(i) for i in range(6)] == [image_folder(b).image_id(i) for i in range(6)]
    assert store_key(image_folder(a), 32) != store_key(image_folder(b), 32)


def test_an_error_raised_in_a_loader_worker_is_still_one_line():
    from instruction_vit.cli import _one_line
    from instruction_vit.data import DataError

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\n    raise DataError(...)\n"
                        "instruction_vit.data.datasets.DataError: cannot read image /d/red/3.jpg: broken data stream\n")
    assert _one_line(wrapped) == "cannot read image /d/red/3.jpg: broken data stream"
    assert _one_line(DataError("plain message.")) == "plain message."


def test_predict_goes_on_past_an_unreadable_image_and_says_so(image_run, image_root, tmp_path):
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(image_root / "red", folder)
    (folder / "zz_broken.png").write_text("not an image")
    result = runner.invoke(app, ["predict", str(image_run / "run"), str(folder)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert sum(line.endswith("%") for line in lines) == 16  # every readable image predicted
    assert any("zz_broken.png: unreadable" in line for line in lines)
    assert lines[-1] == "error: 1 of 17 images could not be read (listed above)"


def test_starting_from_a_run_checkpoint_records_which(image_run, cfg, tmp_path):
    import hashlib

    best = image_run / "run" / "checkpoints" / "best.safetensors"
    cfg = load_config(None, [f"model.pretrained={best}", "train.epochs=1"], base=cfg.to_dict())
    results = train(cfg, tmp_path / "run")
    record = results["backbone_weights"]
    assert record["source"] == str(best) and record["format"] == "instruction-vit checkpoint"
    assert record["sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
