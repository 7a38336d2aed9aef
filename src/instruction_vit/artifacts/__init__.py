"""Artifacts: what a trained model is on disk and in a user's hands.

* :mod:`.checkpoint`: the run checkpoint file (safetensors, self-describing), read and written, and the model a
  config describes (:func:`~.checkpoint.model_from_config`);
* :mod:`.folder_config` and :mod:`.sharing`: the shareable model folder (``ivit save`` / ``ivit push``), read as
  data and written whole (where a folder is, local or ``hf-hub:``, is the leaf :mod:`instruction_vit.hub_source`,
  since a prompt bank file may name one);
* :mod:`.classifier`: the object users load (:class:`~.classifier.Classifier`: predict, new class names);
* :mod:`.export`: ONNX export checked against PyTorch.

Above the model, methods and losses; below evaluation and training, which read and write these files.
"""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, model_from_config, save_checkpoint

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "model_from_config", "save_checkpoint"]
