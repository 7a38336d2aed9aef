"""Every code block of README.md and docs/*.md runs as a test, or says why it cannot.

Blocks are fenced ``python``, ``bash``, ``yaml`` and ``toml`` (indented fences too). A block runs unless the line before
its fence is a marker ``<!-- not run: REASON -->``; a marked block is still checked: Python compiles, bash parses
(``bash -n``) and each of its ``ivit`` commands (also ``torchrun ... -m instruction_vit ...``) names a real command,
real options and real config keys; YAML and TOML parse.

How blocks run: README.md, then docs/*.md in name order, are one session in one folder, the *world* (made by
:func:`make_world`), so a later block may use what an earlier one made (``runs/mine`` from the README's own-images
recipe):

* ``images/``: a tiny image folder (classes red, green, blue; 12 noisy 32-px images each); ``photo.jpg`` and
  ``img.jpg``: one image each; ``more_photos/``: two images; ``new_classes/``: example images, one subfolder per class;
  ``examples/``: the repository's.
* A bash block holds ``ivit ...`` (or ``.venv/bin/ivit ...``) commands only; each runs in this process through the
  CLI and must exit 0. Every ``ivit train`` gets :data:`TINY` added after its own overrides (one epoch of 16-px
  images through a 1-block ViT): sizes only, so the documented command runs as written, in seconds.
* A python block is executed in the world's folder; what it prints is kept for the tests below.
* A python block right after a line naming a package file (```src/instruction_vit/.../NAME.py`:``) is that file: it
  is imported as that module beside the package's own (its registry read again, as a new process would) and must
  register a new entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from helpers import colour_folder
from PIL import Image
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TINY = ["data.img_size=16", "model.backbone_kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
        "train.epochs=1", "train.batch_size=8", "data.num_workers=0", "data.randaugment=null", "train.mixup=0",
        "train.cutmix=0"]
LANGUAGES = ("python", "bash", "yaml", "toml")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
MARKER = re.compile(r"^\s*<!--\s*not run:\s*(?P<why>.+?)\s*-->\s*$")
PACKAGE_FILE = re.compile(r"^`src/(?P<module>instruction_vit/[\w/]+)\.py`:$")


@dataclasses.dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # of the opening fence
    lang: str
    code: str
    not_run: str | None  # the marker's reason
    module: str | None  # the package module the block is the file of

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order."""
    lines, found, i = path.read_text(encoding="utf-8").splitlines(), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if re.match(r"^\s*```\s*$", lines[j]))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker, package_file = MARKER.match(before), PACKAGE_FILE.match(before.strip())
        if opening["lang"] in LANGUAGES:
            found.append(Block(str(path.relative_to(ROOT)), i + 1, opening["lang"],
                               textwrap.dedent("\n".join(lines[i + 1:end])) + "\n", marker and marker["why"],
                               package_file and package_file["module"].replace("/", ".")))
        i = end + 1
    return found


BLOCKS = [block for path in DOCS for block in read_blocks(path)]


# -- bash: commands, and what the CLI knows ------------------------------------------------------------------------
def commands(code: str) -> list[list[str]]:
    """A bash block's commands as argument lists: continued lines joined, comments and here-document bodies left out."""
    found, pending, heredoc = [], "", None
    for line in code.splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        opened = re.search(r"<<-?\s*'?(\w+)'?", pending)
        heredoc = opened.group(1) if opened else None
        args = shlex.split(pending, comments=True)
        if args:
            found.append(args)
        pending = ""
    return found


def ivit_arguments(args: list[str]) -> list[str] | None:
    """The arguments of an ``ivit`` command (``ivit``, ``.venv/bin/ivit`` or ``torchrun ... -m instruction_vit``)."""
    if args[0] in ("ivit", ".venv/bin/ivit"):
        return args[1:]
    if args[0] == "torchrun" and "-m" in args and args[args.index("-m") + 1] == "instruction_vit":
        return args[args.index("-m") + 2:]
    return None


