"""Hypothesis profiles and byte-mutation strategies shared by the fuzz tests.

Two profiles: ``fast`` (default; a fixed number of examples per test, derandomized so that every
run of the suite tries the same inputs, 2 s deadline per example) and ``long`` (50 times more
random examples, no deadline), selected with the environment variable ``VPR_FUZZ_PROFILE``::

    VPR_FUZZ_PROFILE=long .venv/bin/python -m pytest test/test_fuzz.py test/test_ros_fuzz.py
"""

import copy
from datetime import timedelta
import os

from hypothesis import HealthCheck, settings, strategies as st

PROFILE = os.environ.get('VPR_FUZZ_PROFILE', 'fast')
LONG_FACTOR = 50
_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile('vpr-fuzz-fast', deadline=timedelta(seconds=2), derandomize=True,
                          database=None, print_blob=True, suppress_health_check=_CHECKS)
settings.register_profile('vpr-fuzz-long', deadline=None, derandomize=False, database=None,
                          print_blob=True, suppress_health_check=_CHECKS)
if PROFILE not in ('fast', 'long'):
    raise ValueError(f'VPR_FUZZ_PROFILE must be fast or long, got {PROFILE!r}')


def fuzz(examples: int) -> settings:
    """Return the settings of a fuzz test that tries ``examples`` inputs in the fast profile."""
    factor = LONG_FACTOR if PROFILE == 'long' else 1
    return settings(settings.get_profile(f'vpr-fuzz-{PROFILE}'), max_examples=examples * factor)


@st.composite
def mutated(draw, seed: bytes, max_edits: int = 4) -> bytes:
    """Return ``seed`` after 1 to ``max_edits`` edits: bit flips, byte sets, inserts, cuts."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_edits))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        edit = draw(st.sampled_from(['flip', 'set', 'insert', 'delete', 'truncate']))
        if edit == 'flip' and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif edit == 'set' and data:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif edit == 'insert':
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif edit == 'delete':
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)
"""Any JSON value, to put in place of a field of a JSON document."""


def json_paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Return the key paths of every field and list item inside ``value``."""
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    paths = []
    for key, child in items:
        paths.append(prefix + (key,))
        paths += json_paths(child, prefix + (key,))
    return paths


@st.composite
def json_edited(draw, document: dict) -> dict:
    """Return a copy of ``document`` with one field replaced by any JSON value, or removed."""
    doc = copy.deepcopy(document)
    path = draw(st.sampled_from(json_paths(doc)))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return doc
