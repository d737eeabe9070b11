"""Training, evaluation of checkpoints, and checkpoint files."""
from ibc_geo.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ibc_geo.engine.evaluator import evaluate_checkpoint, evaluate_initial_model, evaluate_model
from ibc_geo.engine.trainer import NonFiniteLossError, RunExistsError, Trainer, train

__all__ = ["CheckpointError", "NonFiniteLossError", "RunExistsError", "Trainer", "evaluate_checkpoint",
           "evaluate_initial_model", "evaluate_model", "load_checkpoint", "save_checkpoint", "train"]
