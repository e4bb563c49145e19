"""Training and evaluation engines."""
from engine.train import NonFiniteLossError, train_distill, train_stage1

__all__ = ["NonFiniteLossError", "train_distill", "train_stage1"]
