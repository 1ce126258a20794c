"""No code path unpickles: a scan of every Python source of the repository.

Unpickling a file runs code chosen by whoever wrote it. Weights are read with safetensors or
``torch.load(..., weights_only=True)``, arrays with ``np.load`` (``allow_pickle`` left False). The
scan covers ``vpr_ros/``, ``training/``, ``test/``, ``benchmarks/``, ``tools/``, ``launch/`` and
``setup.py``, text included (code inside strings runs too), and names every hit as file:line.
The patterns are assembled from pieces so that this file does not match itself.
"""

from pathlib import Path
import re

from conftest import REPO_ROOT

FOLDERS = ['vpr_ros', 'training', 'test', 'benchmarks', 'tools', 'launch']
P = 'pick' + 'le'
LOAD = 'lo' + 'ad'
WEIGHTS = 'weights_' + 'only'
MODULES = f'(?:c?{P}|_{P}|cloud{P}|dill|joblib|shelve|marshal)'
PATTERNS = {
    f'imports a {P} module': rf'\bimport\s+{MODULES}\b|\bfrom\s+{MODULES}\s+import\b',
    f'calls {P}.{LOAD}': rf'\b{MODULES}\.(?:{LOAD}s?|Un{P}r)\b',
    f'allow_{P}=True': rf'\ballow_{P}\s*=\s*True\b',
    f'{WEIGHTS}=False': rf'\b{WEIGHTS}\s*=\s*False\b',
    f'read_{P}': rf'\bread_{P}\s*\(',
    f'unsafe yaml {LOAD}': rf'\byaml\.(?:unsafe_{LOAD}|{LOAD}_all)\b|Unsafe{LOAD.title()}er\b',
    f'imports torch.{LOAD} by name': rf'\bfrom\s+torch\s+import\s+(?:.*,\s*)?{LOAD}\b',
}
TORCH_LOAD = re.compile(rf'\btorch\.{LOAD}\s*\(')
SAFE_ARGUMENT = re.compile(rf'\b{WEIGHTS}\s*=\s*True\b')


def python_files() -> list[Path]:
    """Return every Python source file in the scanned folders and setup.py."""
    files = [REPO_ROOT / 'setup.py']
    for folder in FOLDERS:
        files += sorted((REPO_ROOT / folder).rglob('*.py'))
    return [f for f in files if f.is_file()]


def call_text(text: str, start: int) -> str:
    """Return the text of the call whose opening parenthesis ends at ``start``, balanced."""
    depth, pos = 1, start
    while depth and pos < len(text):
        depth += {'(': 1, ')': -1}.get(text[pos], 0)
        pos += 1
    return text[start:pos]


def findings(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """Return ``file:line: problem`` (path relative to ``root``) for each unsafe pattern."""
    text = path.read_text(encoding='utf-8', errors='replace')
    hits = []
    for problem, pattern in PATTERNS.items():
        hits += [(m.start(), problem) for m in re.finditer(pattern, text)]
    for match in TORCH_LOAD.finditer(text):
        if not SAFE_ARGUMENT.search(call_text(text, match.end())):
            hits.append((match.start(), f'torch.{LOAD}( without {WEIGHTS}=True'))
    relative = path.relative_to(root)
    return [f'{relative}:{text.count(chr(10), 0, at) + 1}: {problem}' for at, problem in hits]


def test_no_source_file_unpickles() -> None:
    """No file imports a pickle module, allows pickles, or calls torch.load unsafely."""
    files = python_files()
    assert len(files) > 50 and any(f.name == 'checkpoint.py' for f in files)
    problems = [hit for path in files for hit in findings(path)]
    assert not problems, 'unsafe deserialisation:\n' + '\n'.join(problems)


def test_scanner_finds_each_pattern(tmp_path: Path) -> None:
    """Each pattern is found in a planted file (so a clean scan means something)."""
    planted = [f'import {P}', f'from c{P} import {LOAD}s', f'{P}.{LOAD}(f)',
               f'np.{LOAD}(f, allow_{P}=True)', 'torch.' + f'{LOAD}(f, {WEIGHTS}=False)',
               'torch.' + f'{LOAD}(\n    f, map_location="cpu")', f'pd.read_{P}(f)',
               f'yaml.unsafe_{LOAD}(f)', f'from torch import nn, {LOAD}']
    for n, line in enumerate(planted):
        path = tmp_path / f'planted_{n}.py'
        path.write_text(f'x = 1\n{line}\n')
        found = findings(path, tmp_path)
        assert found and found[0].startswith(f'{path.name}:2:'), (line, found)
    safe = tmp_path / 'safe.py'
    safe.write_text('torch.' + f'{LOAD}(\n  f,\n  weights_only=True)\nnp.{LOAD}(f)\n')
    assert not findings(safe, tmp_path)
