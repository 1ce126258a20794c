#!/usr/bin/env bash
# Check that the commands and names in the documentation are current, without running them.
#
#   tools/check_docs.sh [FILE.md ...]      (default: README.md and docs/*.md)
#
# For every command of the fenced ```bash blocks (and the python code they feed through a heredoc):
#   - a console script (setup.py entry points) exists, its module imports, and every --flag the
#     command uses appears in `<tool> [subcommand] --help`;
#   - `python -m MODULE` / `torchrun -m MODULE`: the module is importable (training/ is on the
#     path, as with PYTHONPATH=training); its --flags appear in its --help (pytest excepted);
#   - a script or file path of the repository (tools/, test/, training/, config/, ...) exists, and a
#     shell script's --flags appear in its source;
#   - `ros2 launch vpr_ros F.launch.py a:=b`: launch/F.launch.py exists, starts an executable of
#     setup.py, and declares every argument (PARAMETER_ARGUMENTS, DeclareLaunchArgument, and the
#     *_ARGUMENTS tables of the vpr_ros modules it imports); `ros2 run vpr_ros EXE --ros-args -p
#     NAME:=V`: EXE is an entry point and NAME a parameter its --help lists; `ros2 service call`:
#     a node creates that service;
#   - `pip install`: extras exist in setup.py, names are its requirements, pins equal tools/venv.sh;
#     `colcon build --packages-select P`: P is package.xml's name.
# Other programs (sudo, trtexec, ...) are listed as external and not checked; an unknown program
# fails, so that a new kind of command gets a check. Imports of ```python blocks, every dotted
# `vpr_ros.*` / `vpr_ros_training.*` name and repository path in the text, and every relative
# Markdown link (file and #anchor) are checked too. Old `vpr_ros.core` names (and the first column
# of a table, where the old paths are listed) are allowed only in docs/architecture.md.
#
# Nothing heavy runs: the --help texts come from the entry functions called in this process (one
# import of the library). Two tests run documented commands for real: test/test_ros_readme_replay.py
# (README.md "2. Localize": launch, ros2 run and both replay commands) and test/test_conversion.py
# (docs/published_models.md: vpr-convert, vpr-map, vpr-calibrate).
# Prints one line per stale command and a summary; exits 1 when anything is stale.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VPR_VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "check_docs: no virtual environment at $venv (./tools/run_tests.sh builds it)" >&2
  exit 2
fi
cd "$repo"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
exec "$venv/bin/python" - "$@" <<'PYTHON'
import ast
import contextlib
import importlib
import importlib.util
import io
from pathlib import Path
import re
import shlex
import signal
import sys
import warnings

REPO = Path.cwd()
sys.path.insert(0, str(REPO / 'training'))
REPO_DIRS = ('vpr_ros', 'training', 'test', 'tools', 'launch', 'config', 'benchmarks', 'docs',
             '.ci')
EXTERNAL = {'sudo', 'cd', 'export', 'source', 'trtexec', '$TRT', 'unshare', 'nvidia-smi', 'echo'}
OLD_NAMES_ALLOWED_IN = {'architecture.md'}
HELP_SECONDS = 120

setup_text = (REPO / 'setup.py').read_text()
ENTRY_POINTS = dict(re.findall(r"'([\w-]+) = ([\w.]+:\w+)'", setup_text))
ENTRY_POINTS.setdefault('torchrun', 'torch.distributed.run:main')
stale = []
counts = {'commands': 0, 'external': 0, 'names': 0, 'links': 0}
external_seen = set()


def shown(doc):
    return doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc


def report(where, command, problem):
    stale.append(f'{where}: {command}: {problem}')


