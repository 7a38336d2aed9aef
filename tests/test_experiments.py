"""Experiment specs: cells resolve to validated configs; reproduce runs them; report tabulates them."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import COLOURS, colour_folder, tiny_spec_base
from typer.testing import CliRunner

from instruction_vit.cli import app
from instruction_vit.config import ConfigError
from instruction_vit.studies.grid import cells
from instruction_vit.studies.measurements import collect
from instruction_vit.studies.specs import SHIPPED, load_spec

runner = CliRunner()


@pytest.mark.parametrize("name", ["table1", "table2", "offline", "fewshot", "base2novel", "crossdata",
                                  "offline_learners"])
def test_shipped_specs_resolve_to_valid_configs(name, tmp_path):
    spec = load_spec(name)
    all_cells = list(cells(spec, tmp_path))
    assert len({c.folder for c in all_cells}) == len(all_cells)
    for cell in all_cells:
        assert cell.config.train.seed == cell.seed
        assert "{runs}" not in str(cell.config.model.pretrained)


def test_table_cells_carry_the_papers_recipe(tmp_path):
    spec = load_spec("table1")
    cars = next(c for c in cells(spec, tmp_path, "stanford_cars/resnet50"))
    assert cars.config.train.epochs == 100 and cars.config.model.backbone == "resnet50"
    assert (cars.config.train.lr, cars.config.train.min_lr, cars.config.train.warmup_epochs) == (1e-4, 1e-5, 5)
    assert (cars.config.train.mixup, cars.config.train.cutmix, cars.config.train.mixup_prob) == (0.8, 1.0, 0.1)
    assert spec["columns"]["oxford_pets"]["paper"]["ours_text"] == 94.19
    t2 = next(c for c in cells(load_spec("table2"), tmp_path, "oxford_flowers/vpt_deep"))
    assert t2.config.model.regime == "prompt" and t2.config.model.options == {"vpt_tokens": 10, "vpt_deep": True}


def test_unknown_cells_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no column 'imagenet'"):
        list(cells(load_spec("table1"), tmp_path, "imagenet"))
    with pytest.raises(ConfigError, match="no row 'vgg'"):
        list(cells(load_spec("table1"), tmp_path, "caltech101/vgg"))
    with pytest.raises(ConfigError, match="no experiment spec 'table9'"):
        load_spec("table9")


@pytest.fixture
def tiny_spec(tmp_path, tiny_clip_dir):
    root = colour_folder(tmp_path / "images", per_class=12, colours={**COLOURS, "grey": (90, 90, 90)})
    spec = {
        "name": "tiny", "seeds": [1, 2],
        "base": {"data": {"dataset": "folder", "root": str(root), "val_fraction": 0.25, "img_size": 16,
                          "num_workers": 0,
                          "randaugment": None},
                 "prompts": {"encoder": f"open_clip:local-dir:{tiny_clip_dir}", "templates": "photo", "select_k": 1,
                             "cache_dir": str(tmp_path / "cache")},
                 "model": {"backbone_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}},
                 "train": {"epochs": 1, "batch_size": 8, "lr": 0.003, "warmup_epochs": 0.5, "mixup": 0, "cutmix": 0}},
        "columns": {
            "full": {"paper": {"vit": 50.0}},
            "b2n": {"rows": ["ours"], "config": {"data": {"classes": "base"}},
                    "metrics": {"base": "base_to_novel.base_top1", "novel": "base_to_novel.novel_top1",
                                "HM": "base_to_novel.hm"}},
            "frozen": {"rows": ["vit"], "seeds": [1], "config": {"model": {
                "regime": "linear", "pretrained": "{runs}/tiny/full/vit/seed1/checkpoints/best.safetensors"}}},
        },
        "rows": {"vit": {"label": "ViT", "config": {"prompts": {"kind": "none"}}},
                 "ours": {"label": "Ours", "config": {"prompts": {"kind": "text"}}}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # columns run in spec order
    return path


def test_reproduce_then_report(tiny_spec, tmp_path):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["reproduce", str(tiny_spec), "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    assert (runs / "tiny" / "frozen" / "vit" / "seed1" / "results.json").is_file()
    again = runner.invoke(app, ["reproduce", str(tiny_spec), "--runs", str(runs)])
    assert again.output.count(": done") == 7  # nothing reruns
    result = runner.invoke(app, ["report", str(tiny_spec), "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    table = (runs / "tiny" / "tiny.md").read_text()
    assert "| method | full top-1 | paper (Δ) | b2n base | b2n novel | b2n HM | frozen top-1 |" in table
    vit_row = next(line for line in table.splitlines() if line.startswith("| ViT |"))
    assert "(2) | 50.00 (Δ " in vit_row  # two seeds, then the paper's number and the difference
    assert (runs / "tiny" / "tiny.png").is_file()
    record = next(r for r in collect(load_spec(str(tiny_spec)), runs) if (r["column"], r["row"]) == ("full", "ours"))
    measured = [json.loads((runs / "tiny" / "full" / "ours" / f"seed{s}" / "results.json").read_text())["top1"]
                for s in (1, 2)]
    assert record["values"] == measured


def test_report_without_runs_says_what_to_do(tiny_spec, tmp_path):
    result = runner.invoke(app, ["report", str(tiny_spec), "--runs", str(tmp_path / "none")])
    assert result.exit_code == 2 and "run `ivit reproduce" in " ".join(result.output.split())


def test_a_cell_run_under_other_settings_is_refused_not_reused(tiny_spec, tmp_path):
    runs = tmp_path / "runs"
    args = ["reproduce", str(tiny_spec), "--runs", str(runs), "--seeds", "1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*args, "train.epochs=2"])
    assert again.exit_code == 2
    message = " ".join(again.output.split())
    assert "was run under other settings" in message and "train.epochs: 1 -> 2" in message
    assert "--force" in message and f"--runs {runs}-new" in message
    forced = runner.invoke(app, [*args, "train.epochs=2", "--force"])
    assert forced.exit_code == 0, forced.output
    cell = runs / "tiny" / "full" / "vit" / "seed1"
    record = json.loads((cell / "cell.json").read_text())
    assert record["status"] == "done" and record["spec_changes"] == ["train.epochs: 1 -> 2"]
    assert not (cell / "checkpoints" / "last.safetensors").exists()  # finished cells keep only best
    assert (cell / "checkpoints" / "best.safetensors").is_file()
    report = runner.invoke(app, ["report", str(tiny_spec), "--runs", str(runs)])
    table = (runs / "tiny" / "tiny.md").read_text()
    assert report.exit_code == 0 and "(n=1) †1" in table and "changed from the spec: train.epochs: 1 -> 2" in table


def test_weights_go_to_their_backbone_only(tmp_path):
    spec = load_spec("table1")
    with pytest.raises(ConfigError, match=r"weights per backbone.*weights\.\w+=FILE"):
        list(cells(spec, tmp_path, overrides=["model.pretrained=/w/vit_b16.safetensors"]))
    weights = {"vit_base_patch16_224": "/w/vit_b16.safetensors", "resnet50": "random"}
    found = {(c.column, c.row): c for c in cells(spec, tmp_path, seeds=[1], weights=weights)}
    assert found["caltech101", "vit_b"].config.model.pretrained == "/w/vit_b16.safetensors"
    assert found["caltech101", "ours_text"].config.model.pretrained == "/w/vit_b16.safetensors"
    assert found["caltech101", "deit_b"].config.model.pretrained == "timm"  # no weights given: not the ViT file
    assert found["caltech101", "resnet50"].config.model.pretrained is None  # random init, asked for by name
    one = list(cells(spec, tmp_path, "oxford_pets/vit_b", [1], ["model.pretrained=/w/vit.safetensors"]))
    assert one[0].config.model.pretrained == "/w/vit.safetensors"  # one backbone: a table-wide file is unambiguous
    t2 = {c.row: c for c in cells(load_spec("table2"), tmp_path, "oxford_pets", [1], weights=weights)}
    assert t2["coop"].needs_backbone is False and t2["zero_shot"].needs_backbone is False


def test_a_backbone_without_weights_is_reported_not_run(tiny_spec, tmp_path):
    spec = yaml.safe_load(tiny_spec.read_text())
    spec["rows"]["deit"] = {"label": "DeiT", "config": {"prompts": {"kind": "none"}, "model": {
        "backbone": "deit_tiny_patch16_224", "pretrained": "timm"}}}
    spec["columns"] = {"full": {"rows": ["vit", "deit"], "paper": {"vit": 50.0, "deit": 40.0}}}
    path = tmp_path / "tiny2.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["reproduce", str(path), "--runs", str(runs), "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert "not run: no weights for deit_tiny_patch16_224" in " ".join(result.output.split())
    assert not (runs / "tiny" / "full" / "deit" / "seed1" / "results.json").exists()
    runner.invoke(app, ["report", str(path), "--runs", str(runs)])
    deit = next(line for line in (runs / "tiny" / "tiny.md").read_text().splitlines() if line.startswith("| DeiT"))
    assert "not run: no weights for deit_tiny_patch16_224" in deit


def test_report_shows_the_difference_from_the_paper_and_flags_it():
    from instruction_vit.studies.report import markdown_report

    spec = {"name": "t", "columns": {"c": {}}, "rows": {"a": {}, "b": {}, "d": {}}}
    records = [
        {"column": "c", "metric": "top-1", "row": "a", "label": "A", "values": [90.0, 91.0, 92.0], "paper": 91.5,
         "changes": [], "not_run": []},
        {"column": "c", "metric": "top-1", "row": "b", "label": "B", "values": [80.0, 80.5, 81.0], "paper": 90.0,
         "changes": [], "not_run": []},
        {"column": "c", "metric": "top-1", "row": "d", "label": "D", "values": [70.0], "paper": 75.0,
         "changes": [], "not_run": []},
    ]
    lines = markdown_report(spec, records, "cmd").splitlines()
    row = {line.split(" | ")[0]: line for line in lines if line.startswith("| ")}
    assert "91.00 ± 1.00 (3) | 91.50 (Δ -0.50) |" in row["| A"]
    assert "80.50 ± 0.50 (3) | 90.00 (Δ -9.50 ⚠) |" in row["| B"]
    assert "70.00 (n=1) | 75.00 (Δ -5.00) |" in row["| D"]  # one seed: no spread, no ± 0.00


def test_shipped_specs_stand_on_their_own():
    """Notes state their facts with their sources (no file outside the repository), and no spec forces a worker
    count the machine may not have."""
    for path in SHIPPED.glob("*.yaml"):
        text = path.read_text()
        assert "REFERENCE.md" not in text, path.name
        for cell in cells(load_spec(path.stem), Path("runs"), seeds=[1]):
            assert cell.config.data.num_workers in (None, 0), (path.name, cell.name)


def test_spec_changes_judge_weights_and_encoders_by_what_they_are(tmp_path):
    from instruction_vit.studies.keys import Identities, spec_changes

    spec, ids = load_spec("table2"), Identities()

    def changes(weights=None, overrides=()):
        cell = next(iter(cells(spec, tmp_path, "oxford_pets/ours_text", [1], overrides, weights)))
        return spec_changes(cell, ids)

    assert changes({"vit_base_patch16_224": "/w/vit_b16.safetensors"}) == []  # pretrained weights as asked
    assert changes({"vit_base_patch16_224": "random"}) == ["model.pretrained: 'timm' -> None"]
    assert changes(overrides=["data.root=/data/torchvision", "train.device=cpu"]) == []
    assert changes(overrides=["prompts.encoder=open_clip:ViT-B-16@laion2b_s34b_b88k"])  # another CLIP
    assert changes(overrides=["prompts.encoder=open_clip:ViT-L-14@openai"])
    clip = tmp_path / "clip.safetensors"
    clip.write_bytes(b"weights")
    assert changes(overrides=[f"prompts.encoder=open_clip:ViT-B-16-quickgelu@{clip}"]) == []  # OpenAI's, as a file
    gelu = changes(overrides=[f"prompts.encoder=open_clip:ViT-B-16@{clip}"])  # a GELU model: not the spec's CLIP
    assert gelu and gelu[0].startswith("prompts.encoder:")


def test_cell_keys_follow_content_not_paths(tmp_path, monkeypatch):
    from instruction_vit.studies.keys import Identities, cell_settings, settings_key

    spec = load_spec("offline")
    monkeypatch.chdir(tmp_path)
    key = lambda runs, **kw: settings_key(cell_settings(  # noqa: E731
        next(iter(cells(spec, runs, "prompt/ours_text", [1], **kw))), Identities()))
    assert key(Path("runs")) == key(tmp_path / "runs")  # --runs runs and --runs /abs/runs: one cell
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\n")
    before = key(Path("runs"), overrides=[f"prompts.templates={templates}"])
    templates.write_text("a blurry photo of a {}.\n")
    assert key(Path("runs"), overrides=[f"prompts.templates={templates}"]) != before  # an edited file


def test_records_that_are_not_done_report_nothing(tmp_path):
    from instruction_vit.studies.cell_record import read_record
    from instruction_vit.studies.grid import check_weights_map
    from instruction_vit.studies.specs import split_weights

    spec = {"name": "t", "columns": {"c": {}}, "rows": {"r": {}}}
    seed = tmp_path / "t" / "c" / "r" / "seed1"
    seed.mkdir(parents=True)
    (seed / "results.json").write_text(json.dumps({"top1": 99.0}))
    (seed / "cell.json").write_text(json.dumps({"status": "running", "key": "k"}))  # killed mid-run
    assert collect(spec, tmp_path)[0]["values"] == []
    (seed / "cell.json").write_text('{"status": "do')  # a torn write
    assert read_record(seed)["status"] == "unreadable" and collect(spec, tmp_path)[0]["values"] == []
    bad = tmp_path / "weights.yaml"
    bad.write_text("vit: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        split_weights([], bad)
    with pytest.raises(ConfigError, match="vit_base_patch16, which no cell of table1 trains"):
        check_weights_map(load_spec("table1"), tmp_path, {"vit_base_patch16": "/w/vit.safetensors"})


def test_weights_files_that_are_not_there_are_named_before_anything_runs(tmp_path):
    from instruction_vit.studies.grid import check_weights_map

    with pytest.raises(ConfigError, match="weights files not found: vit_base_patch16_224=/nowhere/vit.safetensors"):
        check_weights_map(load_spec("table1"), tmp_path, {"vit_base_patch16_224": "/nowhere/vit.safetensors"})
    check_weights_map(load_spec("table1"), tmp_path, {"vit_base_patch16_224": "timm", "resnet50": "random"})


def test_dry_run_ends_with_what_can_run_and_why_not(tmp_path):
    result = runner.invoke(app, ["reproduce", "table1", "--dry-run", "--runs", str(tmp_path / "runs"),
                                 f"data.root={tmp_path / 'nowhere'}"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1] == "168 cell(s): 168 cannot run (data not found 168)"
    assert f"cannot run: no data at {tmp_path / 'nowhere' / 'caltech101'}: set data.root" in lines[0]


@pytest.fixture
def state_spec(tmp_path):
    root = colour_folder(tmp_path / "images", per_class=8)
    path = tmp_path / "tinystate.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tinystate", "seeds": [1, 2, 3],
        "base": tiny_spec_base(root),
        "columns": {"full": {},
                    "frozen": {"rows": ["vit"], "seeds": [1], "config": {"model": {
                        "regime": "linear", "pretrained": "{runs}/tinystate/full/vit/seed1/checkpoints/best.safetensors"}}}},
        "rows": {"vit": {"label": "ViT"},
                 "other": {"label": "Other", "config": {"model": {"pretrained": str(tmp_path / "gone.safetensors")}}}},
    }, sort_keys=False))
    return path


def test_cell_states_say_done_stale_to_run_and_cannot_run(state_spec, tmp_path):
    from instruction_vit.studies.runner import run_cells
    from instruction_vit.studies.states import cell_states, summary

    spec, runs = load_spec(str(state_spec)), tmp_path / "runs"
    before = {s.cell.name: s for s in cell_states(spec, runs)}
    assert before["frozen/vit/seed1"].state == "to run"  # its weights are made by full/vit/seed1: runnable
    assert before["full/other/seed1"].state == "cannot run" and "gone.safetensors" in before["full/other/seed1"].detail
    run_cells(spec, runs, "full/vit", [1])
    seed2 = runs / "tinystate" / "full" / "vit" / "seed2"
    seed2.mkdir(parents=True)
    (seed2 / "results.json").write_text(json.dumps({"top1": 10.0}))
    record = json.loads((runs / "tinystate" / "full" / "vit" / "seed1" / "cell.json").read_text())
    record["settings"]["config"].update({"train.epochs": 5, "train.seed": 2, "data.shots_seed": 2})
    (seed2 / "cell.json").write_text(json.dumps({**record, "key": "k"}))  # done, with 5 epochs
    states = {s.cell.name: s for s in cell_states(spec, runs)}
    top1 = json.loads((runs / "tinystate" / "full" / "vit" / "seed1" / "results.json").read_text())["top1"]
    assert (states["full/vit/seed1"].state, states["full/vit/seed1"].top1) == ("done", top1)
    assert states["full/vit/seed2"].state == "stale" and "train.epochs: 5 -> 1" in states["full/vit/seed2"].detail
    assert (states["full/vit/seed3"].state, states["full/vit/seed3"].detail) == ("to run", "not started")
    assert summary(states.values()) == "7 cell(s): 2 to run, 1 done, 1 stale, 3 cannot run (weights missing 3)"


def test_a_chart_gives_every_method_its_own_colour_with_or_without_results():
    from instruction_vit.studies.report import bar_figure

    records = [{"column": "c", "metric": "top-1", "row": r, "label": r.upper(), "values": [50.0] if r == "a" else [],
                "paper": None, "changes": [], "not_run": []} for r in "abcd"]
    legend = bar_figure(records).axes[0].get_legend()
    assert len({tuple(h.get_facecolor()[:3]) for h in legend.legend_handles}) == 4
    assert [t.get_text() for t in legend.get_texts()] == ["A", "B (no results)", "C (no results)", "D (no results)"]


def test_a_half_finished_grid_reports_what_it_has_and_marks_what_is_missing(tmp_path):
    import socket
    import subprocess

    from instruction_vit.studies.report import markdown_report
    from instruction_vit.training.run_lock import LOCK_NAME

    spec = {"name": "t", "seeds": [1, 2, 3, 4], "columns": {"c": {}, "d": {"seeds": [1]}},
            "rows": {"r": {"label": "R"}}}
    cells_of = {s: tmp_path / "t" / "c" / "r" / f"seed{s}" for s in (1, 2, 3)}
    for seed, record in ((1, {"status": "done"}), (2, {"status": "failed", "reason": "DataError: x"}),
                         (3, {"status": "running"})):
        cells_of[seed].mkdir(parents=True)
        (cells_of[seed] / "cell.json").write_text(json.dumps(record))
    (cells_of[1] / "results.json").write_text(json.dumps({"top1": 90.0}))
    sleeper = subprocess.Popen(["sleep", "600"])  # seed 3's holder: running
    try:
        (cells_of[3] / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(),
                                                         "pid": sleeper.pid, "started": "now", "command": "ivit"}))
        records = collect(spec, tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    by_column = {r["column"]: r for r in records}
    assert by_column["c"]["missing"] == {"failed": 1, "running": 1, "not run yet": 1}
    assert by_column["d"]["missing"] == {"not run yet": 1}
    table = markdown_report(spec, records, "cmd")
    assert "**Partial**: 4 of the spec's cells have no result yet (1 failed, 2 not run yet, 1 running)" in table
    assert "| R | 90.00 (n=1) [missing: 1 failed, 1 not run yet, 1 running] | missing: 1 not run yet |" in table
