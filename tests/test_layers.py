"""The layer contract names every part of the package, so a new folder or module cannot slip past it."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "instruction_vit"


def test_every_package_folder_and_module_is_in_the_layer_contract():
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    named = {part.strip().strip("()") for layer in contract["layers"] for part in layer.replace(":", "|").split("|")}
    parts = {f"instruction_vit.{p.stem if p.is_file() else p.name}" for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").is_file()}
    assert parts - named == set(), "add these to the layers contract in pyproject.toml"
    assert named - parts == set(), "these layers no longer exist"


def test_help_imports_no_torch():
    """``ivit --help`` and every ``ivit CMD --help`` parse without importing torch (or timm, open_clip, gradio):
    the CLI only parses, the library is imported by the command that runs."""
    import subprocess
    import sys

    code = """
import sys, click, typer
from typer.testing import CliRunner
from instruction_vit.cli import app
def paths(command, path=()):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from paths(sub, (*path, name))
for path in paths(typer.main.get_command(app)):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, (path, result.output)
heavy = sorted(m for m in ("torch", "timm", "open_clip", "gradio", "numpy") if m in sys.modules)
print("heavy:", heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "heavy: []" in done.stdout, done.stdout


def test_no_caller_probes_a_model_for_what_it_can_do():
    """What a classifier can do is declared (``capabilities``, :class:`instruction_vit.outputs.Capabilities`): no
    module asks ``getattr``/``hasattr`` for a capability's method or attribute."""
    import re

    declared = ("set_classes", "end_epoch", "final_model", "external_state", "external_weights_id",
                "weights_report", "bank_prompts", "prompt_embed", "set_prompt_bank")
    probe = re.compile(r"(getattr|hasattr)\([^)]*[\"'](" + "|".join(declared) + r")[\"']")
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if probe.search(line)]
    assert found == []