# ----------------------------------------------------------------------------- help texts
_help_cache = {}


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def help_text(entry, argv0, sub=()):
    """Return the --help output of entry point ``module:function`` (argv0 [sub] --help)."""
    key = (entry, tuple(sub))
    if key not in _help_cache:
        module_name, function = entry.split(':')
        out = io.StringIO()
        saved = sys.argv
        sys.argv = [argv0, *sub, '--help']
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(HELP_SECONDS)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                    warnings.catch_warnings():
                warnings.simplefilter('ignore')
                main = getattr(importlib.import_module(module_name), function)
                main()
            result = out.getvalue()
        except SystemExit:
            result = out.getvalue()
        except _Timeout:
            result = None
            out.write(f'--help did not answer within {HELP_SECONDS} s')
        except Exception as error:  # noqa: B902 - any import or start-up error makes it stale
            result = None
            out.write(f'{type(error).__name__}: {error}')
        finally:
            signal.alarm(0)
            sys.argv = saved
        _help_cache[key] = (result, out.getvalue()[-300:])
    return _help_cache[key]


def long_flags(words):
    flags = []
    for word in words:
        flags += re.findall(r'(?<![\w-])(--[A-Za-z][\w-]*)', word)
    return flags


def check_flags(where, command, flags, text, what):
    for flag in flags:
        if not re.search(r'(?<![\w-])' + re.escape(flag) + r'(?![\w-])', text):
            report(where, command, f'{what} has no option {flag}')


# ----------------------------------------------------------------------------- names and paths
def module_exists(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def resolve_dotted(name):
    """Return None when ``a.b.c`` is a module or a module attribute chain, else the problem."""
    parts = name.split('.')
    for cut in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:cut])
        if not module_exists(module_name):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                obj = importlib.import_module(module_name)
        except Exception as error:  # noqa: B902
            return f'{module_name} does not import ({type(error).__name__}: {error})'
        for number, attr in enumerate(parts[cut:]):
            if not hasattr(obj, attr):
                return f'{".".join(parts[:cut + number])} has no {attr!r}'
            obj = getattr(obj, attr)
            home = getattr(obj, '__module__', None)
            if number == 0 and callable(obj) and home and home != module_name and \
                    home.startswith('vpr_ros'):
                return f'{attr} is defined in {home}, {module_name} only imports it'
        return None
    return 'no such module'


def expand_braces(path):
    match = re.search(r'\{([^{}]*)\}', path)
    if not match:
        return [path]
    return [p for option in match.group(1).split(',')
            for p in expand_braces(path[:match.start()] + option + path[match.end():])]


def repo_path_exists(path):
    path = path.rstrip('.,;:)]')
    for candidate in expand_braces(path):
        pattern = re.sub(r'<[^<>]*>|\.\.\.', '*', candidate.removeprefix('./'))
        if '*' in pattern:
            if not list(REPO.glob(pattern.rstrip('/'))):
                return False
        elif not (REPO / pattern).exists():
            return False
    return True


def is_repo_path(word):
    word = word.removeprefix('./')
    return '/' in word and word.split('/')[0] in REPO_DIRS


def check_paths(where, command, words):
    for word in words:
        for part in word.split('='):
            if is_repo_path(part) and not repo_path_exists(part):
                report(where, command, f'no file {part}')


def check_python_imports(where, code, label):
    try:
        tree = ast.parse(code)
    except SyntaxError:  # an outline (signatures without bodies): its import lines only
        lines = [line.strip() for line in code.split('\n')]
        tree = ast.parse('\n'.join(line for line in lines
                                   if re.match(r'^(from \S+ )?import \w[\w., ]*$', line)))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f'{node.module}.{alias.name}' for alias in node.names]
        for name in names:
            if name.split('.')[0] in ('vpr_ros', 'vpr_ros_training'):
                problem = resolve_dotted(name)
                if problem:
                    report(where, f'import {name}', problem)


# ----------------------------------------------------------------------------- commands
def setup_extras():
    block = re.search(r'extras_require=\{(.*?)\n    \}', setup_text, re.S).group(1)
    return set(re.findall(r"'([\w-]+)':", block))


def requirement_names():
    return {re.split(r'[<>=\[ ]', r)[0].lower().replace('_', '-')
            for r in re.findall(r"'([A-Za-z][\w.-]*(?:[<>=][^']*)?)'", setup_text)}


