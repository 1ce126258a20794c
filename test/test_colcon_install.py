"""The colcon install: scripts, launch, config and the ament index of an ament_python build."""

import os
from pathlib import Path
import shutil
import subprocess
import sys

from conftest import REPO_ROOT
import pytest

COLCON = shutil.which('colcon') or str(Path(sys.executable).parent / 'colcon')
SOURCES = ['package.xml', 'setup.py', 'setup.cfg', 'resource', 'vpr_ros', 'launch', 'config',
           'training']


@pytest.fixture(scope='module')
def install(tmp_path_factory) -> Path:
    """Build a copy of the package with colcon and return its install prefix."""
    if not Path(COLCON).exists():
        pytest.skip('colcon is not installed (pip install colcon-common-extensions)')
    workspace = tmp_path_factory.mktemp('ws')
    source = workspace / 'src' / 'vpr_ros'
    for name in SOURCES:
        item = REPO_ROOT / name
        if item.is_dir():
            shutil.copytree(item, source / name, ignore=shutil.ignore_patterns('__pycache__'))
        elif item.exists():
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, source / name)
    result = subprocess.run(
        [COLCON, '--log-base', str(workspace / 'log'), 'build', '--base-paths', 'src',
         '--build-base', 'build', '--install-base', 'install'],
        cwd=workspace, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return workspace / 'install' / 'vpr_ros'


def test_layout(install: Path) -> None:
    """Node executables under lib/vpr_ros; launch, config, package.xml and the index marker."""
    for script in ('localize', 'build_map', 'vpr-map', 'vpr-localize', 'vpr-demo'):
        path = install / 'lib' / 'vpr_ros' / script
        assert path.is_file() and os.access(path, os.X_OK), script
    share = install / 'share' / 'vpr_ros'
    for name in ('localize.launch.py', 'build_map.launch.py'):
        assert (share / 'launch' / name).is_file()
    for name in ('localize.yaml', 'build_map.yaml'):
        assert (share / 'config' / name).read_text() == (REPO_ROOT / 'config' / name).read_text()
    assert (share / 'package.xml').is_file()
    assert (install / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'vpr_ros').exists()


def test_shipped_weights_are_installed_with_the_package(install: Path) -> None:
    """The installed vpr_ros finds its shipped pair-classifier weights inside the install."""
    site = next(install.glob('lib/python*/site-packages'))
    code = ('from vpr_ros.models.checkpoint import shipped_weights_path as p; '
            "print(p('pairvpr_lite'))")
    out = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=str(site)),
                         cwd=install, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.is_file() and site in path.parents
    assert path.with_suffix('.json').is_file()


def test_share_directory_resolves_through_the_ament_index(install: Path) -> None:
    """get_package_share_directory finds the install, as ros2 launch does."""
    env = dict(os.environ, AMENT_PREFIX_PATH=str(install))
    code = ('from ament_index_python.packages import get_package_share_directory as g; '
            "print(g('vpr_ros'))")
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == install / 'share' / 'vpr_ros'
