"""Training losses: BCE + DOF-edge segmentation loss, feature distillation and its projectors."""
from losses.distillation import Projectors, feature_distillation_loss, l2_normalise
from losses.segmentation import (bce_dof_edge_loss, dof_edge_loss, label_edges, prediction_edges,
                                 segmentation_loss)

__all__ = [
    "Projectors",
    "bce_dof_edge_loss",
    "dof_edge_loss",
    "feature_distillation_loss",
    "l2_normalise",
    "label_edges",
    "prediction_edges",
    "segmentation_loss",
]