def check_pip(where, command, words):
    venv_sh = (REPO / 'tools' / 'venv.sh').read_text()
    known = requirement_names()
    for word in words[2:]:
        if word.startswith('-'):
            continue
        extras = re.search(r'\[([\w,-]+)\]', word)
        if extras:
            for extra in extras.group(1).split(','):
                if extra not in setup_extras():
                    report(where, command, f'setup.py has no extra {extra!r}')
            continue
        name = re.split(r'[<>=]', word)[0].lower().replace('_', '-')
        if '==' in word and word not in venv_sh:
            report(where, command, f'{word} is not the pin of tools/venv.sh')
        elif name not in known:
            report(where, command, f'{name} is not a requirement in setup.py')


def launch_declarations(path):
    """Return the executable names and the declared launch arguments of a launch file."""
    declared, executables = set(), set()
    sources = [path]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('vpr_ros'):
            spec = importlib.util.find_spec(node.module)
            if spec and spec.origin:
                sources.append(Path(spec.origin))
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == \
                    'DeclareLaunchArgument' and node.args and \
                    isinstance(node.args[0], ast.Constant):
                declared.add(node.args[0].value)
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                target = node.targets[0].id
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                if target.endswith('ARGUMENTS'):
                    declared.update(row if isinstance(row, str) else row[0] for row in value)
                if target == 'EXECUTABLE':
                    executables.add(value)
            if isinstance(node, ast.keyword) and node.arg == 'executable' and \
                    isinstance(node.value, ast.Constant):
                executables.add(node.value.value)
    return executables, declared


def node_parameters(executable):
    text, problem = help_text(ENTRY_POINTS[executable], executable)
    if text is None:
        return None, problem
    return set(re.findall(r'^  ([\w.]+) \(', text, re.M)) | {'use_sim_time'}, text


def check_ros2(where, command, words):
    if len(words) < 4:
        counts['external'] += 1
        external_seen.add(' '.join(words[:2]))
    elif words[1] == 'launch':
        if words[2] != 'vpr_ros':
            return report(where, command, f'package {words[2]} is not vpr_ros')
        path = REPO / 'launch' / words[3]
        if not path.is_file():
            return report(where, command, f'no launch file launch/{words[3]}')
        executables, declared = launch_declarations(path)
        for executable in executables - set(ENTRY_POINTS):
            report(where, command, f'{words[3]} starts {executable}, not an entry point')
        for word in words[4:]:
            name = word.split(':=')[0]
            if ':=' in word and name not in declared:
                report(where, command, f'{words[3]} declares no argument {name}')
    elif words[1] == 'run':
        if words[2] != 'vpr_ros' or words[3] not in ENTRY_POINTS:
            return report(where, command, f'no executable {words[2]} {words[3]} in setup.py')
        check_node_arguments(where, command, words[3], words[4:])
    elif words[1] == 'service' and words[2] == 'call':
        service = words[3].rstrip('/').split('/')[-1]
        nodes = ''.join(p.read_text() for p in (REPO / 'vpr_ros' / 'ros').rglob('*.py'))
        if f"'~/{service}'" not in nodes:
            report(where, command, f'no node creates the service ~/{service}')
    else:
        counts['external'] += 1
        external_seen.add(' '.join(words[:2]))


def check_node_arguments(where, command, executable, words):
    if '--ros-args' not in words:
        return
    parameters, text = node_parameters(executable)
    if parameters is None:
        return report(where, command, f'{executable} --help failed: {text}')
    words = words[words.index('--ros-args') + 1:]
    for flag, value in zip(words, words[1:]):
        if flag == '-p' and value.split(':=')[0] not in parameters:
            report(where, command, f'{executable} has no parameter {value.split(":=")[0]}')


def check_module_command(where, command, module, rest, argv0):
    if not module_exists(module):
        return report(where, command, f'no module {module}')
    flags = long_flags(rest)
    if module == 'pytest' or not flags:
        return
    text, problem = help_text(f'{module}:main', argv0)
    if text is None:
        return report(where, command, f'python -m {module} --help failed: {problem}')
    check_flags(where, command, flags, text, f'python -m {module}')


