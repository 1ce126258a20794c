"""Code style: ament_flake8 (99 columns, single quotes, google import order) over the sources."""

from ament_flake8.main import main_with_errors
from conftest import REPO_ROOT
import pytest

PATHS = ['vpr_ros', 'training', 'test', 'launch', 'benchmarks', 'setup.py']


@pytest.mark.linter
def test_flake8() -> None:
    """Every Python file passes ament_flake8."""
    paths = [str(REPO_ROOT / p) for p in PATHS if (REPO_ROOT / p).exists()]
    rc, errors = main_with_errors(argv=paths)
    assert rc == 0, f'Found {len(errors)} code style errors / warnings:\n' + '\n'.join(errors)