def check_command(args: list[str]) -> None:
    """The command, its options and its ``section.key=value`` config keys exist (values are not checked)."""
    from instruction_vit.cli import app
    from instruction_vit.config import Config, load_config

    command, rest = typer.main.get_command(app), list(args)
    while getattr(command, "commands", None) and rest and rest[0] in command.commands:  # a group: its subcommand
        command = command.commands[rest.pop(0)]
    shown = f"`ivit {' '.join(args)}`"
    assert not getattr(command, "commands", None), f"{shown}: no such command"
    options = {name for param in command.params for name in (*param.opts, *param.secondary_opts)} | {"--help"}
    sections = tuple(f.name for f in dataclasses.fields(Config))
    for token in rest:
        if token.startswith("--"):
            assert token.split("=")[0] in options, f"{shown}: {command.name} has no option {token}"
        elif re.match(rf"^({'|'.join(sections)})\.\w[\w.]*=", token):
            load_config(None, [token])  # an unknown key is a ConfigError naming it


# -- the world and the session -------------------------------------------------------------------------------------
def make_world(root: Path) -> Path:
    """The folder the blocks run in (see the module doc)."""
    colour_folder(root / "images", per_class=12, size=32)
    shutil.copytree(ROOT / "examples", root / "examples")
    rng = np.random.default_rng(7)

    def picture(path: Path, size=(20, 28)) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)

    for name in ("photo.jpg", "img.jpg", "more_photos/a.jpg", "more_photos/b.png", "new_classes/crimson/1.png",
                 "new_classes/navy/1.png"):
        picture(root / name)
    return root


@dataclasses.dataclass
class Outcome:
    error: str | None = None
    printed: list[tuple] = dataclasses.field(default_factory=list)
    namespace: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_bash(block: Block) -> None:
    from instruction_vit.cli import app

    for args in commands(block.code):
        arguments = ivit_arguments(args)
        assert arguments is not None, (f"{block.id}: `{' '.join(args)}` is not an ivit command: run only ivit "
                                       "commands in a block, or mark the block <!-- not run: why -->")
        check_command(arguments)
        if arguments[0] == "train":
            arguments = [*arguments, *TINY]
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 0, f"{block.id}: `{' '.join(args)}` exited {result.exit_code}:\n{result.output}"


def run_python(block: Block, outcome: Outcome) -> None:
    scope: dict[str, Any] = {"__name__": "__readme__", "print": lambda *args, **_: outcome.printed.append(args)}
    exec(compile(block.code, block.id, "exec"), scope)
    outcome.namespace = scope


def run_package_file(block: Block, folder: Path) -> None:
    """Import the block as the module it is the file of, beside the package's own modules; it must register."""
    from instruction_vit.methods import METHODS
    from instruction_vit.data.sets import DATASETS
    from instruction_vit.prompts.encoders.registry import ENCODERS

    package_name, name = block.module.rsplit(".", 1)
    (registry,) = [r for r in (ENCODERS, DATASETS, METHODS) if r.package == package_name]
    package = importlib.import_module(package_name)
    folder = folder / f"{Path(block.file).stem}-{block.line}"  # the file alone beside the package's own
    folder.mkdir()
    (folder / f"{name}.py").write_text(block.code, encoding="utf-8")
    saved = list(package.__path__)
    before = set(registry.names())
    try:
        package.__path__.append(str(folder))
        with registry.isolated(reload=True):
            added = set(registry.names()) - before
            assert added, f"{block.id}: importing {block.module} registered nothing in the {registry.kind} registry"
    finally:
        package.__path__[:] = saved
        sys.modules.pop(block.module, None)


def check_only(block: Block) -> None:
    """What a block not run still passes: it parses, and its ivit commands exist."""
    if block.lang == "python":
        compile(block.code, block.id, "exec")
    elif block.lang == "bash":
        parsed = subprocess.run(["bash", "-n"], input=block.code, text=True, capture_output=True)
        assert parsed.returncode == 0, f"{block.id}: {parsed.stderr}"
        for args in commands(block.code):
            arguments = ivit_arguments(args)
            if arguments is not None:
                check_command(arguments)
    elif block.lang == "yaml":
        yaml.safe_load(block.code)
    else:
        tomllib.loads(block.code)


