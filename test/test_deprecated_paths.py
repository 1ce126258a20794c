"""The pre-0.2 import paths (``vpr_ros.core.*``) still resolve, to the same objects, and warn."""

import importlib
import json
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


PROBE = """
import importlib, json, sys, warnings
report = {}
for old, name, new in json.loads(sys.argv[1]):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        value = getattr(importlib.import_module(old), name)
    report[f'{old}:{name}'] = {'warnings': [str(w.message) for w in seen
                                            if issubclass(w.category, DeprecationWarning)],
                               'same': value is getattr(importlib.import_module(new), name)}
print(json.dumps(report))
"""


@pytest.fixture(scope='module')
def fresh_imports() -> dict:
    """Import every old name in one fresh interpreter; per name: its warnings, same object."""
    result = subprocess.run([sys.executable, '-c', PROBE, json.dumps(OLD_NAMES)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('old, name, new', OLD_NAMES)
def test_old_path_gives_the_same_object_with_a_warning(fresh_imports: dict, old: str, name: str,
                                                       new: str) -> None:
    """``<old>.<name>`` resolves in a fresh interpreter to the same object; the module warns."""
    seen = fresh_imports[f'{old}:{name}']
    assert seen['same'], f'{old}.{name} is not {new}.{name}'
    first_import = [row[0] for row in OLD_NAMES].index(old) == OLD_NAMES.index((old, name, new))
    if first_import:  # a module warns once, when it is first imported
        assert any(w.startswith(f'{old} moved to ') for w in seen['warnings']), seen['warnings']


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
