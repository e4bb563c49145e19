"""Training losses: BCE + DOF-edge segmentation loss, feature and response distillation, depth."""
from losses.depth import normalised_depth
from losses.distillation import Projectors, feature_distillation_loss, l2_normalise, response_distillation_loss
from losses.segmentation import (SegmentationCriterion, bce_dof_edge_loss, dof_edge_loss, label_edges,
                                 prediction_edges, segmentation_loss)

__all__ = [
    "Projectors",
    "SegmentationCriterion",
    "bce_dof_edge_loss",
    "dof_edge_loss",
    "feature_distillation_loss",
    "l2_normalise",
    "label_edges",
    "normalised_depth",
    "prediction_edges",
    "response_distillation_loss",
    "segmentation_loss",
]