def check_command(where, words, heredoc):
    command = ' '.join(words)
    while words and re.match(r'^[A-Za-z_]\w*=', words[0]):
        words = words[1:]
    if not words:
        return
    counts['commands'] += 1
    check_paths(where, command, words)
    program = words[0].removeprefix('./')
    tool = program.removeprefix('.venv/bin/')
    if tool in ENTRY_POINTS and tool not in ('localize', 'build_map') or tool == 'torchrun':
        module = ENTRY_POINTS[tool].split(':')[0]
        if not module_exists(module):
            return report(where, command, f'{tool} names the missing module {module}')
        rest = words[1:]
        if tool == 'torchrun' and '-m' in rest:
            at = rest.index('-m')
            check_module_command(where, command, rest[at + 1], rest[at + 2:], rest[at + 1])
            rest = rest[:at]
        flags = long_flags(rest)
        if not flags and tool != 'torchrun':
            flags = []
        text, problem = help_text(ENTRY_POINTS[tool], tool)
        if text is None:
            return report(where, command, f'{tool} --help failed: {problem}')
        choices = re.search(r'\{([\w,-]+)\}', text.split('\n\n')[0])
        if choices and rest and rest[0] in choices.group(1).split(','):
            text, problem = help_text(ENTRY_POINTS[tool], tool, rest[:1])
            if text is None:
                return report(where, command, f'{tool} {rest[0]} --help failed: {problem}')
        check_flags(where, command, flags, text, tool)
    elif tool in ('localize', 'build_map'):
        check_node_arguments(where, command, tool, words[1:])
    elif program in ('python', 'python3') or program.endswith('/python'):
        rest = words[1:]
        if rest[:1] == ['-']:
            if heredoc is None:
                report(where, command, 'python - without a heredoc')
            else:
                check_python_imports(where, heredoc, command)
        elif '-m' in rest:
            at = rest.index('-m')
            check_module_command(where, command, rest[at + 1], rest[at + 2:], rest[at + 1])
        elif rest and not (REPO / rest[0]).is_file():
            report(where, command, f'no script {rest[0]}')
    elif is_repo_path(program) or (REPO / program).is_file():
        path = REPO / program
        if not path.is_file():
            return report(where, command, f'no script {program}')
        check_flags(where, command, long_flags(words[1:]), path.read_text(), program)
    elif program == 'ros2':
        check_ros2(where, command, words)
    elif program == 'pip' and words[1:2] == ['install']:
        check_pip(where, command, words)
    elif program == 'colcon':
        if '--packages-select' in words:
            name = words[words.index('--packages-select') + 1]
            if f'<name>{name}</name>' not in (REPO / 'package.xml').read_text():
                report(where, command, f'package.xml does not name {name}')
    elif program in EXTERNAL:
        counts['external'] += 1
        external_seen.add(program)
    else:
        report(where, command, f'unknown program {program!r} (add a check, or list it as '
               'external in tools/check_docs.sh)')


def split_commands(words):
    """Split at && || ; | (a | inside [optional | alternatives] of a synopsis stays)."""
    command, depth = [], 0
    for word in words:
        if word in ('&&', '||', ';', '|') and depth == 0:
            yield command
            command = []
        else:
            depth += word.count('[') - word.count(']')
            command.append(word)
    yield command


def check_block(doc, first_line, block):
    lines = block.split('\n')
    i = 0
    while i < len(lines):
        start = i
        line = lines[i]
        while line.endswith('\\') and i + 1 < len(lines):
            i += 1
            line = line[:-1] + ' ' + lines[i].strip()
        i += 1
        where = f'{shown(doc)}:{first_line + start}'
        if line.strip().startswith('...'):
            continue  # a fragment of the command above (remappings shown alone)
        heredoc = None
        marker = re.search(r"<<-?\s*'?(\w+)'?", line)
        if marker:
            end = next((j for j in range(i, len(lines)) if lines[j].strip() == marker.group(1)),
                       len(lines))
            heredoc = '\n'.join(lines[i:end])
            i = end + 1
            line = line[:marker.start()]
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            report(where, line, f'does not parse as shell: {error}')
            continue
        for command in split_commands(words):
            if command:
                check_command(where, command, heredoc)


# ----------------------------------------------------------------------------- prose
def slug(heading):
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def anchors(path):
    text = re.sub(r'^\s*```.*?^\s*```', '', path.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r'^#+ (.*)$', text, re.M)}


