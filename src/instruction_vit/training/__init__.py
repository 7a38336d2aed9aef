"""Training: the run folder (:mod:`.run_folder`, one owner at a time: :mod:`.run_lock`), the parts a run is built
from (:mod:`.setup`), the step (:mod:`.step`), the loop (:mod:`.loop`: :func:`train`), DDP (:mod:`.distributed`) and
its log lines (:mod:`.logs`)."""

from ..errors import NonFiniteLossError, RunFolderError
from .loop import train

__all__ = ["NonFiniteLossError", "RunFolderError", "train"]
