"""DDP through torchrun on the CPU (gloo, 2 processes): the same run as one process, rank 0 writing."""

import subprocess
import sys

import pytest
import torch
from helpers import colour_folder

from instruction_vit.artifacts.checkpoint import load_checkpoint
from instruction_vit.config import load_config
from instruction_vit.training import train


@pytest.fixture
def setup(tmp_path, tiny_clip_dir):
    colour_folder(tmp_path / "images")
    # Augmentation off (whole-image crops, no flip) so that one process and two must agree; SGD, because
    # Adam turns float-summation noise on near-zero gradients into full +-lr steps.
    config = tmp_path / "run.yaml"
    config.write_text(f"""
data: {{dataset: folder, root: {tmp_path / 'images'}, val_fraction: 0.25, img_size: 16, randaugment: null,
       hflip: 0.0, crop_min_scale: 1.0, color_jitter: 0.0, num_workers: 0}}
prompts: {{kind: text, encoder: "open_clip:local-dir:{tiny_clip_dir}", templates: photo,
          cache_dir: {tmp_path / 'cache'}}}
model: {{backbone_kwargs: {{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}}}}
train: {{epochs: 3, batch_size: 8, lr: 0.05, warmup_epochs: 0.5, mixup: 0, cutmix: 0, device: cpu, optimizer: sgd}}
""")
    return tmp_path, config


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "instruction_vit", "train", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _same_weights(a_path, b_path):
    a, b = load_checkpoint(a_path).model_state(), load_checkpoint(b_path).model_state()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_two_processes_train_like_one_and_resume_like_one(setup):
    tmp_path, config = setup
    done = _torchrun("--out", str(tmp_path / "ddp"), "--config", str(config))
    assert done.stdout.count("epoch 1:") == 1  # rank 0 alone logs
    assert len((tmp_path / "ddp" / "metrics.csv").read_text().strip().splitlines()) == 4
    train(load_config(config), tmp_path / "single")
    _same_weights(tmp_path / "ddp" / "checkpoints" / "last.safetensors",
                  tmp_path / "single" / "checkpoints" / "last.safetensors")

    # Stopped after one epoch, resumed by a new torchrun: the same run.
    stopped = _torchrun("--out", str(tmp_path / "ddp2"), "--config", str(config), "--stop-after-epochs", "1")
    assert "stopped after epoch 1" in stopped.stdout
    assert not (tmp_path / "ddp2" / "results.json").exists()
    _torchrun("--out", str(tmp_path / "ddp2"), "--resume")
    _same_weights(tmp_path / "ddp2" / "checkpoints" / "last.safetensors",
                  tmp_path / "single" / "checkpoints" / "last.safetensors")
    assert (tmp_path / "ddp2" / "metrics.csv").read_text() .count("\n") == 4


def test_caches_are_written_in_turns(monkeypatch):
    """rank 0 first, then the first process of each other node, then the rest: never two writers at once."""
    from instruction_vit.training import distributed

    barriers = []
    monkeypatch.setattr(distributed.dist, "barrier", lambda: barriers.append(1))
    turns = {}
    for rank, local_rank in ((0, 0), (1, 1), (2, 0), (3, 1)):  # two nodes of two processes
        barriers.clear()
        world = distributed.World(rank=rank, size=4, local_rank=local_rank)
        calls = []
        assert world.in_turn(lambda: calls.append(len(barriers)) or f"made by {rank}") == f"made by {rank}"
        assert len(calls) == 1 and len(barriers) == 2  # once each, and every process meets both barriers
        turns[rank] = calls[0]
    assert turns == {0: 0, 2: 1, 1: 2, 3: 2}
