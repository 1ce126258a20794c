"""Load a model by checkpoint file or registry name (the one entry point the tools use)."""

from typing import Optional

from vpr_ros.config import DEFAULT_MODEL
from vpr_ros.models.vpr_model import VprModel


def load_model(checkpoint: Optional[str] = None, model: Optional[str] = None) -> VprModel:
    """Load ``checkpoint`` or the registry model ``model``.

    ``checkpoint`` is a vpr_ros safetensors checkpoint or an official Pair-VPR release file,
    converted in memory (:func:`~vpr_ros.models.conversion.load_any_checkpoint`). A
    registry model comes with its shipped trained weights when it has them
    (:func:`~vpr_ros.models.checkpoint.load_pretrained`); the default is
    :data:`DEFAULT_MODEL` with the shipped pair classifier.
    """
    from vpr_ros.models.checkpoint import load_pretrained
    from vpr_ros.models.conversion import load_any_checkpoint
    if checkpoint:
        return load_any_checkpoint(checkpoint)
    return load_pretrained(model or DEFAULT_MODEL)