def run_block(block: Block, files: Path) -> Outcome:
    """Run (or check) one block in the current folder; package files are written under ``files``."""
    outcome = Outcome()
    try:
        if block.not_run or block.lang in ("yaml", "toml"):
            check_only(block)
        elif block.module:
            run_package_file(block, files)
        elif block.lang == "bash":
            run_bash(block)
        else:
            run_python(block, outcome)
    except Exception as err:  # noqa: BLE001 - recorded for the block's own test, which fails with it
        outcome.error = f"{type(err).__name__}: {err}"
    return outcome


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> tuple[Path, dict[str, Outcome]]:
    """Every block run once, in order, in one world; the outcome of each by its id."""
    world = make_world(tmp_path_factory.mktemp("world"))
    files = tmp_path_factory.mktemp("package_files")
    with contextlib.chdir(world):
        outcomes = {block.id: run_block(block, files) for block in BLOCKS}
    return world, outcomes


def outcome_of(session, file: str, contains: str) -> tuple[Block, Outcome | None]:
    """The block of ``file`` holding ``contains``, and how it ran in the session (``None`` without one)."""
    (block,) = [b for b in BLOCKS if b.file == file and contains in b.code]
    return block, session[1][block.id] if session is not None else None


# -- the tests -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_the_block_runs_or_says_why_not(session, block):
    outcome = session[1][block.id]
    assert outcome.error is None, outcome.error


def test_the_readme_leads_with_the_commands_the_demo_own_images_the_api_and_sharing():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[:6] == ["Set-up and the two commands", "The demo: plain ViT vs Instruction-ViT on Fashion-MNIST, "
                            "offline", "Your own images", "The Python API", "Share", "Export to ONNX"]
    assert len(text.splitlines()) < 260  # the reference lives in docs/


def test_every_relative_link_leads_to_a_file():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if not re.match(r"^[a-z]+:", target):
                assert (path.parent / target).exists(), f"{path.relative_to(ROOT)}: {target} does not exist"


def test_the_own_images_recipe_trains_offline_on_a_folder(session):
    block, outcome = outcome_of(session, "README.md", "ivit train --out runs/mine")
    assert block.not_run is None and outcome.error is None
    assert "--config examples/own_images.yaml data.root=images" in block.code
    config = yaml.safe_load((session[0] / "runs" / "mine" / "config.yaml").read_text())
    assert config["prompts"]["encoder"] == "conse@64" and config["model"]["pretrained"] is None  # nothing to fetch
    assert config["data"]["dataset"] == "folder" and config["data"]["root"] == "images"
    assert (session[0] / "runs" / "mine" / "results.json").is_file()


def test_the_api_example_trains_loads_and_predicts_one_image_and_new_names(session):
    block, outcome = outcome_of(session, "README.md", "ivit.load_classifier(\"runs/tiny\")")
    assert len([line for line in block.code.splitlines() if line.strip()]) <= 10
    encoders, datasets, experiments = outcome.printed[0]
    assert "conse" in encoders and "folder" in datasets and "table1" in experiments
    classifier, one = outcome.printed[1]
    assert repr(classifier).startswith("Classifier(") and classifier.classes == ["blue", "green", "red"]
    assert len(one) == 2 and one[0][0] in classifier.classes  # one image: its ranking
    (new,) = outcome.printed[2]
    assert len(new) == 1 and {name for name, _ in new[0]} == {"crimson", "navy", "lime"}
    assert abs(sum(p for _, p in new[0]) - 1) < 1e-5


def test_the_ten_lines_use_the_top_level_api(session):
    block, outcome = outcome_of(session, "README.md", "ivit.create_model(")
    assert len([line for line in block.code.splitlines() if line.strip()]) <= 10
    imports = re.findall(r"^(?:from|import) ([\w.]+)", block.code, re.M)
    assert "instruction_vit" in imports and not [m for m in imports if m.startswith("instruction_vit.")]
    out = outcome.namespace["out"]
    assert out.logits.shape == (8, 10) and out.scores.shape == (8, 10)
    assert outcome.namespace["model"].prompt_embed.proj.prompts.weight.grad is not None  # the loss reached the prompts
    assert list((session[0] / ".cache").glob("text-*.safetensors"))


