"""DFFNet-family defocus blur detectors, the MiDaS v2.1 depth teacher, checkpoint loading and `predict`."""
from .dbdnet import VARIANTS, DBDNet, DBDOutput, build_model, list_models
from .encoders import pretrained_available
from .inference import predict
from .midas import MidasNet, MidasOutput, build_midas
from .teacher import make_frozen_teacher
from .weights import load_checkpoint, load_midas, load_model

__all__ = [
    "VARIANTS", "DBDNet", "DBDOutput", "MidasNet", "MidasOutput", "build_midas", "build_model", "list_models",
    "load_checkpoint", "load_midas", "load_model", "make_frozen_teacher", "predict", "pretrained_available",
]
