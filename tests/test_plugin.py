"""A third-party prompt encoder, installed as its own distribution, found through the ``instruction_vit.encoders``
entry-point group and usable everywhere a spec is read, training through the CLI included."""

import json
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from helpers import colour_folder
from instruction_vit.prompts.encoders import (
    ENCODERS,
    encoder_spec_help,
    joint_space,
    list_encoders,
    load_encoder,
    weights_id,
)

PLUGIN = '''
"""ivit-plugin-demo: a deterministic hashing text encoder (8-d, no weights)."""

import hashlib

import torch

from instruction_vit.prompts.encoders import TEXT, PromptEncoder


class DemoEncoder(PromptEncoder):
    name = "demo"
    dim = 8
    modalities = frozenset({TEXT})
    shared_space = False
    spec_help = "demo  text: hashed words (8-d, no weights)"

    @classmethod
    def from_spec(cls, arg, device="cpu"):
        return cls()

    @classmethod
    def spec_weights_id(cls, arg):
        return "ivit-plugin-demo==0.1"

    def encode_text(self, texts):
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                digest = hashlib.sha256(word.encode()).digest()
                out[row, digest[0] % self.dim] += 1.0 if digest[1] % 2 else -1.0
        return out
'''

ENTRY_POINTS = """
[instruction_vit.encoders]
demo = ivit_plugin_demo:DemoEncoder
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The demo distribution on ``sys.path`` and the encoder registry as a new process would build it."""
    site = tmp_path / "site"
    info = site / "ivit_plugin_demo-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "ivit_plugin_demo.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ivit-plugin-demo\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(ENTRY_POINTS.lstrip(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    with ENCODERS.isolated(reload=True):  # read again, as a process started after `pip install` would
        yield site
    sys.modules.pop("ivit_plugin_demo", None)


def test_without_the_plugin_demo_is_unknown():
    assert "demo" not in list_encoders()


def test_an_installed_plugin_is_an_encoder(plugin):
    assert "demo" in list_encoders() and {"conse", "minilm", "open_clip"} <= set(list_encoders())
    encoder = load_encoder("demo")
    assert type(encoder).__module__ == "ivit_plugin_demo" and encoder.dim == 8
    features = encoder.encode_text(["a photo of a red thing.", "a photo of a red thing.", "blue"])
    assert features.shape == (3, 8) and torch.equal(features[0], features[1]) and not torch.equal(features[0],
                                                                                                  features[2])
    assert weights_id("demo") == encoder.weights_id() == "ivit-plugin-demo==0.1"
    assert not joint_space("demo")
    assert "demo  text: hashed words (8-d, no weights)" in encoder_spec_help()


def test_training_through_the_cli_with_a_plugin_encoder(plugin, tmp_path):
    from instruction_vit.cli import app

    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--out", str(out),
        "data.dataset=folder", f"data.root={data}", "data.img_size=16", "data.num_workers=0", "data.randaugment=null",
        "model.backbone_kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
        "train.epochs=1", "train.batch_size=8", "train.mixup=0", "train.cutmix=0", "train.device=cpu",
        "prompts.encoder=demo", "prompts.kind=text", "prompts.templates=photo",
        f"prompts.cache_dir={tmp_path / 'cache'}",
    ])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results
    banks = list((tmp_path / "cache").glob("text-*.json"))
    assert banks and json.loads(banks[0].read_text())["text_weights"] == "ivit-plugin-demo==0.1"
