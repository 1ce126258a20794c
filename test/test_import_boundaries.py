"""Layering: which package may import which, enforced over the import graph of the tree.

Allowed directions (docs/architecture.md draws them)::

    ros.tools -> ros -> cli -> evaluation -> localization -> map -> models -> ground floor
                               cli -> sample -> data -> ground floor
    training -> the library (never ros)

The ground floor is ``vpr_ros.atomic_file``, ``vpr_ros.config``, ``vpr_ros.errors``,
``vpr_ros.geometry`` and ``vpr_ros.openmp``. Nothing outside ``vpr_ros.ros`` imports rclpy, launch
or a message package, and nothing in ``vpr_ros`` imports the training package. Imports inside
functions count too.
"""

import ast
from pathlib import Path
import sys

from conftest import REPO_ROOT
import pytest

ROS_MODULES = {
    'rclpy', 'launch', 'launch_ros', 'cv_bridge', 'message_filters', 'tf2_ros',
    'rosidl_runtime_py', 'ament_index_python', 'builtin_interfaces', 'rcl_interfaces',
}
TRAINING_MODULES = {'training', 'vpr_ros_training'}
GROUND = {'vpr_ros', 'vpr_ros.atomic_file', 'vpr_ros.config', 'vpr_ros.errors', 'vpr_ros.geometry',
          'vpr_ros.openmp'}
_LAYERS = (
    ('vpr_ros.data', set()),
    ('vpr_ros.models', set()),
    ('vpr_ros.map', {'vpr_ros.models'}),
    ('vpr_ros.sample', {'vpr_ros.data'}),
    ('vpr_ros.localization', {'vpr_ros.data', 'vpr_ros.models', 'vpr_ros.map'}),
    ('vpr_ros.evaluation', {'vpr_ros.data', 'vpr_ros.models', 'vpr_ros.map',
                            'vpr_ros.localization'}),
    ('vpr_ros.cli', {'vpr_ros.data', 'vpr_ros.models', 'vpr_ros.map', 'vpr_ros.localization',
                     'vpr_ros.evaluation', 'vpr_ros.sample'}),
)
ALLOWED = {package: GROUND | below | {package} for package, below in _LAYERS}
LIBRARY = set(ALLOWED) | GROUND
ALLOWED['vpr_ros.ros'] = LIBRARY | {'vpr_ros.ros'}
ALLOWED['vpr_ros.ros.tools'] = ALLOWED['vpr_ros.ros'] | {'vpr_ros.ros.tools'}
ALLOWED['vpr_ros.config'] = {'vpr_ros.errors', 'vpr_ros.config'}
ALLOWED['vpr_ros.geometry'] = {'vpr_ros.errors', 'vpr_ros.geometry'}
ALLOWED['vpr_ros.errors'] = {'vpr_ros.errors'}
ALLOWED['vpr_ros.openmp'] = {'vpr_ros.openmp'}
ALLOWED['vpr_ros.atomic_file'] = {'vpr_ros.atomic_file'}
ALLOWED['vpr_ros'] = {'vpr_ros', 'vpr_ros.openmp'}
ALLOWED['vpr_ros.core'] = {'vpr_ros.core'}


