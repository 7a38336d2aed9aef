"""Weights files are data: nothing in a CLIP weights file runs, wherever it is given.

``torch.jit.load`` runs the TorchScript code an archive carries (a module's ``__setstate__``), and open_clip's
state-dict loader unpickles a file in full when ``weights_only`` raises a ``TypeError`` and the environment asks
for unsafe loads. The hostile files here are made by the tests: a real tiny OpenAI-layout CLIP archive with a
module whose ``__setstate__`` creates a marker file, hand-written ``data.pkl`` payloads, storages whose declared
size is a lie, and a ``torch.save`` pickle that only a full unpickling accepts. Each is shown to be armed (the
unsafe loader does create the marker) and then read as data or refused in one line, the marker never created.
"""

import ast
import json
import shutil
import struct
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP, convert_weights_to_fp16
from torch import nn

from helpers import OPENAI_TINY, TEXTS, Trap, fill_hf_cache, save_openai_archive  # hf_cache: conftest.py

import instruction_vit
from instruction_vit.errors import UserError, WeightsError
from instruction_vit.prompts import load_encoder
from instruction_vit.prompts.encoders.torchscript_archive import read_archive_state_dict

SRC = Path(instruction_vit.__file__).parent  # the package under test
QUICK_CONFIG = {"model_cfg": {**OPENAI_TINY, "quick_gelu": True}}


class Attributes(nn.Module):
    """A scripted module with the attribute kinds TorchScript pickles besides tensors and modules (typed lists, a
    dict, a tuple, a float, a string), a non-persistent buffer and nested submodules."""

    ints: list[int]
    floats: list[float]
    flags: list[bool]
    names: dict[str, int]

    def __init__(self):
        super().__init__()
        self.ints, self.floats, self.flags, self.names = [1, 2], [0.5], [True], {"a": 1}
        self.pair = (1, "x")
        self.scale = 2.5
        self.register_buffer("steps", torch.arange(3), persistent=False)
        self.blocks = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale + self.ints[0] + self.floats[0] + self.names["a"] + self.pair[0] + float(self.flags[0])
        return self.norm(self.blocks(x)) * scale + self.steps.sum()


@pytest.fixture(scope="module")
def tiny_state():
    """A tiny CLIP's weights as OpenAI stores them (key names, fp16 where open_clip's convert_weights_to_fp16 puts
    it), random: the architecture is inferred from the shapes."""
    torch.manual_seed(0)
    model = CLIP(**OPENAI_TINY, quick_gelu=True)
    convert_weights_to_fp16(model)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def clean_archive(tmp_path_factory, tiny_state):
    return save_openai_archive(tiny_state, tmp_path_factory.mktemp("clean") / "tiny-openai.pt")


@pytest.fixture(scope="module")
def reference(clean_archive):
    """Text and image features of the clean archive (the ones every file read as data must give)."""
    enc = load_encoder(f"open_clip:tiny-openai@{clean_archive}")
    return features(enc)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_state):
    """The tiny OpenAI-layout CLIP archive with a Trap (creating ``marker``) beside the weights, checked armed:
    torch.jit.load on it creates the marker."""
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "marker"
    archive = save_openai_archive(tiny_state, folder / "tiny-openai.pt", modules={"trap": Trap(marker)})
    assert not marker.exists()
    torch.jit.load(archive)  # the unsafe loader, on a file this test made: the trap is armed
    assert marker.exists()
    marker.unlink()
    return archive, marker


def features(enc) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return enc.encode_text(TEXTS), enc.encode_images(images)


def assert_one_line_refusal(info, *not_quoted: str) -> str:
    """The refusal is a one-line WeightsError (a UserError: the CLI prints it and exits 2) quoting nothing given."""
    message = str(info.value)
    assert isinstance(info.value, WeightsError) and isinstance(info.value, UserError)
    assert "\n" not in message
    for text in not_quoted:
        assert text not in message
    return message


