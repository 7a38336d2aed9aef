"""The demo over several seeds: each seed sets everything the demo draws at random, and the spread is computed from
the seeds' own summaries (tiny ViT, tiny CLIP prompts, colour images)."""

import json
import statistics

import pytest
import yaml
from typer.testing import CliRunner

from instruction_vit.cli import app
from instruction_vit.errors import ConfigError, RunFolderError
from instruction_vit.studies.demo import SEEDED_KEYS, VARIANTS, run_demo_seeds


@pytest.fixture
def tiny_demo(tmp_path, tiny_clip_dir):
    from helpers import colour_folder

    config = {
        "data": {"dataset": "folder", "root": str(colour_folder(tmp_path / "images", per_class=8)),
                 "val_fraction": 0.25, "img_size": 16, "randaugment": None, "num_workers": 0},
        "prompts": {"encoder": f"open_clip:local-dir:{tiny_clip_dir}", "templates": "photo", "select_k": 1,
                    "cache_dir": str(tmp_path / "cache")},
        "model": {"backbone_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.003, "warmup_epochs": 0.5, "mixup": 0.0, "cutmix": 0.0},
    }
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_each_seed_sets_every_seeded_key_and_the_spread_is_the_seeds_mean_and_std(tiny_demo, tmp_path):
    out = tmp_path / "seeds"
    spread = run_demo_seeds(tiny_demo, out, [0, 3])
    assert spread["seeds"] == [0, 3] and spread["seeded_keys"] == list(SEEDED_KEYS)
    for seed in (0, 3):
        for variant in VARIANTS:
            saved = yaml.safe_load((out / f"seed{seed}" / variant.replace(" ", "_") / "config.yaml").read_text())
            assert (saved["train"]["seed"], saved["data"]["split_seed"], saved["prompts"]["seed"]) == (seed,) * 3
    rows = {seed: json.loads((out / f"seed{seed}" / "summary.json").read_text()) for seed in (0, 3)}
    assert json.loads((out / "spread.json").read_text()) == spread
    for i, entry in enumerate(spread["variants"]):
        values = [rows[0][i]["head_top1"], rows[3][i]["head_top1"]]
        assert entry["head_top1"] == {"values": values, "mean": statistics.fmean(values),
                                      "std": statistics.stdev(values)}
    assert spread["variants"][0]["combined_top1"] is None  # the plain ViT has no score head
    table = (out / "spread.md").read_text()
    assert "| plain ViT |" in table and "± " in table and "Made by `ivit demo --seeds 0,3`" in table
    assert spread["machine"]["threads"] >= 1 and spread["machine"]["cpu"]  # what the numbers hold on
    run_demo_seeds(tiny_demo, out, [0])  # an earlier seeds demo may be run again into its folder


def test_seeds_refuse_what_they_would_overwrite_or_override(tiny_demo, tmp_path):
    with pytest.raises(ConfigError, match="each seed sets train.seed.*drop the override of train.seed"):
        run_demo_seeds(tiny_demo, tmp_path / "a", [0, 1], ["train.seed=7"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mine.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="holds more than an earlier demo"):
        run_demo_seeds(tiny_demo, tmp_path / "b", [0])
    result = CliRunner().invoke(app, ["demo", "--seeds", "0,one", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--seeds takes comma-separated integers" in result.output
