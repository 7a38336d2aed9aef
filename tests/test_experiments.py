"""Experiment specs: cells resolve to validated configs; reproduce runs them; report tabulates them."""

import json

import pytest
import yaml
from helpers import COLOURS, colour_folder
from typer.testing import CliRunner

from instruction_vit.cli import app
from instruction_vit.config import ConfigError
from instruction_vit.engine.experiments import cells, collect, load_spec

runner = CliRunner()


@pytest.mark.parametrize("name", ["table1", "table2", "offline", "fewshot", "base2novel"])
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
    assert t2.config.model.regime == "prompt" and t2.config.model.vpt_deep and t2.config.model.vpt_tokens == 10


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
    assert "| method | full top-1 | paper | b2n base | b2n novel | b2n HM | frozen top-1 |" in table
    vit_row = next(line for line in table.splitlines() if line.startswith("| ViT |"))
    assert "(2) | 50.00 |" in vit_row  # two seeds, then the paper's number
    assert (runs / "tiny" / "tiny.png").is_file()
    record = next(r for r in collect(load_spec(str(tiny_spec)), runs) if (r["column"], r["row"]) == ("full", "ours"))
    measured = [json.loads((runs / "tiny" / "full" / "ours" / f"seed{s}" / "results.json").read_text())["top1"]
                for s in (1, 2)]
    assert record["values"] == measured


def test_report_without_runs_says_what_to_do(tiny_spec, tmp_path):
    result = runner.invoke(app, ["report", str(tiny_spec), "--runs", str(tmp_path / "none")])
    assert result.exit_code == 2 and "run `ivit reproduce" in " ".join(result.output.split())