# -- the reader ---------------------------------------------------------------------------------------------------
def test_reader_matches_torch_jit_state_dict(tmp_path, clean_archive):
    """The tensors read as data are torch.jit's state dict (same keys in the same order, dtypes, strides, values):
    the OpenAI-layout archive, and a scripted module with every other attribute kind TorchScript pickles."""
    scripted = tmp_path / "attributes.pt"
    torch.jit.save(torch.jit.script(Attributes()), scripted)
    for archive in (clean_archive, scripted):
        ours, theirs = read_archive_state_dict(archive), torch.jit.load(archive).state_dict()
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            assert ours[key].dtype == value.dtype and ours[key].stride() == value.stride()
            assert torch.equal(ours[key], value), key


# -- TorchScript code never runs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["pretrained .pt", "pretrained .bin", "local-dir", "hf-hub"])
def test_hostile_archive_code_never_runs(tmp_path, hostile, hf_cache, where):
    """The trapped archive given as open_clip weights, as OpenAI's archive or where a state dict is expected: the
    trap's object restores itself with its own code, so the archive is refused, and the marker never appears."""
    archive, marker = hostile
    if where == "pretrained .pt":
        spec = f"open_clip:tiny-openai@{archive}"
    elif where == "pretrained .bin":
        spec = f"open_clip:tiny-openai@{shutil.copy(archive, tmp_path / 'weights.bin')}"
    elif where == "local-dir":
        shutil.copy(archive, tmp_path / "open_clip_pytorch_model.bin")
        (tmp_path / "open_clip_config.json").write_text(json.dumps(QUICK_CONFIG))
        spec = f"open_clip:local-dir:{tmp_path}"
    else:
        fill_hf_cache(hf_cache, "someorg/trapped", {"open_clip_config.json": QUICK_CONFIG,
                                                    "open_clip_pytorch_model.bin": archive})
        spec = "open_clip:hf-hub:someorg/trapped"
    with pytest.raises(WeightsError) as info:
        load_encoder(spec)
    assert not marker.exists()
    message = assert_one_line_refusal(info, str(marker), "Trap")
    assert "restores itself with its own code" in message and "nothing in it was run" in message


def test_clean_archive_where_a_state_dict_is_expected_is_read_as_data(tmp_path, clean_archive, reference, caplog):
    """OpenAI's archive under a .bin name, or as a local-dir folder's weights file: read as data, the same
    features as the archive given as OpenAI's (and open_clip's "initialized randomly" warning, false when the
    weights are loaded after it builds the model, is not logged)."""
    weights_bin = shutil.copy(clean_archive, tmp_path / "weights.bin")
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(clean_archive, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps(QUICK_CONFIG))
    for spec in (f"open_clip:tiny-openai@{weights_bin}", f"open_clip:local-dir:{folder}"):
        with caplog.at_level("WARNING"):
            enc = load_encoder(spec)
        assert enc.activation == "quick_gelu" and "initialized randomly" not in caplog.text
        for ours, expected in zip(features(enc), reference):
            torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


