"""New class names after training: cross-data-set transfer (evaluate columns) and base-to-novel for CLIP prompt
learners, on tiny models in the real formats (a tiny open_clip CLIP, a one-block ViT) and tiny colour folders."""

import json

import pytest
import yaml
from helpers import COLOURS, colour_folder
from typer.testing import CliRunner

from instruction_vit.cli import app
from instruction_vit.config import ConfigError, load_config
from instruction_vit.studies.grid import cells
from instruction_vit.studies.measurements import collect
from instruction_vit.studies.specs import load_spec

runner = CliRunner()
TARGET = {"crimson": COLOURS["red"], "lime": COLOURS["green"], "navy": COLOURS["blue"], "coal": (90, 90, 90)}


def _tiny_spec(tmp_path, clip_dir):
    source = colour_folder(tmp_path / "source", per_class=12)
    target = colour_folder(tmp_path / "target", per_class=8, colours=TARGET)
    spec = {
        "name": "tinyx", "seeds": [1],
        "base": {"data": {"dataset": "folder", "root": str(source), "val_fraction": 0.25, "img_size": 32,
                          "num_workers": 0, "randaugment": None},
                 "prompts": {"encoder": f"open_clip:local-dir:{clip_dir}", "templates": "photo",
                             "cache_dir": str(tmp_path / "cache")},
                 "model": {"backbone_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}},
                 "train": {"epochs": 1, "batch_size": 8, "lr": 0.003, "warmup_epochs": 0.5, "mixup": 0, "cutmix": 0}},
        "columns": {"source": {},
                    "target": {"evaluate": {"from": "source"}, "config": {"data": {"root": str(target)}}},
                    "average": {"average": ["target"]}},
        "rows": {"vit": {"label": "ViT", "config": {"prompts": {"kind": "none"}}},
                 "ours": {"label": "Ours text", "config": {"prompts": {"kind": "text"}}},
                 "ours_image": {"label": "Ours image", "config": {"prompts": {"kind": "image"}}},
                 "coop": {"label": "CoOp", "config": {"prompts": {"kind": "none"},
                                                      "model": {"method": "coop", "regime": "prompt"}}}},
    }
    path = tmp_path / "tinyx.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_crossdata_trains_on_the_source_and_evaluates_on_the_targets_names(tmp_path, tiny_clip_dir):
    spec_path, runs = _tiny_spec(tmp_path, tiny_clip_dir), tmp_path / "runs"
    early = runner.invoke(app, ["reproduce", f"{spec_path}/target", "--runs", str(runs)])
    message = " ".join(early.output.split())
    assert early.exit_code == 2 and "evaluates the model of tinyx/source/vit/seed1, which is not done" in message
    assert "run `ivit reproduce tinyx/source` first" in message and not (runs / "tinyx" / "target").exists()

    result = runner.invoke(app, ["reproduce", str(spec_path), "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    target = runs / "tinyx" / "target"
    coop = json.loads((target / "coop" / "seed1" / "results.json").read_text())
    assert coop["transfer"]["class_names"] == sorted(TARGET)  # the target's own names, not the source's three
    assert coop["transfer"]["source"]["cell"] == "tinyx/source/coop/seed1" and "coop" in coop["transfer"]["how"]
    ours = json.loads((target / "ours" / "seed1" / "results.json").read_text())
    image = json.loads((target / "ours_image" / "seed1" / "results.json").read_text())
    assert ours["transfer"]["how"].startswith("text prompts for the new class names")
    assert image["transfer"]["how"].startswith("image prompts for the new class names")
    assert len(ours["transfer"]["per_class"]) == 4
    record = json.loads((target / "vit" / "seed1" / "cell.json").read_text())
    assert record["status"] == "not_run" and "plain model" in record["reason"]
    assert record["settings"]["source"]["cell"] == "source/vit/seed1"

    # The number is what the source model predicts among the target's names (the library's own predict path).
    from instruction_vit.artifacts.classifier import Classifier
    from instruction_vit.data.loaders import run_splits

    test = run_splits(load_config(None, [f"data.root={tmp_path / 'target'}", "data.dataset=folder",
                                         "data.val_fraction=0.25"]))[0]["test"]
    classifier = Classifier.load(runs / "tinyx" / "source" / "coop" / "seed1", "cpu")
    ranked = classifier.predict([test.load_image(i) for i in range(len(test))], classes=test.class_names, top_k=1)
    hits = [r[0][0] == test.class_names[label] for r, label in zip(ranked, test.labels)]
    assert coop["top1"] == pytest.approx(100 * sum(hits) / len(hits), abs=1e-3)

    again = runner.invoke(app, ["reproduce", str(spec_path), "--runs", str(runs)])
    assert again.exit_code == 0 and again.output.count(": done") == 7  # the plain ViT's target cell: still said so
    report = runner.invoke(app, ["report", str(spec_path), "--runs", str(runs)])
    assert report.exit_code == 0, report.output
    table = (runs / "tinyx" / "tinyx.md").read_text()
    assert "| method | source top-1 | target top-1 | average top-1 |" in table
    vit_row = next(line for line in table.splitlines() if line.startswith("| ViT |"))
    assert vit_row.count("not run: a plain model") == 2  # the target and the average
    coop_row = next(line for line in table.splitlines() if line.startswith("| CoOp |"))
    assert coop_row.count(f"{coop['top1']:.2f} (n=1)") == 2  # the target and the average over one target
    average = next(r for r in collect(load_spec(str(spec_path)), runs) if (r["column"], r["row"]) == ("average", "coop"))
    assert average["values"] == [coop["top1"]]

    # The source retrained under other settings: its targets' numbers are refused, not reused, until rerun.
    cell = target / "coop" / "seed1"
    before = json.loads((cell / "cell.json").read_text())
    retrained = runner.invoke(app, ["reproduce", f"{spec_path}/source/coop", "--runs", str(runs), "--force",
                                    "train.epochs=2"])
    assert retrained.exit_code == 0, retrained.output
    stale = runner.invoke(app, ["reproduce", f"{spec_path}/target/coop", "--runs", str(runs), "train.epochs=2"])
    message = " ".join(stale.output.split())
    assert stale.exit_code == 2 and "was run under other settings" in message and "source.key" in message
    rerun = runner.invoke(app, ["reproduce", f"{spec_path}/target/coop", "--runs", str(runs), "train.epochs=2",
                                "--force"])
    assert rerun.exit_code == 0, rerun.output
    after = json.loads((cell / "cell.json").read_text())
    assert after["status"] == "done" and after["source_checkpoint"] != before["source_checkpoint"]

    # The source's model replaced under the same settings (retrained with --force): --status and --dry-run say the
    # target is evaluated again, as the runner does, instead of showing the old number as done.
    best = runs / "tinyx" / "source" / "coop" / "seed1" / "checkpoints" / "best.safetensors"
    best.write_bytes(best.read_bytes() + b" ")
    for how in ("--status", "--dry-run"):
        shown = runner.invoke(app, ["reproduce", f"{spec_path}/target/coop", "--runs", str(runs), "train.epochs=2",
                                    how])
        assert shown.exit_code == 0 and "its source's model changed" in " ".join(shown.output.split()), how


def test_evaluate_columns_change_only_the_data_and_the_prompts_for_new_names(tmp_path):
    spec = {"name": "t", "columns": {"src": {}, "tgt": {"evaluate": {"from": "src"},
                                                         "config": {"train": {"epochs": 3}}}},
            "rows": {"r": {"config": {"prompts": {"kind": "text"}}}}}
    with pytest.raises(ConfigError, match="may change data.* and prompts.*not train"):
        list(cells(spec, tmp_path))
    spec["columns"]["tgt"] = {"evaluate": {"from": "tgt"}}
    with pytest.raises(ConfigError, match="evaluates column 'tgt', which is not a training column"):
        list(cells(spec, tmp_path))
    spec["columns"]["tgt"] = {"evaluate": {"from": "src"}, "config": {"data": {"dataset": "folder", "root": "/x"}}}
    tgt = [c for c in cells(spec, tmp_path) if c.column == "tgt"][0]
    assert tgt.source.name == "src/r/seed1" and tgt.config.data.root == "/x" and not tgt.needs_backbone


def test_a_rows_recipe_by_a_resolved_key(tmp_path):
    spec = {"name": "t", "columns": {"k1": {"config": {"data": {"shots": 1}}}, "k16": {"config": {"data": {"shots": 16}}}},
            "rows": {"r": {"config": {"train": {"epochs": 200}},
                           "by": {"data.shots": {1: {"train": {"epochs": 50}}, 16: {}}}}}}
    assert {c.column: c.config.train.epochs for c in cells(spec, tmp_path)} == {"k1": 50, "k16": 200}
    # A command-line value picks its own recipe (the 1-shot one for data.shots=1), and an explicit override still wins.
    assert {c.column: c.config.train.epochs for c in cells(spec, tmp_path, overrides=["data.shots=1"])} == \
        {"k1": 50, "k16": 50}
    assert {c.config.train.epochs for c in cells(spec, tmp_path, overrides=["data.shots=1", "train.epochs=7"])} == {7}
    spec["columns"]["k4"] = {"config": {"data": {"shots": 4}}}
    with pytest.raises(ConfigError, match="by data.shots, but lists no entry for 4"):
        list(cells(spec, tmp_path))


METHODS = ["coop", "cocoop", "kgcoop", "maple", "promptsrc", "ours_text", "ours_image", "ours_mix"]


@pytest.mark.parametrize("name", ["base2novel", "fewshot", "crossdata"])
def test_dry_run_lists_every_methods_cells(name, tmp_path):
    spec = load_spec(name)
    result = runner.invoke(app, ["reproduce", name, "--dry-run", "--seeds", "1", "--runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for column, col in spec["columns"].items():
        if "average" in col:
            continue
        for method in METHODS:
            assert any(line.startswith(f"{column}/{method}/seed1:") for line in lines), (column, method)
    methods = {c.row: c.config.model.method for c in cells(spec, tmp_path, seeds=[1])}
    assert {methods[m] for m in METHODS[:5]} == set(METHODS[:5])  # each row runs its own method


def test_the_learners_keep_their_papers_recipes(tmp_path):
    b2n = {c.row: c.config for c in cells(load_spec("base2novel"), tmp_path, "oxford_pets", [1])}
    assert (b2n["cocoop"].train.batch_size, b2n["cocoop"].train.epochs, b2n["cocoop"].train.lr) == (1, 10, 0.002)
    assert b2n["kgcoop"].model.options["weight"] == 8.0 and b2n["kgcoop"].train.batch_size == 128
    assert b2n["maple"].model.options["depth"] == 9 and b2n["maple"].train.lr == 0.0035
    assert (b2n["promptsrc"].model.options["gpa_mean"], b2n["promptsrc"].model.options["gpa_std"]) == (15.0, 1.0)
    for row in ("coop", "cocoop", "kgcoop", "maple", "promptsrc"):
        c = b2n[row]
        assert c.prompts.encoder == "open_clip:ViT-B-16@openai" and c.data.img_size == 224
        assert c.train.optimizer == "momentum" and c.data.randaugment is None and c.data.shots == 16
    few = {(c.column, c.row): c.config for c in cells(load_spec("fewshot"), tmp_path, seeds=[1])}
    assert [few[f"caltech101_{k}shot", "coop"].train.epochs for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert few["caltech101_1shot", "coop"].model.options == {"n_ctx": 16, "ctx_init": None}  # CoOp's few-shot
    # context: 16 random vectors
    assert few["stanford_cars_4shot", "promptsrc"].model.options["gpa_mean"] == 45.0
    xd = {c.row: c.config for c in cells(load_spec("crossdata"), tmp_path, "caltech101", [1])}
    assert xd["maple"].model.options["depth"] == 3 and xd["maple"].train.epochs == 2


def test_coop_base_to_novel_gives_the_novel_names_to_its_learned_context(tmp_path, tiny_clip_dir):
    from helpers import tiny_run

    from instruction_vit.training import train

    colours = {**COLOURS, "grey": (90, 90, 90)}  # sorted: blue, green | grey, red
    root = colour_folder(tmp_path / "images", per_class=8, colours=colours)
    cfg = tiny_run(root, tiny_clip_dir, tmp_path / "cache", "data.img_size=32", "data.classes=base",
                   "prompts.kind=none", "model.method=coop", "model.regime=prompt", "train.epochs=1")
    results = train(cfg, tmp_path / "coop")
    b2n = results["base_to_novel"]
    assert b2n["novel_class_names"] == ["grey", "red"] and results["class_names"] == ["blue", "green"]
    assert b2n["base_top1"] == results["top1"] and "coop" in b2n["how"]
    base, novel = b2n["base_top1"], b2n["novel_top1"]
    assert b2n["hm"] == pytest.approx(2 * base * novel / (base + novel) if base + novel else 0.0)
    plain = train(tiny_run(root, tiny_clip_dir, tmp_path / "cache", "data.classes=base", "prompts.kind=none",
                           "train.epochs=1"), tmp_path / "vit")
    assert "base_to_novel" not in plain  # a plain ViT has no novel number
