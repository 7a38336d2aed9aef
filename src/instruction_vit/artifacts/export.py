"""ONNX export of a trained model, checked against PyTorch in ONNX Runtime before the file is written.

The graph reads ``image`` ``[B, 3, H, W]`` float32, already preprocessed (the ``preprocessing`` metadata says how:
resize, centre crop, ``(x / 255 - mean) / std``), and gives ``logits`` ``[B, num_classes]`` (the head) and, for a
model that reads prompts, ``scores`` ``[B, N]`` (the prompt scores; a model without prompts has no ``scores``
output). The batch size is dynamic. Two variants for Instruction-ViT:

* baked (default): the checkpoint's own prompt features are constants of the graph (its classes, fixed);
* ``prompts_input``: the prompt features are inputs, one per prompt source (``prompts``, or ``prompts_text`` and
  ``prompts_image``), each ``[P, D]`` with ``P`` dynamic, so new class names work in ONNX too. The features must
  come from the run's own encoder (the ``prompts`` metadata names it and its weights), e.g.
  ``load_classifier(run).class_prompts(names).prompts.onnx_inputs()`` (the arrays ONNX Runtime takes, by input
  name) or ``ivit prompts build``.

With ``select_k=K`` (paper §3.4) the graph takes a third input, ``ranking`` ``[B, N]`` (the ranker's per-class
scores, computed outside: e.g. the cosine between the encoder's image features and the text prompts), keeps each
image's top-K prompts plus one averaged "rest" token, and expands the K+1 scores back to N columns exactly as
:func:`~instruction_vit.prompts.forward_selected` does. CLIP prompt learners (CoOp and the methods that classify by
class-name text) export with their classes fixed: the whole model is traced, image tower and class texts.

The export uses PyTorch's TorchScript-based exporter (``torch.onnx.export(dynamo=False)``): it keeps the batch and
the prompt count dynamic, where ``dynamo=True`` fixes the prompt count (the model checks it as a Python int). An
export is checked before it is written: ``onnx.checker``, then ONNX Runtime against PyTorch on a batch (and a
prompt count) other than the traced one; outputs that differ by more than ``tolerance * (1 + |PyTorch|)`` or a
different top-1 are an error, and nothing is written.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import resolve_data_config
from torch import Tensor, nn

from ..version import __version__
from ..errors import ConfigError, ExportError
from ..files import atomic_write
from ..outputs import Prompts, capabilities, prompt_input_name

logger = logging.getLogger(__name__)
FORMATS = ("onnx",)
DEFAULT_OPSET = 17


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote: the file, its inputs and outputs, and the parity it measured."""

    path: Path
    inputs: list[str]
    outputs: list[str]
    max_abs_diff: float  # max |ONNX Runtime - PyTorch| over every output of the check batch
    check_batch: int
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"exported {self.path} ({', '.join(self.inputs)} -> {', '.join(self.outputs)}); ONNX Runtime vs "
                f"PyTorch on a batch of {self.check_batch}: max |diff| {self.max_abs_diff:.2e}, same top-1")


