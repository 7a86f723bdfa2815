"""The model repository and everything that knows what a model takes and gives."""

from inferfleet.models.config import ModelConfig, ModelSignature, TensorSpec
from inferfleet.models.registry import ModelEntry, Registry

__all__ = ["ModelConfig", "ModelEntry", "ModelSignature", "Registry", "TensorSpec"]
