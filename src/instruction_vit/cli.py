"""``ivit``: train, evaluate, predict, build prompt banks, run the offline demo."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .errors import ConfigError, DataError, MissingFileError, RunFolderError, UserError
from .limits import MAX_FILE_SIZE, QUEUE_SIZE
from .progress import reporting

app = typer.Typer(help="Instruction-ViT: multi-modal prompts for instruction learning in ViT.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
prompts_app = typer.Typer(help="Build or inspect a prompt bank.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")
data_app = typer.Typer(help="Check a data set before training.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True)  # messages and log lines stay one line each (tables still fit the width)
ENCODER_HELP = ("Prompt encoder spec in place of the recorded one: a model folder names no files of the machine that "
                "wrote it, so one trained over a local CLIP file needs yours (checked against its recorded weights).")
IMAGE_ENCODER_HELP = "Likewise for a separate image prompt encoder."
#: What the command reports in one line with exit status 2: the package's user errors, nothing broader (a bug keeps
#: its traceback).
USER_ERRORS = (UserError,)
DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


class _ConsoleHandler(logging.Handler):
    """The library's log messages, one line each on the console (warnings in yellow)."""

    def emit(self, record: logging.LogRecord) -> None:
        style = "yellow" if record.levelno >= logging.WARNING else None
        console.print(record.getMessage(), style=style, highlight=False, markup=False)


@app.callback()
def _setup() -> None:
    """Instruction-ViT: multi-modal prompts for instruction learning in ViT."""
    library = logging.getLogger("instruction_vit")
    library.setLevel(logging.INFO)
    library.propagate = False  # its lines are printed here once, not again by a root handler another package set up
    if not any(isinstance(h, _ConsoleHandler) for h in library.handlers):
        library.addHandler(_ConsoleHandler())


def user_errors(fn):
    """Bad input ends with one clear line and exit code 2, not a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            console.print(f"[bold red]error:[/] {_one_line(err)}", highlight=False)
            raise typer.Exit(2) from None
    return wrapper


class _RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.3g}/s", style="progress.data.speed")


def _one_line(err: BaseException) -> str:
    """The error's own message: a DataLoader worker re-raises it with the worker's traceback in front."""
    message = str(err)
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
    return _one_sentence_end(message.strip())


def _one_sentence_end(message: str) -> str:
    """A message that quotes another error can end a sentence twice ("failed: no such file.."): once is enough."""
    return re.sub(r"(?<!\.)\.\.(?=\s|$)", ".", message)


class _Bars:
    """The library's progress reporter (:mod:`instruction_vit.progress`) as rich progress bars."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def start(self, description: str, total: int | None):
        return self.progress.add_task(description, total=total)

    def advance(self, handle, amount: int = 1, description: str | None = None) -> None:
        if description is None:
            self.progress.advance(handle, amount)
        else:
            self.progress.update(handle, advance=amount, description=description)

    def stop(self, handle) -> None:
        self.progress.remove_task(handle)


@contextlib.contextmanager
def _progress():
    """Progress bars (rate, elapsed, ETA) for the library's long steps inside the block; yields the rich Progress."""
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True)
    with bars, reporting(_Bars(bars)):
        yield bars


