"""Every command in README.md and docs/*.md names tools, modules, files and options that exist.

``tools/check_docs.sh`` checks them without running the heavy jobs (see its header); these tests
run it on the documentation and on a page of stale commands, so that the check can fail.
"""

import os
import subprocess
import sys

from conftest import REPO_ROOT
import pytest

pytestmark = pytest.mark.ros

SCRIPT = REPO_ROOT / 'tools' / 'check_docs.sh'
STALE_PAGE = """# Stale

Inline: `vpr-map build my_images --no-such-inline-flag`, `vpr_ros.core.database.MapDatabase`,
`vpr_ros/ros/soak.py` and [a missing page](no_such_page.md).

```bash
vpr-eval --dataset-format index-list --dataset d --no-such-flag --out r/
python -m vpr_ros.no_such_module --out r/
ros2 launch vpr_ros localize.launch.py map_path:=m no_such_argument:=1
ros2 run vpr_ros localize --ros-args -p localizer.no_such_parameter:=1
./tools/run_tests.sh --no-such-script-flag
frobnicate --now
```

```python
from vpr_ros.map.database import NoSuchName
```
"""
STALE_PARTS = ['--no-such-inline-flag', 'vpr_ros.core.database.MapDatabase', 'vpr_ros/ros/soak.py',
               'no_such_page.md', '--no-such-flag', 'vpr_ros.no_such_module', 'no_such_argument',
               'localizer.no_such_parameter', '--no-such-script-flag', 'frobnicate',
               'NoSuchName']


def run_check(*pages) -> subprocess.CompletedProcess:
    """Run tools/check_docs.sh (on ``pages``, default: the documentation) with this venv."""
    env = dict(os.environ, VPR_VENV=os.environ.get('VPR_VENV', str(sys.prefix)))
    return subprocess.run(['bash', str(SCRIPT), *map(str, pages)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_documented_commands_are_current() -> None:
    """README.md and docs/*.md: every command, module name, path and link is current."""
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert ': 0 stale' in result.stdout


def test_a_stale_command_fails_the_check(tmp_path) -> None:
    """Unknown flags, modules, launch arguments, parameters, files and programs are reported."""
    page = tmp_path / 'stale.md'
    page.write_text(STALE_PAGE)
    result = run_check(page)
    assert result.returncode == 1, result.stdout + result.stderr
    stale = [line for line in result.stdout.splitlines() if line.startswith('STALE ')]
    missed = [part for part in STALE_PARTS if not any(part in line for line in stale)]
    assert not missed, result.stdout
    assert f': {len(stale)} stale' in result.stdout