# -- hand-written archives --------------------------------------------------------------------------------------------
def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:  # LONG1: any size
    data = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(numel: int, size: tuple, stride: tuple, offset: int = 0, key: str = "0") -> bytes:
    """``torch._utils._rebuild_tensor_v2`` over float storage ``key`` declared to hold ``numel`` values, as
    torch.jit.save writes it."""
    pid = _tuple(_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _int(numel)) + b"Q"
    hooks = _global("collections", "OrderedDict") + b")R"
    return _global("torch._utils", "_rebuild_tensor_v2") + _tuple(
        pid, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", hooks) + b"R"


def _module(**attributes: bytes) -> bytes:
    """A TorchScript module object: NEWOBJ of a ``__torch__`` class, then BUILD with its attribute dict."""
    items = b"".join(_str(name) + value for name, value in attributes.items())
    return _global("__torch__", "Holder") + b")\x81" + b"}(" + items + b"u" + b"b"


def write_archive(path: Path, body: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A zip laid out as torch.jit.save lays it out (``archive/data.pkl``, ``archive/data/KEY``,
    ``archive/constants.pkl``), ``body`` pickled at protocol 2."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + body + b".")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/constants.pkl", b"\x80\x02).")
        archive.writestr("archive/version", b"3\n")
    return path


FOUR_FLOATS = {"0": struct.pack("<4f", 1, 2, 3, 4)}


def test_hand_written_archive_reads(tmp_path):
    """The hand-written layout is read (so the refusals below are for the one thing each changes)."""
    path = write_archive(tmp_path / "ok.pt", _module(w=_tensor(4, (2, 2), (2, 1)), n=_int(3)), FOUR_FLOATS)
    state = read_archive_state_dict(path)
    assert list(state) == ["w"] and torch.equal(state["w"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


@pytest.mark.parametrize("position", ["whole pickle", "module attribute"])
@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "eval"), ("os", "mkdir")])
def test_pickle_payload_in_data_pkl_is_refused(tmp_path, position, module, name):
    """A data.pkl that calls os.system / eval / os.mkdir (crafted opcode by opcode) is refused at the global, in one
    line that quotes none of it; the directory the payload would create never appears."""
    marker = tmp_path / "payload-ran"
    argument = {"system": f"mkdir {marker}", "eval": f"__import__('os').mkdir({str(marker)!r})"}.get(name, str(marker))
    payload = _global(module, name) + _str(argument) + b"\x85R"  # TUPLE1, REDUCE: module.name(argument)
    body = payload if position == "whole pickle" else _module(w=_tensor(4, (4,), (1,)), extra=payload)
    path = write_archive(tmp_path / "payload.pt", body, FOUR_FLOATS)
    for load in (read_archive_state_dict, lambda p: load_encoder(f"open_clip:tiny-openai@{p}")):
        with pytest.raises(WeightsError) as info:
            load(path)
        message = assert_one_line_refusal(info, str(marker), name, "mkdir")
        assert "names a Python global that is not part of a weights archive" in message
    assert not marker.exists()


@pytest.mark.parametrize("body, storages, reason", [
    (_module(w=_tensor(10**12, (10**12,), (1,))), {"0": bytes(16)}, "size does not match"),
    (_module(w=_tensor(4, (2, 3), (3, 1))), FOUR_FLOATS, "past the end of its storage"),
    (_module(w=_tensor(4, (10**9,), (0,))), FOUR_FLOATS, "more than the file"),
    (_module(w=_tensor(4, (4,), (1,)), trap=_global("__torch__", "Trap") + b")\x81" + _tuple(_str("x")) + b"b"),
     FOUR_FLOATS, "restores itself with its own code"),
    (b"(" + b"ios\nmkdir\n", {}, "opcode"),
    (_module(w=_tensor(4, (4,), (1,), key="1")), FOUR_FLOATS, "storage the archive does not hold"),
], ids=["huge numel, tiny entry", "view past the storage", "stride-0 view of a billion", "__setstate__ state",
        "INST opcode", "missing storage"])
def test_crafted_archives_are_refused_before_allocating(tmp_path, body, storages, reason):
    """Sizes are checked before memory is allocated: a storage declared at 10**12 floats over a 16-byte entry, a
    view reaching past its storage, views that together describe more bytes than the file holds (a model of any
    size from a tiny file); and state that only the archive's own code could restore, an opcode TorchScript never
    writes, a storage that is not there."""
    path = write_archive(tmp_path / "crafted.pt", body, storages)
    with pytest.raises(WeightsError, match=reason) as info:
        read_archive_state_dict(path)
    assert_one_line_refusal(info)
    if reason == "size does not match":  # through the encoder too: OpenAI's archive, refused the same way
        with pytest.raises(WeightsError, match=reason):
            load_encoder(f"open_clip:tiny-openai@{path}")