@app.command()
@user_errors
def train(
    out: Annotated[Path, typer.Option(help="Run folder (config, metrics, checkpoints, results).")],
    config: Annotated[Optional[Path], typer.Option(help="YAML config; defaults apply where it is silent.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="section.key=value overrides.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUT from its last checkpoint (overrides may "
                                              "change only how it runs: train.device, data.num_workers, ...).")] = False,
    force: Annotated[bool, typer.Option(help="Start over in a non-empty OUT.")] = False,
    stop_after_epochs: Annotated[Optional[int], typer.Option(
        help="End this invocation after N epochs, resumable with --resume (time-limited jobs).")] = None,
) -> None:
    """Train a model; the resolved config is written to OUT before training starts.

    Every config key and its default: src/instruction_vit/config.py. Under torchrun
    (torchrun --nproc_per_node N -m instruction_vit train ...) it trains with DDP.
    """
    from .api import load_config
    from .api import train as run_train

    if resume:
        if config is not None:
            raise ConfigError("--resume continues with the run's own config.yaml; drop --config and give only the "
                             "overrides to change")
        if not (out / "config.yaml").is_file():
            raise RunFolderError(f"nothing to resume in {out}: it has no config.yaml")
        cfg = load_config(out / "config.yaml", overrides or [])
    else:
        cfg = load_config(config, overrides or [])
    with _progress():
        results = run_train(cfg, out, resume=resume, force=force,
                            stop_after_epochs=stop_after_epochs)
    _print_results(results)


@app.command("eval")
@user_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file, a run folder (its best checkpoint), a model "
                                                    "folder (ivit save) or hf-hub:ORG/NAME[@REVISION].")],
    split: Annotated[str, typer.Option(help="val or test.")] = "test",
    select_k: Annotated[Optional[int], typer.Option(help="Evaluate with top-K + 1 prompts.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write metrics JSON and confusion PNG here.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="data.key=value overrides, e.g. data.root=OTHER to evaluate on other images of the same classes.")] = None,
    encoder: Annotated[Optional[str], typer.Option(help=ENCODER_HELP)] = None,
    image_encoder: Annotated[Optional[str], typer.Option(help=IMAGE_ENCODER_HELP)] = None,
) -> None:
    """Evaluate a checkpoint on its data: head, score and combined routes, with or without selection (the same
    code that makes a run's results.json). A model folder names no paths: give data.root=FOLDER."""
    from .api import evaluate as evaluate_checkpoint
    from .studies.report import plot_confusion

    with _progress():
        results = evaluate_checkpoint(checkpoint, split, select_k, overrides or [], encoder=encoder,
                                      image_encoder=image_encoder)
    names = results["class_names"]
    top_n = min(5, len(names))
    for key, title in (("all_prompts", "all prompts"), (f"select_k{select_k}", f"top-{select_k}+1 prompts")):
        if key not in results:
            continue
        table = Table(title=f"{checkpoint} on {split}, {title}")
        for col in ("route", "top-1 %", f"top-{top_n} %"):
            table.add_column(col)
        for route, m in results[key].items():
            table.add_row(route, f"{m['top1']:.2f}", f"{m.get(f'top{top_n}', m['top1']):.2f}")
        console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"metrics_{split}.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        metrics = results.get(f"select_k{select_k}", results["all_prompts"])
        route = "combined" if "combined" in metrics else "head"
        plot_confusion(metrics[route]["confusion"], names, out / f"confusion_{split}.png", route)
        console.print(f"wrote {out / f'metrics_{split}.json'} and {out / f'confusion_{split}.png'}")


@app.command()
@user_errors
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file, a run folder, a model folder (ivit save) "
                                                    "or hf-hub:ORG/NAME[@REVISION].")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    top_k: Annotated[int, typer.Option(help="How many classes to show per image (at most the class count).")] = 5,
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated new class names (score head).")] = None,
    class_file: Annotated[Optional[Path], typer.Option(help="File of new class names, one per line.")] = None,
    examples: Annotated[Optional[Path], typer.Option(
        help="Example images of the new classes (one subfolder per class), for image or mixed prompts.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    encoder: Annotated[Optional[str], typer.Option(help=ENCODER_HELP)] = None,
    image_encoder: Annotated[Optional[str], typer.Option(help=IMAGE_ENCODER_HELP)] = None,
    max_pixels: Annotated[Optional[int], typer.Option(
        min=1, help="Largest image read, width x height (checked on the header, before decoding); default "
                    "150000000. Never taken from the model's folder.")] = None,
) -> None:
    """Top-k classes per image; with --classes/--class-file, among new class names (the line before the results
    says which prompts are used)."""
    from .api import load_classifier

    classifier = load_classifier(checkpoint, device, encoder=encoder, image_encoder=image_encoder)
    files = _image_files(images)
    with _progress():
        use = classifier.class_prompts(_class_list(classes, class_file), examples)
    unreadable = 0
    results = classifier.iter_predict(files, use, top_k, skip_unreadable=True, max_pixels=max_pixels)
    for i, (f, ranked) in enumerate(zip(files, results)):
        if isinstance(ranked, DataError) and len(files) == 1:
            raise ranked  # one image, unreadable: its error alone
        if i == 0:
            console.print(f"{len(use.names)} classes; {use.how}", highlight=False)
        if isinstance(ranked, DataError):
            unreadable += 1
            console.print(f"{f}: [red]unreadable[/] ({ranked})", highlight=False)
            continue
        console.print(f"{f}: " + ", ".join(f"{name} {p:.1%}" for name, p in ranked), highlight=False)
    if unreadable:
        console.print(f"[bold red]error:[/] {unreadable} of {len(files)} images could not be read (listed above)")
        raise typer.Exit(2)


@app.command()
@user_errors
def serve(
    run: Annotated[str, typer.Argument(help="A checkpoint file or run folder (any source `ivit predict` takes).")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    max_file_size: Annotated[str, typer.Option(
        help="Largest upload accepted (500KB, 20MB, 1GB or bytes); larger ones are refused before they are kept.",
    )] = MAX_FILE_SIZE,
    queue_size: Annotated[int, typer.Option(
        min=1, help="Requests waiting while one runs on the model; beyond that a visitor is told the page is busy.",
    )] = QUEUE_SIZE,
    encoder: Annotated[Optional[str], typer.Option(help=ENCODER_HELP)] = None,
    image_encoder: Annotated[Optional[str], typer.Option(help=IMAGE_ENCODER_HELP)] = None,
) -> None:
    """The demo page: drop an image, edit the class names, see the top-5 per output and which prompts were used
    (needs gradio, the app extra: in a checkout, pip install -e '.\\[app]'; make's .venv has it). Offline; runs until Ctrl-C. Limits per request: one
    image, at most 1000 class names of at most 200 characters; nothing is written into the run or the prompt cache,
    uploads are deleted once read."""
    from .app import serve as serve_page

    serve_page(run, host, port, device, max_file_size=max_file_size, queue_size=queue_size, encoder=encoder,
               image_encoder=image_encoder,
               on_ready=lambda url: console.print(f"demo page for {run}: {url} (Ctrl-C stops it)", highlight=False))


@app.command()
@user_errors
def save(
    run: Annotated[str, typer.Argument(help="A run folder, checkpoint file or model folder.")],
    folder: Annotated[Path, typer.Argument(help="The model folder to write (new, empty, or written by ivit save).")],
    license: Annotated[str, typer.Option(help="License in the model card's front matter.")] = "mit",
    force: Annotated[bool, typer.Option(help="Replace FOLDER if it is a model folder already.")] = False,
) -> None:
    """Write a trained model as a shareable folder: model.safetensors, prompts.safetensors (+ prompts.json),
    config.json and a README.md model card; ivit predict/eval and model.pretrained / prompts.bank_file read it.
    The folder is written whole, then put in place; it names no path of this machine."""
    from .api import save_pretrained

    with _progress():
        save_pretrained(run, folder, license=license, force=force)  # its log line says what was written


@app.command()
@user_errors
def push(
    run: Annotated[str, typer.Argument(help="A run folder, checkpoint file or model folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hugging Face repo ORG/NAME (created if missing).")],
    private: Annotated[bool, typer.Option(help="Create the repo private.")] = False,
    license: Annotated[str, typer.Option(help="License in the model card's front matter.")] = "mit",
) -> None:
    """Upload the folder ivit save writes to the Hugging Face Hub (token: `hf auth login` or HF_TOKEN); then
    hf-hub:ORG/NAME works wherever a checkpoint does."""
    from .api import push_to_hub

    with _progress():
        url = push_to_hub(run, repo_id, private=private, license=license)
    console.print(f"pushed to {url}; load it with: ivit predict hf-hub:{repo_id} IMAGE", highlight=False)


@app.command("export")
@user_errors
def export(
    run: Annotated[str, typer.Argument(help="A checkpoint file or run folder (any source `ivit predict` takes).")],
    out: Annotated[Path, typer.Option(help="The .onnx file to write.")],
    fmt: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    prompts_input: Annotated[bool, typer.Option(
        help="Prompt features as graph inputs (new class names; features from the run's encoder) instead of "
             "the checkpoint's own, baked in.")] = False,
    select_k: Annotated[Optional[int], typer.Option(
        help="Top-K+1 prompt selection in the graph; adds the input `ranking` [B, N] (the ranker's scores).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
) -> None:
    """Export the model to ONNX (image -> logits, scores; dynamic batch; class names and preprocessing in the
    metadata), checked in ONNX Runtime against PyTorch before it is written (needs onnx and onnxruntime, the onnx
    extra: in a checkout, pip install -e '.\\[onnx]'; make's .venv has them)."""
    from .api import export_onnx

    export_onnx(run, out, fmt=fmt, prompts_input=prompts_input, select_k=select_k, opset=opset)


@prompts_app.command("build")
@user_errors
def prompts_build(
    out: Annotated[Path, typer.Option(help="Bank path: writes OUT.safetensors and OUT.json.")],
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names.")] = None,
    class_file: Annotated[Optional[Path], typer.Option(help="Class names, one per line.")] = None,
    folder: Annotated[Optional[Path], typer.Option(
        help="Image folder (class subfolders): class names, and image prompts from its training split only.")] = None,
    kind: Annotated[str, typer.Option(help="text, image or mixed.")] = "text",
    encoder: Annotated[str, typer.Option(help="Prompt encoder spec, e.g. conse, minilm, open_clip:...")] = "conse",
    templates: Annotated[str, typer.Option(help="Template set name or file.")] = "simple",
    per_class: Annotated[int, typer.Option(help="Images averaged per image prompt.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed choosing the prompt images.")] = 0,
    val_fraction: Annotated[float, typer.Option(
        help="The folder's held-out fraction (val and test each), as data.val_fraction of the training run.")] = 0.1,
    split_seed: Annotated[int, typer.Option(help="The folder's split seed, as data.split_seed of the run.")] = 0,
    bad_images: Annotated[str, typer.Option(help="error or skip: unreadable images in --folder, as "
                                                 "data.bad_images of the run.")] = "error",
) -> None:
    """Encode class names (and/or images of each class) into a prompt bank. Image prompts come from the
    folder's training split (the split `ivit train data.dataset=folder` makes with the same fraction and seed), and
    the bank's JSON lists the files used."""
    from .api import build_prompts
    from .data import training_split

    if kind in ("image", "mixed") and folder is None:
        raise ConfigError(f"{kind} prompts are drawn from example images: give --folder (one subfolder per class)")
    data = training_split(folder, val_fraction, split_seed, bad_images) if folder is not None else None
    names = _class_list(classes, class_file) or (data.class_names if data is not None else None)
    if names is None:
        raise ConfigError("give the classes: --classes, --class-file or --folder")
    if data is not None and names != data.class_names:
        raise ConfigError(f"--folder has classes {data.class_names[:5]}, which differ from the given class names")
    with _progress():
        bank = build_prompts(names, encoder, kind, templates=templates, images=data, per_class=per_class, seed=seed)
    path = bank.save(out)
    console.print(f"wrote {path} and {path.with_suffix('.json')}: {bank.num_classes} classes, "
                  f"{kind} prompts, dim {bank.prompt_dim}, key {bank.key}")
    if "image_ids" in bank.meta:
        console.print(f"image prompts from the training split of {folder} (val_fraction {val_fraction}, split seed "
                      f"{split_seed}): {sum(map(len, bank.meta['image_ids']))} files, listed under image_ids in "
                      f"{path.with_suffix('.json')}", highlight=False)


@prompts_app.command("inspect")
@user_errors
def prompts_inspect(bank_path: Annotated[Path, typer.Argument(help="A bank (.safetensors or .json).")]) -> None:
    """Show what a prompt bank holds and which classes its prompts confuse most."""
    from .prompts import PromptBank

    bank = PromptBank.load(bank_path)
    console.print(f"{bank.kind} prompts for {bank.num_classes} classes, dim {bank.prompt_dim}, key {bank.key}")
    for key in ("text_encoder", "image_encoder", "templates", "per_class", "seed"):
        if key in bank.meta:
            console.print(f"  {key}: {bank.meta[key]}", highlight=False)
    for a, b, cosine in bank.closest_pairs(5):
        console.print(f"  closest: {a} ~ {b} ({cosine:.3f})", highlight=False)


@data_app.command("check")
@user_errors
def data_check(
    root: Annotated[Optional[Path], typer.Argument(help="An image folder (one subfolder per class).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Check the data of this run config instead.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="data.key=value for --config.")] = None,
    min_size: Annotated[int, typer.Option(help="Images smaller than this (short side, px) are reported.")] = 32,
    min_per_class: Annotated[int, typer.Option(help="Classes with fewer training images are reported.")] = 5,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Unreadable files, tiny images, classes with too few images, and files duplicated across splits (train/test
    leakage). Exit status 1 when something is found, 0 when the data is clean."""
    from .api import load_config
    from .data import check_data

    if (root is None) == (config is None):
        raise ConfigError("give an image folder (ROOT) or a run config (--config FILE)")
    source = root if root is not None else load_config(config, overrides or []).data
    with _progress() as progress:
        task = progress.add_task("checking images", total=None)
        report = check_data(source, min_size=min_size, min_per_class=min_per_class,
                            progress=lambda done, total: progress.update(task, completed=done, total=total))
    for line in report.lines():
        console.print(line, highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Demo folder (one run per variant, summary, plots).")] = Path("runs/demo"),
    config: Annotated[Path, typer.Option(help="The demo's config.")] = DEFAULT_DEMO_CONFIG,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="section.key=value overrides.")] = None,
    force: Annotated[bool, typer.Option(help="Use OUT even if it holds something other than an earlier demo.")] = False,
    seeds: Annotated[Optional[str], typer.Option(
        help="Comma-separated seeds: the demo once per seed (train.seed, data.split_seed, prompts.seed) into "
             "OUT/seedS, and the spread (mean ± std) in OUT/spread.md and spread.json.")] = None,
) -> None:
    """Offline Fashion-MNIST: plain ViT vs Instruction-ViT with text, image and mixed prompts."""
    from .studies.demo import run_demo, run_demo_seeds

    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds takes comma-separated integers, e.g. --seeds 0,1,2 (got {seeds!r})") from None
        with _progress():
            run_demo_seeds(config, out, seed_list, overrides or [], force=force)
        console.print((out / "spread.md").read_text(encoding="utf-8"), highlight=False, markup=False)
        console.print(f"numbers: {out / 'spread.json'}; each seed's runs and plots: {out}/seedS")
        return
    with _progress():
        rows = run_demo(config, out, overrides or [], force=force)
    table = Table(title="Fashion-MNIST demo (test top-1 %, best validation epoch)")
    for col in ("variant", "head", "head+score", "top-K+1 selection", "ranker zero-shot", "time s"):
        table.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        table.add_row(r["variant"], fmt(r["head_top1"]), fmt(r["combined_top1"]), fmt(r["selected_top1"]),
                      fmt(r["ranker_top1"]), f"{r['seconds']:.0f}")
    console.print(table)
    console.print(f"plots: {out / 'accuracy.png'}, {out / 'confusion.png'}; numbers: {out / 'summary.json'}")


SLURM = "Slurm (--launcher slurm)"


@app.command()
@user_errors
def reproduce(
    target: Annotated[str, typer.Argument(help="SPEC, SPEC/COLUMN or SPEC/COLUMN/ROW: table1, table2, fewshot, "
                                               "base2novel, crossdata, offline, or a spec YAML path "
                                               "(PATH.yaml/COLUMN/ROW selects in it).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="section.key=value for every cell, e.g. "
                                                                  "data.root=/data/torchvision; weights.BACKBONE=FILE "
                                                                  "gives one backbone its weights.")] = None,
    runs: Annotated[Path, typer.Option(help="Runs folder: cells go to RUNS/SPEC/COLUMN/ROW/seedK.")] = Path("runs"),
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds instead of the spec's.")] = None,
    weights: Annotated[Optional[Path], typer.Option(
        help="YAML map BACKBONE: SOURCE (a weights file, 'timm' for timm's sources, 'random' for random init).")] = None,
    dry_run: Annotated[bool, typer.Option(help="List the cells, their run folders and weights (with --launcher "
                                               "slurm: the sbatch parameters); run nothing.")] = False,
    status: Annotated[bool, typer.Option(help="Show where each selected cell stands (done with its top-1, "
                                              "running, queued, failed, to run, stale); run nothing.")] = False,
    force: Annotated[bool, typer.Option(help="Rerun cells that have results (or were run under other settings).")]
    = False,
    keep_last: Annotated[bool, typer.Option(help="Keep last.safetensors of finished cells (default: only best).")]
    = False,
    workers: Annotated[int, typer.Option(min=1, help="Run the cells in N local processes, each with its share of "
                                                     "the cores (or one of --devices).")] = 1,
    devices: Annotated[Optional[str], typer.Option(help="Comma-separated GPUs for the workers, one each in turn "
                                                        "(CUDA_VISIBLE_DEVICES), e.g. 0,1,2,3.")] = None,
    lease: Annotated[float, typer.Option(min=60, help="Seconds a cell's claim lives without its heartbeat; then "
                                                      "another process takes the cell over (at least 60: hosts "
                                                      "judge a heartbeat by the file server's clock).")] = 600.0,
    launcher: Annotated[str, typer.Option(help="local (this machine) or slurm (a job array through submitit).")]
    = "local",
    partition: Annotated[Optional[str], typer.Option(rich_help_panel=SLURM, help="Slurm partition.")] = None,
    gpus_per_cell: Annotated[int, typer.Option(min=0, rich_help_panel=SLURM,
                                               help="GPUs per cell; more than one trains it with DDP.")] = 0,
    cpus_per_cell: Annotated[Optional[int], typer.Option(min=1, rich_help_panel=SLURM,
                                                         help="CPUs per cell (torch threads, data workers).")] = None,
    mem_per_cell: Annotated[Optional[str], typer.Option(rich_help_panel=SLURM, help="Memory per cell: 32G.")] = None,
    time: Annotated[int, typer.Option("--time", min=1, rich_help_panel=SLURM,
                                      help="Minutes per job; a cell that needs more is requeued and resumes.")]
    = 24 * 60,
    max_parallel: Annotated[Optional[int], typer.Option(min=1, rich_help_panel=SLURM,
                                                        help="Cells running at once.")] = None,
    account: Annotated[Optional[str], typer.Option(rich_help_panel=SLURM, help="Slurm account.")] = None,
    qos: Annotated[Optional[str], typer.Option(rich_help_panel=SLURM, help="Slurm quality of service.")] = None,
    slurm_arg: Annotated[Optional[list[str]], typer.Option(rich_help_panel=SLURM, help=(
        "Any other sbatch option, KEY=VALUE (repeatable): --slurm-arg constraint=a100."))] = None,
    wait: Annotated[bool, typer.Option(rich_help_panel=SLURM, help="Wait for the jobs and show the cells' progress "
                                                                   "(Ctrl-C stops waiting, not the jobs).")] = True,
) -> None:
    """Run the cells of an experiment spec: finished cells with the same settings are skipped, interrupted ones
    resumed; a cell run under other settings is refused unless --force.

    Backbone weights go per backbone (weights.vit_base_patch16_224=FILE, or --weights MAP.yaml); a cell whose
    backbone has none is reported as not run, never trained from random init unless asked (weights.NAME=random).
    Each cell is claimed before it runs, so any number of commands (--workers, Slurm jobs, other nodes) on one
    runs folder train each cell once.
    """
    from .studies.grid import check_weights_map
    from .studies.specs import load_spec, split_weights

    if ".yaml" in target:  # a spec file, maybe with a selection after it: PATH.yaml/COLUMN/ROW
        spec_name, _, select = target.partition(".yaml")
        spec_name, select = spec_name + ".yaml", select.removeprefix("/")
    else:
        spec_name, _, select = target.partition("/")
    if launcher not in ("local", "slurm"):
        raise ConfigError(f"--launcher is local or slurm, not {launcher!r}")
    slurm_given = [name for name, value, default in (
        ("--partition", partition, None), ("--gpus-per-cell", gpus_per_cell, 0),
        ("--cpus-per-cell", cpus_per_cell, None), ("--mem-per-cell", mem_per_cell, None), ("--time", time, 24 * 60),
        ("--max-parallel", max_parallel, None),
        ("--account", account, None), ("--qos", qos, None), ("--slurm-arg", slurm_arg, None), ("--no-wait", wait, True),
    ) if value != default]
    if launcher == "local" and slurm_given:
        raise ConfigError(f"{', '.join(slurm_given)} go with --launcher slurm")
    if launcher == "slurm" and (workers > 1 or devices):
        raise ConfigError("--workers and --devices run local workers; with --launcher slurm each cell is a job "
                          "(--gpus-per-cell, --max-parallel)")
    if devices and workers == 1:
        raise ConfigError("--devices goes with --workers N (one device per worker, in turn)")
    spec = load_spec(spec_name)
    seed_list = _seed_list(seeds)
    rest, weight_map = split_weights(overrides or [], weights)
    check_weights_map(spec, runs, weight_map)
    grid = (spec, runs, select, seed_list, rest, weight_map)
    if status or dry_run:
        _print_states(grid, launcher, status)
        if dry_run and launcher == "slurm":
            _print_sbatch(grid, _slurm_options(partition, gpus_per_cell, cpus_per_cell, mem_per_cell, time,
                                               max_parallel, account, qos, slurm_arg), force)
        return
    if launcher == "slurm":
        options = _slurm_options(partition, gpus_per_cell, cpus_per_cell, mem_per_cell, time, max_parallel, account,
                                 qos, slurm_arg)
        again = shlex.join([target, "--runs", str(runs), *(["--seeds", seeds] if seeds else []),
                            *(["--weights", str(weights)] if weights else []), *(overrides or [])])
        done = _run_on_slurm(grid, again, options, force, keep_last, lease, wait)
        if done is None:
            return
    elif workers > 1:
        from .studies.runner import finish
        from .studies.workers import run_workers

        done = finish(run_workers(*grid, workers=workers, devices=devices.split(",") if devices else None,
                                  force=force, keep_last=keep_last, lease=lease))
    else:
        from .studies.runner import run_cells

        with _progress():
            done = run_cells(*grid[:5], force, weight_map, keep_last, lease=lease)
    console.print(f"ran {len(done)} cell(s); summarise with: ivit report {spec_name} --runs {runs}")


def _seed_list(seeds: str | None) -> list[int] | None:
    """``--seeds 1,2,3`` as a list (``None``: the spec's seeds)."""
    if seeds is None:
        return None
    try:
        found = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, e.g. --seeds 1,2,3 (got {seeds!r})") from None
    if any(seed < 0 for seed in found):
        raise ConfigError(f"--seeds takes seeds of 0 or more (got {seeds}): numpy and the splits take no negative seed")
    if len(set(found)) != len(found):
        raise ConfigError(f"--seeds names a seed twice ({seeds}): each seed is one cell, trained once")
    return found


def _print_states(grid: tuple, launcher: str, as_table: bool) -> None:
    """The selected cells' states: one line each (the dry run: with folder and what it reads) or one table."""
    from .studies.slurm import job_states
    from .studies.states import cell_states, summary

    spec, runs = grid[0], grid[1]
    states = cell_states(*grid, jobs=job_states(spec, runs))
    if as_table:
        table = Table(title=f"{spec['name']} in {runs}")
        for column in ("cell", "state", "detail"):
            table.add_column(column)
        for s in states:
            table.add_row(s.cell.name, s.state, s.detail)
        console.print(table)
    else:
        for s in states:
            state = f"{s.state}: {s.detail}" if s.detail else s.state
            console.print(f"{s.cell.name}: {s.cell.folder} ({state}; {s.reads})", highlight=False)
    console.print(summary(states), highlight=False)


def _slurm_options(partition, gpus_per_cell, cpus_per_cell, mem_per_cell, time, max_parallel, account, qos,
                   slurm_arg):
    from .studies.slurm import SlurmOptions, parse_slurm_args

    return SlurmOptions(partition, gpus_per_cell, cpus_per_cell, mem_per_cell, time, max_parallel, account, qos,
                        parse_slurm_args(slurm_arg or []))


def _print_sbatch(grid: tuple, options, force: bool) -> None:
    from .studies.grid import cells
    from .studies.slurm import preview

    for line in preview(grid[0], grid[1], list(cells(*grid)), options, force):
        console.print(line, highlight=False, markup=False)


def _run_on_slurm(grid: tuple, again: str, options, force: bool, keep_last: bool, lease: float, wait: bool):
    """Submit the cells, then (``wait``) follow them until their jobs end; ``None`` when not waiting. ``again``: what
    follows ``ivit reproduce`` in this command, for the line on how to watch."""
    from .studies.runner import finish, prepare
    from .studies.slurm import submit, watch, watch_hint

    spec, runs, _, _, rest, weight_map = grid
    found = prepare(*grid, force, lease)
    submission = submit(spec, runs, found, options, overrides=rest, weights=weight_map, keep_last=keep_last,
                        lease=lease)
    for s in submission.left:
        console.print(f"{s.cell.name}: {s.state}{': ' + s.detail if s.detail else ''}; not submitted", highlight=False)
    if not submission.jobs:
        console.print("nothing to submit", highlight=False)
        return None
    if not wait:
        console.print(watch_hint(spec, runs, submission, again), highlight=False)
        return None
    try:
        outcome = watch(spec, runs, [c for c in found if c.name in submission.jobs], target=again)
    except KeyboardInterrupt:
        console.print(watch_hint(spec, runs, submission, again), highlight=False)
        raise typer.Exit(130) from None
    return finish(outcome)


@app.command()
@user_errors
def report(
    spec_name: Annotated[str, typer.Argument(help="table1, table2, fewshot, base2novel, crossdata, offline, or a "
                                                  "spec YAML path.")],
    runs: Annotated[Path, typer.Option(help="The runs folder reproduce wrote to.")] = Path("runs"),
    out: Annotated[Optional[Path], typer.Option(help="Folder for NAME.md and NAME.png (default: RUNS/SPEC).")] = None,
) -> None:
    """Markdown table of measured mean ± std over seeds beside the paper's numbers, and a bar chart."""
    from .studies.measurements import collect
    from .studies.specs import load_spec
    from .studies.report import bar_chart, markdown_report

    spec = load_spec(spec_name)
    records = collect(spec, runs)
    if not any(r["values"] for r in records):
        raise RunFolderError(f"no results under {runs / spec['name']}: run `ivit reproduce {spec_name}` first")
    out = out or runs / spec["name"]
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_report(spec, records, f"ivit reproduce {spec_name} && ivit report {spec_name}")
    (out / f"{spec['name']}.md").write_text(text, encoding="utf-8")
    bar_chart(records, out / f"{spec['name']}.png", spec["name"])
    console.print(text, highlight=False, markup=False)
    console.print(f"wrote {out / (spec['name'] + '.md')} and {out / (spec['name'] + '.png')}")


def _class_list(classes: str | None, class_file: Path | None) -> list[str] | None:
    """The new class names of ``--classes`` / ``--class-file``; given but empty is an error, not "the run's own"."""
    if classes is not None and class_file is not None:
        raise ConfigError("give --classes or --class-file, not both")
    if class_file is not None:
        if not class_file.is_file():
            raise MissingFileError(f"class file not found: {class_file}")
        names = [line.strip() for line in class_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise ConfigError(f"class file {class_file} names no classes (one name per line)")
        return names
    if classes is not None:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if not names:
            raise ConfigError("--classes names no classes: give comma-separated names, e.g. --classes \"cat, dog\", "
                              "or leave it out for the run's own classes")
        return names
    return None


def _image_files(paths: list[Path]) -> list[Path]:
    from .data.datasets import IMAGE_SUFFIXES

    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise MissingFileError(f"no such image or folder: {p}")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, paths))}")
    return files


def _print_results(results: dict) -> None:
    if "all_prompts" not in results:  # stopped early (--stop-after-epochs): nothing tested yet
        return
    table = Table(title="test top-1 % (best validation epoch)")
    table.add_column("prompts")
    routes = ("head", "score", "combined")
    for r in routes:
        table.add_column(r, justify="right")
    for key, value in results.items():
        if isinstance(value, dict) and "head" in value:
            table.add_row(key, *(f"{value[r]['top1']:.2f}" if r in value else "-" for r in routes))
    console.print(table)


def main() -> None:
    app()
