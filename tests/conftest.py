"""Test set-up: offline by construction, tiny models built here and saved in the real formats."""

import os

# Before anything imports huggingface_hub / transformers: no hub look-ups, ever.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

import socket  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402
from pytest_socket import SocketBlockedError, SocketConnectBlockedError  # noqa: E402

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},  # 32: room for
    # CoOp's default context (16 vectors) before a class name
}


@pytest.fixture(autouse=True)
def _no_network():
    """pytest-socket (addopts) blocks sockets; this asserts the guard is really on in every test. A test marked
    ``allow_hosts(["127.0.0.1"])`` (a local server: the demo page) may reach the loopback, never another host."""
    with pytest.raises((SocketBlockedError, SocketConnectBlockedError)):
        socket.create_connection(("192.0.2.1", 9), timeout=0.1)  # TEST-NET-1: blocked under either mode
    yield


@pytest.fixture
def tiny_vit_kwargs():
    return dict(TINY_VIT)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache that huggingface_hub (offline, HF_HUB_OFFLINE=1) looks in; fill it with
    ``helpers.fill_hf_cache``."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import: the env var is too late
    return cache


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random tiny CLIP saved as an open_clip ``local-dir`` (open_clip_config.json + safetensors)."""
    from helpers import save_clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    save_clip(folder, TINY_CLIP_CFG)
    return folder


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory, tiny_clip_dir):
    """A run trained for one epoch on a colour folder with text prompts from the tiny CLIP, shared read-only by the
    tests of the classifier users load and of its ONNX export (they write only into their own tmp_path)."""
    from helpers import colour_folder, tiny_run

    from instruction_vit.training import train

    root = tmp_path_factory.mktemp("text_run")
    colour_folder(root / "images", per_class=8)
    train(tiny_run(root / "images", tiny_clip_dir, root / "cache", "train.epochs=1"), root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    """The tiny CLIP, loaded as a prompt encoder (open_clip:local-dir:...)."""
    from instruction_vit.prompts import load_encoder

    return load_encoder(f"open_clip:local-dir:{tiny_clip_dir}")


@pytest.fixture(scope="session")
def deep_clip(tmp_path_factory):
    """The encoder spec of a tiny CLIP with 3 layers per tower (helpers.DEEP_CLIP_CFG): MaPLe's and PromptSRC's."""
    from helpers import DEEP_CLIP_CFG, save_clip

    return save_clip(tmp_path_factory.mktemp("deep_clip"), DEEP_CLIP_CFG)


@pytest.fixture
def live_pid():
    """The pid of a process of this host that runs for the whole test (a holder that is not this process)."""
    sleeper = subprocess.Popen(["sleep", "600"])
    yield sleeper.pid
    sleeper.kill()
    sleeper.wait()
