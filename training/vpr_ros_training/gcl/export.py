"""Export trained GeM models as checkpoints the vpr_ros nodes load (core-registered only).

The core must not import training code, so a trained network can only be deployed when the core
registry can rebuild it. Of the architectures trained here that is EfficientNet-Lite0 + GeM
(learnable ``p``), the core's ``efficientnet_lite0_gem``: :func:`to_core_model` copies the
weights (``backbone.model.*`` -> ``encoder.*``, ``pool.p``) and :func:`export_core_checkpoint`
writes them with :func:`vpr_ros.models.checkpoint.save_checkpoint`. VGG16/ResNet/ResNeXt +
GeM, NetVLAD and PCA-whitening have no core model yet; they are saved as training state only.
"""

from pathlib import Path

import torch

from vpr_ros.errors import CheckpointError
from vpr_ros.models.checkpoint import save_checkpoint
from vpr_ros.models.registry import create_model
from vpr_ros.models.vpr_model import VprModel

CORE_ARCHITECTURE = 'efficientnet_lite0_gem'


def core_compatible(model: torch.nn.Module) -> bool:
    """Return True when ``model`` is an EfficientNet-Lite0 + GeM network without whitening."""
    options = getattr(model, 'options', {})
    return (options.get('backbone') == 'efficientnet_lite0' and options.get('pool') == 'gem'
            and not options.get('whitening_dim') and options.get('in_channels', 3) == 3)


def to_core_model(model: torch.nn.Module) -> VprModel:
    """Return the core ``efficientnet_lite0_gem`` model holding ``model``'s weights."""
    if not core_compatible(model):
        raise CheckpointError(f'{model.spec.architecture} with options {model.options} has no '
                              f'core architecture; only EfficientNet-Lite0 + GeM can be exported')
    core = create_model(CORE_ARCHITECTURE, pretrained=False,
                        input_size=list(model.options['input_size']),
                        gem_p=float(model.options['gem_p']), learnable_p=True)
    state = {key.replace('backbone.model.', 'encoder.', 1): value
             for key, value in model.state_dict().items()}
    core.load_state_dict(state, strict=True)
    return core.eval()


def export_core_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Write ``model`` as a core checkpoint (``.safetensors``) and return the path."""
    return save_checkpoint(to_core_model(model), path)