# -- state dicts: never a full unpickling ----------------------------------------------------------------------------
def test_state_dict_pickle_is_never_fully_unpickled(tmp_path, monkeypatch, hf_cache):
    """A torch.save file whose weights-only reading raises TypeError (a BUILD torch's restricted unpickler sends to
    ``Tensor.set_`` and full pickle to ``Tensor.__setstate__``) and which then calls os.mkdir. open_clip's loader
    retries such a file with a plain ``torch.load``, a full unpickling when TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set:
    shown here, then the same file as a local-dir's and an hf-hub repo's weights, refused, nothing run."""
    marker = tmp_path / "payload-ran"
    storage = _tuple(_str("storage"), _global("torch", "FloatStorage"), _str("0"), _str("cpu"), _int(1)) + b"Q"
    tensor = _global("torch._utils", "_rebuild_tensor_v2") + _tuple(
        storage, _int(0), _tuple(_int(1)), _tuple(_int(1)), b"\x89", _global("collections", "OrderedDict") + b")R"
    ) + b"R" + b"q\x00"
    body = (tensor + _tuple(b"h\x00", b"N", b"N", b"\x89", b"N") + b"b" + b"0"  # BUILD (t, None, None, False, None)
            + _global("os", "mkdir") + _str(str(marker)) + b"\x85R" + b"0"
            + b"}" + _str("w") + b"h\x00" + b"s")  # {"w": t}
    torch.save({"w": torch.ones(1)}, tmp_path / "base.pt")
    weights = tmp_path / "open_clip_pytorch_model.bin"
    with zipfile.ZipFile(tmp_path / "base.pt") as base, zipfile.ZipFile(weights, "w") as out:
        for info in base.infolist():
            out.writestr(info.filename, b"\x80\x02" + body + b"." if info.filename.endswith("/data.pkl")
                         else base.read(info))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.warns(UserWarning, match="forcing weights_only=False"):  # open_clip's own loader, on this file
        open_clip.factory.load_state_dict(str(weights))
    assert marker.is_dir()
    marker.rmdir()

    (tmp_path / "open_clip_config.json").write_text(json.dumps(QUICK_CONFIG))
    fill_hf_cache(hf_cache, "someorg/pickled", {"open_clip_config.json": QUICK_CONFIG,
                                                "open_clip_pytorch_model.bin": weights})
    for spec in (f"open_clip:local-dir:{tmp_path}", "open_clip:hf-hub:someorg/pickled"):
        with pytest.raises(WeightsError) as info:
            load_encoder(spec)
        assert not marker.exists()
        assert "cannot read it as a torch state dict" in assert_one_line_refusal(info, str(marker), "mkdir")


# -- nothing in the package can run a weights file ---------------------------------------------------------------------
def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def unsafe_loads(source: str) -> list[str]:
    """Calls (and imports) in ``source`` that can run code from a file: ``torch.jit.load``, open_clip's
    ``load_openai_model``, ``pickle.load(s)``, ``torch.load`` without ``weights_only=True``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            module = node.module or ""
            if ("load_openai_model" in names or (module.endswith("jit") and "load" in names)
                    or (module == "pickle" and names & {"load", "loads"}) or (module == "torch" and "load" in names)):
                found.append(f"line {node.lineno}: from {module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Call) and (name := _dotted(node.func)):
            if name == "load_openai_model" or name.endswith((".load_openai_model", "jit.load", "pickle.load",
                                                             "pickle.loads")):
                found.append(f"line {node.lineno}: {name}")
            elif name.endswith(("torch.load", "serialization.load")) and not any(
                    kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                    for kw in node.keywords):
                found.append(f"line {node.lineno}: {name} without weights_only=True")
    return sorted(found, key=lambda hit: int(hit.split(":")[0].removeprefix("line ")))


def test_the_scan_finds_unsafe_loads():
    source = "\n".join([
        "import torch, pickle, open_clip", "from torch.jit import load", "from pickle import loads",
        "torch.jit.load(p)", "open_clip.load_openai_model(p)", "pickle.load(f)", "pickle.loads(b)", "torch.load(p)",
        "torch.load(p, weights_only=False)", "torch.serialization.load(p)",
        "torch.load(p, map_location='cpu', weights_only=True)",  # the one safe call
    ])
    assert [line.split(":")[0] for line in unsafe_loads(source)] == [f"line {n}" for n in range(2, 11)]


def test_no_source_file_loads_weights_unsafely():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    found = [f"{path.relative_to(SRC)} {hit}" for path in files for hit in unsafe_loads(path.read_text())]
    assert not found, found
