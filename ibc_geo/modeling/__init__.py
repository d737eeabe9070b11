"""Backbone, meta-architecture and loss."""
from ibc_geo.modeling.backbone import BACKBONES, EmbeddingBackbone, PretrainedWeightsError
from ibc_geo.modeling.loss import IntraBatchLoss
from ibc_geo.modeling.model import IntraBatchModel, ModelOutput

__all__ = ["BACKBONES", "EmbeddingBackbone", "IntraBatchLoss", "IntraBatchModel", "ModelOutput",
           "PretrainedWeightsError"]
