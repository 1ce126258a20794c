"""The pre-0.2 import paths (``vpr_ros.core.*``) still resolve, to the same objects, and warn."""

import importlib
import subprocess
import sys

from conftest import REPO_ROOT
import pytest

from vpr_ros.core import MOVED

OLD_NAMES = [
    ('vpr_ros.core.localizer', 'Localizer', 'vpr_ros.localization.localizer'),
    ('vpr_ros.core.localizer', 'load_model', 'vpr_ros.models.loader'),
    ('vpr_ros.core.database', 'MapDatabase', 'vpr_ros.map.database'),
    ('vpr_ros.core.config', 'LocalizerConfig', 'vpr_ros.config'),
    ('vpr_ros.core.metrics', 'positives_within_radius', 'vpr_ros.data.ground_truth'),
    ('vpr_ros.core.models.checkpoint', 'load_checkpoint', 'vpr_ros.models.checkpoint'),
    ('vpr_ros.core.cli.vpr_eval', 'main', 'vpr_ros.cli.vpr_eval'),
]


@pytest.mark.parametrize('old, name, new', OLD_NAMES)
def test_old_path_gives_the_same_object_with_a_warning(old: str, name: str, new: str) -> None:
    """``from <old> import <name>`` works in a fresh interpreter and warns with the new path."""
    code = (f'import warnings\nwarnings.simplefilter("error", DeprecationWarning)\n'
            f'try:\n    from {old} import {name}\nexcept DeprecationWarning as w:\n'
            f'    print("WARNED", w)\n'
            f'warnings.simplefilter("ignore", DeprecationWarning)\n'
            f'from {old} import {name} as old\nfrom {new} import {name} as new\n'
            f'print("SAME", old is new)\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f'WARNED {old} moved to' in result.stdout
    assert 'SAME True' in result.stdout


@pytest.mark.parametrize('old', sorted(MOVED))
def test_every_moved_module_resolves(old: str) -> None:
    """Every entry of the move table names modules that exist."""
    for target in MOVED[old]:
        assert importlib.util.find_spec(target) is not None, f'{old}: {target} does not exist'


def test_unknown_name_on_an_old_path_says_where_it_went() -> None:
    """A name the new modules do not hold raises AttributeError naming the new home."""
    with pytest.warns(DeprecationWarning):
        alias = importlib.import_module('vpr_ros.core.geometry')
    with pytest.raises(AttributeError, match='vpr_ros.geometry'):
        alias.no_such_name


def test_module_imported_from_an_old_package_warns() -> None:
    """``from vpr_ros.core.models import backend`` warns, even when the new module is loaded."""
    code = ('import warnings\nimport vpr_ros.models.backend\n'
            'with warnings.catch_warnings(record=True) as seen:\n'
            '    warnings.simplefilter("always")\n'
            '    from vpr_ros.core.models import backend\n'
            'print([str(w.message) for w in seen])\n'
            'print(backend.apply_backend is vpr_ros.models.backend.apply_backend)\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'vpr_ros.core.models.backend moved to vpr_ros.models.backend' in result.stdout
    assert result.stdout.strip().endswith('True')
