"""The ivit command line: a few-second train -> eval -> predict, and bad input ending in clear errors."""

import numpy as np
import pytest
from PIL import Image
from helpers import colour_folder
from typer.testing import CliRunner

from instruction_vit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("cli")
    colour_folder(root / "images", per_class=12)
    for name in ("red", "green"):  # other data: two of the three classes
        (root / "two" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(root / "two" / name / f"{i}.png")
    config = root / "run.yaml"
    config.write_text(f"""
data: {{dataset: folder, root: {root / 'images'}, val_fraction: 0.25, img_size: 16, randaugment: null, num_workers: 0}}
prompts: {{kind: text, encoder: "open_clip:local-dir:{tiny_clip_dir}", templates: photo, select_k: 1,
          cache_dir: {root / 'cache'}}}
model: {{backbone_kwargs: {{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}}}}
train: {{epochs: 2, batch_size: 8, lr: 0.003, warmup_epochs: 0.5, mixup: 0, cutmix: 0}}
""")
    result = runner.invoke(app, ["train", "--out", str(root / "run"), "--config", str(config), "train.seed=1"])
    assert result.exit_code == 0, result.output
    return root


def test_train_writes_a_run_and_prints_results(setup):
    assert (setup / "run" / "checkpoints" / "best.safetensors").is_file()
    assert "seed: 1" in (setup / "run" / "config.yaml").read_text()


def test_eval_prints_and_writes(setup):
    result = runner.invoke(app, ["eval", str(setup / "run"), "--select-k", "1", "--out", str(setup / "eval")])
    assert result.exit_code == 0, result.output
    assert "combined" in result.output and (setup / "eval" / "confusion_test.png").is_file()


def test_predict_known_and_new_classes(setup):
    result = runner.invoke(app, ["predict", str(setup / "run"), str(setup / "images" / "red"), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0] == "3 classes; the checkpoint's classes and prompts"
    assert len(lines) == 13 and all(("red" in line or "green" in line or "blue" in line) for line in lines[1:])
    result = runner.invoke(app, ["predict", str(setup / "run"), str(setup / "images" / "red" / "0.png"),
                                 "--classes", "crimson,emerald,navy,black"])
    assert result.exit_code == 0, result.output
    assert any(name in result.output for name in ("crimson", "emerald", "navy", "black"))


def test_prompts_build_and_inspect(setup, tiny_clip_dir):
    bank = setup / "bank"
    result = runner.invoke(app, ["prompts", "build", "--out", str(bank), "--classes", "cat,dog,owl",
                                 "--encoder", f"open_clip:local-dir:{tiny_clip_dir}", "--templates", "photo"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["prompts", "inspect", str(bank.with_suffix(".safetensors"))])
    assert result.exit_code == 0 and "text prompts for 3 classes" in result.output and "closest" in result.output


@pytest.mark.parametrize("args, message", [
    (["train", "--out", "{root}/x", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train", "--out", "{root}/run", "--config", "{root}/run.yaml"], "already exists"),
    (["train", "--out", "{root}/nothing", "--resume"], "nothing to resume"),
    (["train", "--out", "{root}/hub", "--config", "{root}/run.yaml", "model.pretrained=timm"],
     "could not fetch pretrained weights"),
    (["eval", "{root}/missing.safetensors"], "checkpoint not found"),
    (["eval", "{root}/run.yaml"], "not a readable safetensors"),
    (["eval", "{root}/run", "data.root={root}/two"], "the checkpoint has 3 classes but the data has 2"),
    (["eval", "{root}/run", "train.lr=1"], "only data.* overrides"),
    (["predict", "{root}/run", "{root}/nope.png"], "no such image"),
    (["predict", "{root}/run", "{root}/run.yaml"], "cannot read image"),
    (["prompts", "build", "--out", "{root}/b", "--classes", "a,b", "--templates", "nope"], "unknown template set"),
    (["prompts", "build", "--out", "{root}/b", "--classes", "a,a"], "duplicate class names"),
])
def test_bad_input_is_one_clear_line_and_exit_2(setup, args, message):
    result = runner.invoke(app, [a.format(root=setup) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ")  # one line, however long the paths in it, after what the run logged
    assert not any(line.startswith("error: ") for line in lines[:-1])
    if args[0] != "train":
        assert len(lines) == 1


def test_demo_refuses_a_folder_that_is_not_an_earlier_demo(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "holds no earlier demo" in " ".join(result.output.split())
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_log_line_is_printed_once_when_the_root_logger_has_a_handler(setup):
    """Another package's logging.basicConfig gave the root logger a handler: the CLI's lines were printed twice (as
    its own line and again as INFO:instruction_vit...). Its logger no longer propagates."""
    import logging

    reached = []

    class Root(logging.Handler):
        def emit(self, record):
            reached.append(record.name)

    handler, root = Root(), logging.getLogger()
    root.addHandler(handler)
    try:
        result = runner.invoke(app, ["predict", str(setup / "run"), str(setup / "images" / "red" / "0.png"),
                                     "--classes", "crimson,navy"])
        assert result.exit_code == 0, result.output
        assert "prompt encoder: open_clip" in result.output  # printed by the CLI ...
        assert not [name for name in reached if name.startswith("instruction_vit")]  # ... and not again by the root
    finally:
        root.removeHandler(handler)
        logging.getLogger("instruction_vit").propagate = True  # as the other tests (caplog) expect