def is_command(words):
    while words and re.match(r'^[A-Za-z_]\w*=', words[0]):
        words = words[1:]
    if not words:
        return False
    program = words[0].removeprefix('./')
    return (program.removeprefix('.venv/bin/') in ENTRY_POINTS or program.startswith('tools/') and not program.endswith('/')
            or program in ('python', 'ros2', 'pip', 'colcon', 'torchrun')
            or program.endswith('/python'))


def check_inline_commands(doc, text):
    """Check the `inline code` of the prose that is a command of ours (vpr-eval --flag ...)."""
    for match in re.finditer(r'(?<!`)`([^`]+)`(?!`)', text):
        try:
            words = shlex.split(match.group(1).replace('\n', ' '))
        except ValueError:
            continue
        if is_command(words):
            where = f'{shown(doc)}:{text.count(chr(10), 0, match.start()) + 1}'
            for command in split_commands(words):
                if command:
                    check_command(where, command, None)


def check_prose(doc, text):
    old_allowed = doc.name in OLD_NAMES_ALLOWED_IN
    check_inline_commands(doc, text)
    for number, line in enumerate(text.split('\n'), 1):
        where = f'{shown(doc)}:{number}'
        for name in re.findall(r'(?<![\w/.])(vpr_ros(?:_training)?(?:\.[A-Za-z_]\w*)+)', line):
            if old_allowed and (name.startswith('vpr_ros.core')
                                or line.startswith(f'| `{name}` |')):
                continue  # the old path column of the table of moves
            counts['names'] += 1
            problem = resolve_dotted(name)
            if name.startswith('vpr_ros.core.'):
                problem = 'an old path (vpr_ros.core goes in 0.3): name the new module'
            if problem:
                report(where, name, problem)
        for path in re.findall(r'(?<![\w/.$~-])((?:\./)?(?:' + '|'.join(map(re.escape, REPO_DIRS))
                               + r')/[\w./<>{},*-]*)', line):
            if path.startswith('vpr_ros/core') and old_allowed:
                continue
            if re.match(r'^(\./)?[\w.]+/<', path):
                continue  # a layout of someone's data (test/<city>/...), not a file of ours
            counts['names'] += 1
            if not repo_path_exists(path):
                report(where, path, 'no such file or folder')
        for target in re.findall(r'\]\(([^)\s]+)\)', line):
            if re.match(r'^[a-z]+:', target):
                continue
            counts['links'] += 1
            file_part, _, anchor = target.partition('#')
            linked = (doc.parent / file_part).resolve() if file_part else doc
            if not linked.exists():
                report(where, target, 'link to a missing file')
            elif anchor and linked.suffix == '.md' and anchor not in anchors(linked):
                report(where, target, f'no heading #{anchor} in {linked.name}')


def main():
    docs = [Path(a).resolve() for a in sys.argv[1:]] or \
        [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
    for doc in docs:
        text = doc.read_text()
        fence = re.compile(r'^([ \t]*)```(\w*)[ \t]*\n(.*?)^[ \t]*```', re.S | re.M)
        prose = text
        for match in fence.finditer(text):
            first_line = text.count('\n', 0, match.start()) + 2
            block = re.sub(r'^' + match.group(1), '', match.group(3), flags=re.M).rstrip('\n')
            if match.group(2) in ('bash', 'sh', 'shell'):
                check_block(doc, first_line, block)
            elif match.group(2) == 'python':
                check_python_imports(f'{shown(doc)}:{first_line}', block,
                                     'python block')
            prose = prose.replace(match.group(0), '\n' * match.group(0).count('\n'), 1)
        check_prose(doc, prose)
    for line in stale:
        print(f'STALE {line}')
    print(f'check_docs: {len(docs)} file(s), {counts["commands"]} command(s) checked '
          f'({counts["external"]} external, not checked: {", ".join(sorted(external_seen))}), '
          f'{counts["names"]} module names and paths, {counts["links"]} links: '
          f'{len(stale)} stale')
    return 1 if stale else 0


sys.exit(main())
PYTHON
