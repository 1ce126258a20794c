"""Layering: the core and training never import ROS; nothing in vpr_ros imports training."""

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


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split('.')[0])
    return roots


def _is_ros(root: str) -> bool:
    return root in ROS_MODULES or root.endswith('_msgs') or root.endswith('_srvs')


def _python_files(folder: str) -> list[Path]:
    return sorted((REPO_ROOT / folder).rglob('*.py'))


@pytest.mark.parametrize('path', _python_files('vpr_ros/core'), ids=str)
def test_core_imports_no_ros(path: Path) -> None:
    """No module of vpr_ros.core imports rclpy, launch or a message package."""
    bad = sorted(r for r in _imported_roots(path) if _is_ros(r))
    assert not bad, f'{path} imports ROS modules {bad}'


@pytest.mark.parametrize('path', _python_files('training'), ids=str)
def test_training_imports_no_ros(path: Path) -> None:
    """Training code depends on vpr_ros.core only, never on ROS."""
    bad = sorted(r for r in _imported_roots(path) if _is_ros(r))
    bad += sorted(r for r in _imported_roots(path) if r == 'vpr_ros' and 'vpr_ros.ros' in
                  path.read_text())
    assert not bad, f'{path} imports {bad}'


@pytest.mark.parametrize('path', _python_files('vpr_ros'), ids=str)
def test_package_does_not_import_training(path: Path) -> None:
    """Dependencies point one way: vpr_ros never imports the training package."""
    bad = sorted(_imported_roots(path) & TRAINING_MODULES)
    assert not bad, f'{path} imports {bad}'


def test_no_module_shadows_stdlib() -> None:
    """No module or package name shadows the standard library, and there is no utils module."""
    names = {p.stem for p in _python_files('vpr_ros') + _python_files('training')}
    names |= {p.parent.name for p in _python_files('vpr_ros') + _python_files('training')}
    shadowing = sorted(n for n in names if n in sys.stdlib_module_names)
    assert not shadowing, f'modules shadow the standard library: {shadowing}'
    assert not names & {'utils', 'util', 'commons', 'helpers', 'helper'}


def test_checker_flags_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself sees ROS imports in every form (guards against a vacuous pass)."""
    probe = tmp_path / 'probe.py'
    probe.write_text('import rclpy.node\nfrom sensor_msgs.msg import Image\n')
    assert {r for r in _imported_roots(probe) if _is_ros(r)} == {'rclpy', 'sensor_msgs'}