def test_the_onnx_runtime_snippet_gives_ivit_predicts_answer(tmp_path):
    """The README's ONNX Runtime snippet prints the class and probability ``ivit predict`` gives (the mean of the
    head's and the prompt scores' softmax), also on images whose prompt scores alone rank another class first, so a
    snippet printing ``scores.argmax()`` fails here. The run: the README's recipe with TINY sizes and 4 epochs (after
    one, the head is still near uniform and the scores alone decide)."""
    import torch

    import instruction_vit as ivit
    from instruction_vit.cli import app

    world, runner = make_world(tmp_path), CliRunner()
    block, _ = outcome_of(None, "README.md", "onnxruntime")
    with contextlib.chdir(world):
        for args in (["train", "--out", "runs/mine", "--config", "examples/own_images.yaml", "data.root=images", *TINY,
                      "train.epochs=4", "train.warmup_epochs=0"], ["export", "runs/mine", "--out", "mine.onnx"]):
            assert runner.invoke(app, args).exit_code == 0
        classifier = ivit.load_classifier("runs/mine", "cpu")
        rng, chosen = np.random.default_rng(11), {True: [], False: []}  # does the score route alone rank otherwise?
        while len(chosen[True]) < 3 or len(chosen[False]) < 3:
            assert len(chosen[False]) < 400, "no image on which the scores alone rank another class first"
            pixels = np.clip(rng.integers(0, 255, 3) + rng.normal(0, 40, (int(rng.integers(12, 48)),
                                                                           int(rng.integers(12, 48)), 3)), 0, 255)
            path = world / f"candidate{sum(map(len, chosen.values()))}.jpg"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            with torch.no_grad():
                out = classifier.model(classifier.preprocess(path)[None], classifier.model.bank_prompts())
            combined = out.logits.softmax(-1) + out.scores.softmax(-1)
            chosen[int(out.scores.argmax()) != int(combined.argmax())].append(path)
        for path in chosen[True][:3] + chosen[False][:3]:
            shutil.copy(path, world / "img.jpg")
            outcome = run_block(block, world)
            predicted = runner.invoke(app, ["predict", "runs/mine", "img.jpg", "--top-k", "1"])
            assert outcome.error is None and predicted.exit_code == 0, (outcome.error, predicted.output)
            name, probability = outcome.printed[0]
            assert predicted.output.splitlines()[-1] == f"img.jpg: {name} {probability}", (path, predicted.output)


def test_the_export_doc_ranks_new_names_as_predict_does(session):
    import instruction_vit as ivit

    _, outcome = outcome_of(session, "docs/export.md", "onnx_inputs()")
    (name,), names = outcome.printed[0], outcome.namespace["names"]
    classifier = ivit.load_classifier(session[0] / "runs" / "mine", "cpu")
    assert name == classifier.predict(session[0] / "photo.jpg", classes=names, top_k=1)[0][0]


def test_a_marked_block_is_still_checked():
    """A command that does not exist, an option or a config key that does not: each is found without running it."""
    for code, message in (("ivit trian --out x\n", "no such command"), ("ivit train --outt x\n", "no option --outt"),
                          ("ivit train --out x model.backbon=vit\n", "model.backbon")):
        block = Block("x.md", 1, "bash", code, "a reason", None)
        with pytest.raises(Exception, match=message):
            check_only(block)
    assert commands("A=1\ncat > f <<'Y'\nivit nothing here\nY\nivit eval runs/x \\\n  --out e  # note\n") == [
        ["A=1"], ["cat", ">", "f", "<<Y"], ["ivit", "eval", "runs/x", "--out", "e"]]


def test_nothing_says_to_install_the_package_from_an_index():
    """``instruction-vit`` is not on a package index: the README, docs, model cards (written by ``sharing.py``) and
    messages say how to install it from its repository or a checkout, never ``pip install instruction-vit[...]``."""
    from_index = re.compile(r"pip install '?instruction-vit(\[[\w,]*\\?\]?)?'?(?!\S*\s*@)")
    sources = [*DOCS, *sorted((ROOT / "src").rglob("*.py"))]
    found = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path in sources
             for m in from_index.finditer(path.read_text(encoding="utf-8"))]
    assert found == []
