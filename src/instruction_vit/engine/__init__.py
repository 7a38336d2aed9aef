"""Engine: training, evaluation, checkpoints."""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, model_from_config, save_checkpoint
from .evaluate import Predictions, classification_metrics, predict
from .train import NonFiniteLossError, RunFolderError, train

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "NonFiniteLossError",
    "Predictions",
    "RunFolderError",
    "classification_metrics",
    "load_checkpoint",
    "model_from_config",
    "predict",
    "save_checkpoint",
    "train",
]
