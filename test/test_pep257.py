"""Docstrings: ament_pep257 with the pep257 convention (summary on the first line)."""

from ament_pep257.main import main
from conftest import REPO_ROOT
import pytest

PATHS = ['vpr_ros', 'training', 'launch', 'benchmarks', 'setup.py']


@pytest.mark.linter
def test_pep257() -> None:
    """Every public module, class and function has a PEP 257 docstring."""
    paths = [str(REPO_ROOT / p) for p in PATHS if (REPO_ROOT / p).exists()]
    rc = main(argv=paths + ['--convention', 'pep257', '--add-ignore', 'D104', 'D105', 'D107'])
    assert rc == 0, 'Found docstring style errors (see the output above)'
