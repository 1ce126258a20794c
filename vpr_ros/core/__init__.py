"""Deprecated import paths (``vpr_ros.core.*``), kept working for one release.

The library moved out of the flat ``vpr_ros.core`` folder into packages named by the part they
hold (``docs/architecture.md`` lists every move). Importing an old module path still works: it
warns once with a :class:`DeprecationWarning` naming the new path and hands out the very same
objects. The old paths will be removed in vpr_ros 0.3.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Optional
import warnings

REMOVAL = 'vpr_ros 0.3'
MOVED = {
    'bag': ('vpr_ros.data.bag',),
    'benchmark_datasets': ('vpr_ros.data.benchmarks.dataset', 'vpr_ros.data.benchmarks.formats',
                           'vpr_ros.data.benchmarks.image_folders',
                           'vpr_ros.data.benchmarks.index_list',
                           'vpr_ros.data.benchmarks.nordland', 'vpr_ros.data.benchmarks.msls',
                           'vpr_ros.data.benchmarks.netvlad',
                           'vpr_ros.data.benchmarks.traversals',
                           'vpr_ros.data.benchmarks.sequence',
                           'vpr_ros.data.benchmarks.loop_matrix', 'vpr_ros.data.benchmarks.kitti',
                           'vpr_ros.atomic_file'),
    'calibration': ('vpr_ros.models.calibration',),
    'cli': ('vpr_ros.cli',),
    'cli.arguments': ('vpr_ros.cli.arguments',),
    'cli.demo': ('vpr_ros.cli.demo',),
    'cli.vpr_calibrate': ('vpr_ros.cli.vpr_calibrate', 'vpr_ros.evaluation.calibration_fit',),
    'cli.vpr_convert': ('vpr_ros.cli.vpr_convert',),
    'cli.vpr_eval': ('vpr_ros.cli.vpr_eval',),
    'cli.vpr_localize': ('vpr_ros.cli.vpr_localize',),
    'cli.vpr_map': ('vpr_ros.cli.vpr_map',),
    'config': ('vpr_ros.config',),
    'database': ('vpr_ros.map.database', 'vpr_ros.map.entries', 'vpr_ros.map.index',
                 'vpr_ros.map.manifest', 'vpr_ros.map.storage', 'vpr_ros.map.token_store',),
    'errors': ('vpr_ros.errors',),
    'evaluation': ('vpr_ros.evaluation.runner', 'vpr_ros.evaluation.result',
                   'vpr_ros.evaluation.report', 'vpr_ros.evaluation.plots',),
    'frame': ('vpr_ros.data.frame',),
    'frame_source': ('vpr_ros.data.frame_source',),
    'fusion': ('vpr_ros.models.fusion', 'vpr_ros.config',),
    'geometry': ('vpr_ros.geometry',),
    'image_codec': ('vpr_ros.data.image_codec',),
    'image_folder': ('vpr_ros.data.image_folder',),
    'index_layout': ('vpr_ros.map.index_layout',),
    'localizer': ('vpr_ros.localization.localizer', 'vpr_ros.models.loader',),
    'mapping': ('vpr_ros.localization.mapping',),
    'metrics': ('vpr_ros.evaluation.metrics', 'vpr_ros.data.ground_truth',),
    'models': ('vpr_ros.models',),
    'models.backend': ('vpr_ros.models.backend',),
    'models.checkpoint': ('vpr_ros.models.checkpoint', 'vpr_ros.models.official_weights',
                          'vpr_ros.models.state_dict_keys',),
    'models.conversion': ('vpr_ros.models.conversion',),
    'models.correspondence': ('vpr_ros.models.correspondence',),
    'models.dinov2': ('vpr_ros.models.dinov2',),
    'models.efficientnet': ('vpr_ros.models.efficientnet',),
    'models.fingerprint': ('vpr_ros.models.fingerprint',),
    'models.gpu_runtime': ('vpr_ros.models.gpu_runtime',),
    'models.onnx_backend': ('vpr_ros.models.onnx_backend',),
    'models.pair_decoder': ('vpr_ros.models.pair_decoder',),
    'models.pair_scorer': ('vpr_ros.models.pair_scorer',),
    'models.pairvpr': ('vpr_ros.models.pairvpr',),
    'models.parity': ('vpr_ros.models.parity',),
    'models.registry': ('vpr_ros.models.registry',),
    'models.spec': ('vpr_ros.models.spec',),
    'models.vpr_model': ('vpr_ros.models.vpr_model',),
    'openmp': ('vpr_ros.openmp',),
    'preprocessing': ('vpr_ros.models.preprocessing',),
    'sample': ('vpr_ros.sample.renderer', 'vpr_ros.sample.route', 'vpr_ros.sample.scene',
               'vpr_ros.sample.facade',),
    'verification': ('vpr_ros.localization.verification',),
}
"""Old module path below ``vpr_ros.core`` -> the modules that now hold its names (first: main)."""
PACKAGES = ('models', 'cli')
"""Old sub-packages: they warn through the modules imported from them, not themselves."""


class _Alias(types.ModuleType):
    """An old module path: looks names up in the modules that hold them now."""

    def __init__(self, name: str, targets: tuple) -> None:
        super().__init__(name)
        self.__path__: list = []
        self._targets = targets

    def __getattr__(self, attr: str) -> object:
        if attr.startswith('__'):
            raise AttributeError(attr)
        if f'{_old_name(self.__name__)}.{attr}' in MOVED:
            return importlib.import_module(f'{self.__name__}.{attr}')
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f'module {self.__name__!r} has no attribute {attr!r} '
                             f'(it moved to {self._targets[0]})')


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve ``vpr_ros.core.<old>`` to an :class:`_Alias` of its new home."""

    def find_spec(self, fullname: str, path: Optional[object] = None,
                  target: Optional[object] = None) -> Optional[importlib.machinery.ModuleSpec]:
        """Return a spec for a moved module path, None for anything else."""
        if _old_name(fullname) in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        """Warn about the move and return the alias module."""
        targets = MOVED[_old_name(spec.name)]
        if _old_name(spec.name) not in PACKAGES:
            warnings.warn(f'{spec.name} moved to {targets[0]}; the old path goes in {REMOVAL}',
                          DeprecationWarning, stacklevel=2)
        return _Alias(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the alias resolves names lazily."""


def _old_name(fullname: str) -> Optional[str]:
    prefix = __name__ + '.'
    return fullname[len(prefix):] if fullname.startswith(prefix) else None


if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedFinder())