def _onnx_modules() -> tuple[Any, Any]:
    """``onnx`` and ``onnxruntime``, imported only when an export runs (the optional extra)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ConfigError(f"ONNX export needs onnx and onnxruntime ({err.name} is missing): pip install onnx "
                          "onnxruntime onnxscript (the onnx extra; in a checkout: pip install -e '.[onnx]')") from err
    return onnx, onnxruntime


# -- the graphs ------------------------------------------------------------------------------------
class PromptGraph(nn.Module):
    """Instruction-ViT as the exported graph: ``(image, *prompt features, ranking?) -> (logits, scores)``.

    ``sources``: the prompt sources read as inputs (empty: the model's stored prompts, baked in). ``select_k``:
    top-K+1 selection by the ``ranking`` input (its last input)."""

    def __init__(self, model: nn.Module, sources: Sequence[str], select_k: int | None = None):
        super().__init__()
        self.model, self.sources, self.select_k = model, tuple(sources), select_k

    def forward(self, image: Tensor, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        if self.sources:
            prompts = Prompts(dict(zip(self.sources, inputs[:len(self.sources)])))
        else:
            prompts = self.model.bank_prompts()
        if self.select_k is None:
            out = self.model(image, prompts)
            return out.logits, out.scores
        return self._selected(image, prompts, inputs[-1])

    def _selected(self, image: Tensor, prompts: Prompts, ranking: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`~instruction_vit.prompts.forward_selected` written with the class count as a tensor, so that it
        stays dynamic in the graph (the PyTorch function computes ``log(N - K)`` as a Python float)."""
        first = next(iter(prompts.features.values()))
        if self.sources:  # ranking [B, N] and prompts [N, D]: a count mismatch fails in the graph (broadcast)
            ranking = ranking + first[:, 0].unsqueeze(0) * 0
        num = torch.ones_like(first[:, 0]).sum()  # N, as a tensor
        k = self.select_k
        has_rest = bool(self.sources) or k < first.shape[0]  # baked: N is known; as inputs: N > K is required
        if self.sources:  # top-(K+1) fails in ONNX Runtime when P <= K (no rest token), rather than giving NaN
            index = ranking.topk(k + 1, dim=1).indices[:, :k]
        else:
            index = ranking.topk(min(k, first.shape[0]), dim=1).indices
        kept = index.shape[1]

        def gather(feats: Tensor) -> Tensor:
            top = feats[index]  # [B, K, D]
            if not has_rest:
                return top
            rest = (feats.sum(0) - top.sum(1)) / (num - kept)
            return torch.cat([top, rest.unsqueeze(1)], dim=1)

        out = self.model(image, prompts.map(gather))
        if has_rest:
            base = out.scores[:, kept:] - torch.log(num - kept)
        else:
            base = torch.full_like(out.scores[:, :1], float("-inf"))
        scores = torch.scatter(base + torch.zeros_like(ranking), 1, index, out.scores[:, :kept])
        return out.logits, scores


class LogitsGraph(nn.Module):
    """A model whose only output is its head: ``image -> logits`` (a plain ViT, VPT, CoOp and kin)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image).logits


# -- export ----------------------------------------------------------------------------------------
def preprocessing(model: nn.Module, img_size: int) -> dict[str, Any]:
    """The evaluation transform the engine applies (:func:`~instruction_vit.engine.run.transforms`), as data."""
    dc = resolve_data_config({}, model=model.backbone)
    return {"size": int(img_size), "mean": [float(v) for v in dc["mean"]], "std": [float(v) for v in dc["std"]],
            "interpolation": dc["interpolation"], "crop_pct": 1.0,
            "steps": "RGB; resize the shorter side to size / crop_pct; centre crop size x size; x / 255; "
                     "(x - mean) / std per channel; layout [B, 3, size, size] float32"}


def export_model_onnx(model: nn.Module, out: str | Path, *, class_names: Sequence[str], img_size: int,
                      prompts_input: bool = False, select_k: int | None = None, opset: int = DEFAULT_OPSET,
                      metadata: Mapping[str, Any] | None = None, tolerance: float = 1e-4,
                      batch_size: int = 2) -> OnnxExport:
    """Export ``model`` (an :class:`~instruction_vit.model.MethodModel`; put in eval mode on the CPU) to ``out``
    and check it (see the module doc). ``metadata`` adds entries to the file's ``metadata_props`` (values that are not
    strings as JSON)."""
    onnx, ort = _onnx_modules()
    model = model.eval().cpu()
    graph, inputs, outputs, example, axes, info = _graph(model, prompts_input, select_k, batch_size, img_size)
    meta = {"class_names": list(class_names), "preprocessing": preprocessing(model, img_size),
            "select_k": select_k, "inputs": info["inputs"], "outputs": info["outputs"], **(metadata or {})}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: name the .onnx file to write")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        fastpath = torch.backends.mha.get_fastpath_enabled()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings: what they warn of, the parity check measures
            # nn.MultiheadAttention's fused inference kernel (CLIP's towers) has no ONNX form; its plain ops do.
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                torch.onnx.export(graph, example, tmp, input_names=inputs, output_names=outputs, dynamo=False,
                                  dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
            except Exception as err:  # the exporter's own errors (an operator it cannot write, say)
                raise ExportError(f"torch.onnx.export cannot write this {type(model).__name__}: "
                                  f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
            finally:
                torch.backends.mha.set_fastpath_enabled(fastpath)
        proto = onnx.load(tmp)
        proto.doc_string = "Instruction-ViT export: " + info["doc"]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)
        try:
            onnx.checker.check_model(tmp)
        except onnx.checker.ValidationError as err:
            raise ExportError(f"the exported graph is not valid ONNX ({str(err).splitlines()[0]}): not exported") \
                from err
        result.update(_parity(graph, tmp, ort, inputs, outputs, example, prompts_input, select_k, tolerance))

    result: dict[str, Any] = {}
    atomic_write(out, write)  # with ordinary permissions, as a plain open() would create it
    export = OnnxExport(out, inputs, outputs, result["max_abs_diff"], result["check_batch"], meta)
    logger.info(export.summary())
    return export


def _graph(model: nn.Module, prompts_input: bool, select_k: int | None, batch: int, img_size: int):
    """The module to trace, its input and output names, example inputs, dynamic axes and a description."""
    image = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    described_image = {"image": f"[B, 3, {img_size}, {img_size}] float32, preprocessed (see preprocessing)"}
    caps = capabilities(model)
    bank, dims, text_classes = model.bank_prompts(), dict(caps.prompt_dims), caps.reads_class_names
    if select_k is not None and select_k < 1:
        raise ConfigError(f"--select-k must be at least 1, got {select_k}")
    if text_classes or not (dims and (bank is not None or prompts_input)):
        what = (f"{type(model).__name__} classifies by class-name text: its classes are fixed at export (image "
                "tower and class texts in the graph)" if text_classes else "this model reads no prompts")
        if prompts_input:
            raise ConfigError(f"--prompts-input: {what}; export without --prompts-input")
        if select_k is not None:
            raise ConfigError(f"--select-k: {what}, so there are no prompts to select; export without --select-k")
        return (LogitsGraph(model), ["image"], ["logits"], (image,), {"image": {0: "batch"}, "logits": {0: "batch"}},
                {"inputs": described_image, "outputs": {"logits": "[B, num_classes] float32, the head's logits"},
                 "doc": "image -> logits (no prompts)"})
    sources = list(dims) if prompts_input else []
    names = [prompt_input_name(s) for s in sources]
    n = bank.num_prompts if bank is not None else 0
    if prompts_input:
        n = max(n, (select_k or 0) + 2, 2)
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(n, dims[s], generator=gen) for s in sources]
    described = dict(described_image)
    for name, s in zip(names, sources):
        described[name] = (f"[P, {dims[s]}] float32, one prompt feature per class from the run's "
                           f"{'encoder' if s == 'prompts' else s + ' encoder'} (P dynamic"
                           + (f", P > {select_k})" if select_k else ")"))
    axes: dict[str, dict[int, str]] = {"image": {0: "batch"}, "logits": {0: "batch"}, "scores": {0: "batch"}}
    axes.update({name: {0: "num_prompts"} for name in names})
    if prompts_input:
        axes["scores"][1] = "num_prompts"
    example: list[Tensor] = [image, *feats]
    if select_k is not None:
        example.append(torch.randn(batch, n, generator=gen))
        names.append("ranking")
        axes["ranking"] = {0: "batch", 1: "num_prompts"} if prompts_input else {0: "batch"}
        described["ranking"] = ("[B, N] float32, the ranker's score of each class (higher: more likely), e.g. the "
                                "cosine between the encoder's image features and the text prompts; the top "
                                f"{select_k} classes read their own prompts, the others one averaged prompt")
    outputs = {"logits": "[B, num_classes] float32, the head's logits over the checkpoint's classes",
               "scores": "[B, N] float32, the prompt scores (scaled cosine [CLS] to each prompt), one per class"
                         + (" of the prompt inputs" if prompts_input else " of class_names")
                         + ("; top-K+1 selection: the unselected classes share the rest token's score minus "
                            "log(N - K)" if select_k else "")}
    doc = ("image" + "".join(f", {x}" for x in names) + " -> logits, scores; prompts "
           + ("as inputs" if prompts_input else "baked in") + (f"; top-{select_k}+1 selection" if select_k else ""))
    return (PromptGraph(model, sources, select_k), ["image", *names], ["logits", "scores"], tuple(example), axes,
            {"inputs": described, "outputs": outputs, "doc": doc})


def _parity(graph: nn.Module, path: str, ort: Any, inputs: list[str], outputs: list[str], example: tuple,
            prompts_input: bool, select_k: int | None, tolerance: float) -> dict[str, Any]:
    """Run the file in ONNX Runtime and the module in PyTorch on a batch one larger than the traced one (and, with
    prompt inputs, one more prompt); an :class:`ExportError` if they differ."""
    gen = torch.Generator().manual_seed(2)
    batch = example[0].shape[0] + 1
    check = [torch.randn(batch, *example[0].shape[1:], generator=gen)]
    extra = int(prompts_input)
    for name, t in zip(inputs[1:], example[1:]):
        if name == "ranking":
            check.append(torch.randn(batch, t.shape[1] + extra, generator=gen))
        else:
            check.append(torch.randn(t.shape[0] + extra, t.shape[1], generator=gen))
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(outputs, {name: t.numpy() for name, t in zip(inputs, check)})
    except Exception as err:  # onnxruntime's own error types: a graph it cannot load or run
        raise ExportError(f"ONNX Runtime cannot run the exported graph on a batch of {batch} (traced with "
                          f"{batch - 1}; the tracer may have fixed a size): {str(err).splitlines()[0]}; not exported"
                          ) from err
    with torch.no_grad():
        want = _reference(graph, check, select_k)
    worst = 0.0
    for name, g, w in zip(outputs, got, want):
        g = torch.from_numpy(g)
        if g.shape != w.shape:
            raise ExportError(f"the ONNX graph's {name} has shape {tuple(g.shape)}, PyTorch's {tuple(w.shape)}: "
                              "not exported")
        diff = (g - w).abs()
        finite = torch.isfinite(w)
        if not torch.equal(torch.isfinite(g), finite):
            raise ExportError(f"the ONNX graph's {name} is not finite where PyTorch's is: not exported")
        worst = max(worst, float(diff[finite].max()) if finite.any() else 0.0)
        if (diff[finite] > tolerance * (1 + w[finite].abs())).any():
            raise ExportError(f"ONNX Runtime and PyTorch differ by up to {worst:.2e} in {name} (tolerance "
                              f"{tolerance:g}): not exported")
        if not torch.equal(g.argmax(-1), w.argmax(-1)):
            raise ExportError(f"ONNX Runtime and PyTorch give a different top-1 in {name}: not exported")
    return {"max_abs_diff": worst, "check_batch": batch}


def _reference(graph: nn.Module, check: list[Tensor], select_k: int | None) -> list[Tensor]:
    """PyTorch's outputs for ``check``: the traced module's, and with selection
    :func:`~instruction_vit.prompts.forward_selected` itself (not the graph's tensor-count rewrite of it)."""
    if select_k is None or not isinstance(graph, PromptGraph):
        out = graph(*check)
        return [out] if isinstance(out, Tensor) else list(out)
    from ..prompts import forward_selected

    model = graph.model
    if graph.sources:
        prompts = Prompts(dict(zip(graph.sources, check[1:1 + len(graph.sources)])))
    else:
        prompts = model.bank_prompts()
    out = forward_selected(model, check[0], prompts, check[-1], select_k)
    return [out.logits, out.scores]


def export_onnx(run: str | Path, out: str | Path, *, prompts_input: bool = False, select_k: int | None = None,
                opset: int = DEFAULT_OPSET, fmt: str = "onnx", tolerance: float = 1e-4) -> OnnxExport:
    """Export the model of ``run`` (a run folder or checkpoint, as ``ivit predict`` takes it) to ``out``; see the
    module doc for the graph, its variants and the parity check."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
    _onnx_modules()  # the missing extra says so before the checkpoint is read
    from .classifier import Classifier

    classifier = Classifier.load(run, device="cpu")
    cfg, ckpt = classifier.config, classifier.checkpoint
    encoders = ckpt.meta.get("bank_encoders") or {}
    metadata = {
        "model": {"method": cfg.model.method, "backbone": cfg.model.backbone, "num_classes": len(classifier.classes),
                  "checkpoint": str(ckpt.path)},
        "prompts": {"kind": classifier.prompt_kind, "sources": sorted(capabilities(classifier.model).prompt_dims),
                    "baked": not prompts_input, "encoder": cfg.prompts.encoder,
                    "image_encoder": cfg.prompts.image_encoder or cfg.prompts.encoder,
                    "weights": encoders, "templates": cfg.prompts.templates, "ranker": cfg.prompts.ranker},
        "instruction_vit_version": __version__,
    }
    return export_model_onnx(classifier.model, out, class_names=classifier.classes, img_size=cfg.data.img_size,
                             prompts_input=prompts_input, select_k=select_k, opset=opset, metadata=metadata,
                             tolerance=tolerance)


__all__ = ["DEFAULT_OPSET", "ExportError", "OnnxExport", "export_model_onnx", "export_onnx", "preprocessing"]