def module_name(path: Path) -> str:
    """Return the dotted module name of a file under the repository root."""
    parts = path.relative_to(REPO_ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path: Path) -> set[str]:
    """Return every absolute module a file imports (``from a.b import c`` gives ``a.b.c``, too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f'{node.module}.{alias.name}' for alias in node.names)
    return found


def owner(module: str) -> str:
    """Return the package of the layer table that holds ``module`` (the longest match)."""
    matches = [p for p in ALLOWED if module == p or module.startswith(p + '.')]
    return max(matches, key=len) if matches else module


def upward_imports(path: Path) -> list[str]:
    """Return the vpr_ros imports of ``path`` that its layer may not make."""
    allowed = ALLOWED[owner(module_name(path))]
    bad = set()
    for module in imported_modules(path):
        if module.split('.')[0] != 'vpr_ros':
            continue
        target = owner(module)
        if target not in allowed:
            bad.add(f'{module} ({target})')
    return sorted(bad)


def _imported_roots(path: Path) -> set[str]:
    return {module.split('.')[0] for module in imported_modules(path)}


def _is_ros(root: str) -> bool:
    return root in ROS_MODULES or root.endswith('_msgs') or root.endswith('_srvs')


def _python_files(folder: str) -> list[Path]:
    return sorted((REPO_ROOT / folder).rglob('*.py'))


def _library_files() -> list[Path]:
    return [p for p in _python_files('vpr_ros') if 'ros' not in p.relative_to(
        REPO_ROOT / 'vpr_ros').parts[:1]]


@pytest.mark.parametrize('path', _python_files('vpr_ros'), ids=str)
def test_imports_point_down_the_layers(path: Path) -> None:
    """Every vpr_ros module imports only its own package and the layers below it."""
    assert owner(module_name(path)) in ALLOWED, f'{path}: package missing from the layer table'
    bad = upward_imports(path)
    assert not bad, f'{path} ({owner(module_name(path))}) imports upwards: {bad}'


@pytest.mark.parametrize('path', _library_files(), ids=str)
def test_library_imports_no_ros(path: Path) -> None:
    """No library module (outside vpr_ros.ros) imports rclpy, launch or a message package."""
    bad = sorted(r for r in _imported_roots(path) if _is_ros(r))
    assert not bad, f'{path} imports ROS modules {bad}'


@pytest.mark.parametrize('path', _python_files('training'), ids=str)
def test_training_imports_the_library_only(path: Path) -> None:
    """Training code depends on the vpr_ros library only, never on ROS or vpr_ros.ros."""
    bad = sorted(r for r in _imported_roots(path) if _is_ros(r))
    bad += sorted(m for m in imported_modules(path) if m.startswith('vpr_ros.ros')
                  or m.startswith('vpr_ros.core'))
    assert not bad, f'{path} imports {bad}'


@pytest.mark.parametrize('path', _python_files('vpr_ros'), ids=str)
def test_package_does_not_import_training(path: Path) -> None:
    """Dependencies point one way: vpr_ros never imports the training package."""
    bad = sorted(_imported_roots(path) & TRAINING_MODULES)
    assert not bad, f'{path} imports {bad}'


def test_nothing_uses_the_deprecated_paths() -> None:
    """The project itself imports nothing through the deprecated ``vpr_ros.core`` aliases."""
    files = [p for folder in ('vpr_ros', 'training', 'test', 'benchmarks', 'launch')
             for p in _python_files(folder)
             if p.name not in (Path(__file__).name, 'test_deprecated_paths.py')]
    users = sorted(str(p) for p in files if any(
        m == 'vpr_ros.core' or m.startswith('vpr_ros.core.') for m in imported_modules(p))
        and p.parent.name != 'core')
    assert not users, f'import the new paths, not vpr_ros.core: {users}'


def test_no_module_shadows_stdlib() -> None:
    """No module or package name shadows the standard library, and there is no utils module."""
    names = {p.stem for p in _python_files('vpr_ros') + _python_files('training')}
    names |= {p.parent.name for p in _python_files('vpr_ros') + _python_files('training')}
    shadowing = sorted(n for n in names if n in sys.stdlib_module_names)
    assert not shadowing, f'modules shadow the standard library: {shadowing}'
    assert not names & {'utils', 'util', 'commons', 'helpers', 'helper'}


def test_no_library_module_exceeds_500_lines() -> None:
    """Modules stay reviewable: no .py file under vpr_ros/ is longer than 500 lines."""
    long = {str(p.relative_to(REPO_ROOT)): n for p in _python_files('vpr_ros')
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f'split these modules: {long}'


def test_checker_flags_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself sees ROS imports in every form (guards against a vacuous pass)."""
    probe = tmp_path / 'probe.py'
    probe.write_text('import rclpy.node\nfrom sensor_msgs.msg import Image\n')
    assert {r for r in _imported_roots(probe) if _is_ros(r)} == {'rclpy', 'sensor_msgs'}


@pytest.mark.parametrize('package, source, upward', [
    ('map', 'from vpr_ros.localization.localizer import Localizer\n', True),
    ('models', 'def late():\n    from vpr_ros.map import database\n', True),
    ('data', 'from vpr_ros.evaluation import metrics\n', True),
    ('localization', 'import vpr_ros.cli.vpr_eval\n', True),
    ('cli', 'from vpr_ros.ros import vpr_node\n', True),
    ('map', 'from vpr_ros.models.spec import ModelSpec\n', False),
    ('cli', 'from vpr_ros import errors\n', False),
    ('evaluation', 'from vpr_ros.localization import localizer\n', False),
])
def test_an_upward_import_fails_the_check(monkeypatch, tmp_path: Path, package: str,
                                          source: str, upward: bool) -> None:
    """Adding an upward import to a package is caught; a downward one is not."""
    probe = tmp_path / 'vpr_ros' / package / 'probe.py'
    probe.parent.mkdir(parents=True)
    probe.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], 'REPO_ROOT', tmp_path)
    assert bool(upward_imports(probe)) is upward, upward_imports(probe)
