"""Shared pytest fixtures: paths to the repository and to the optional ../shared data."""

import atexit
import importlib.util
import json
import os
from pathlib import Path
import shutil
import tempfile

import pytest

# DDS discovery stays on this machine (set before any test imports rclpy).
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# Exported ONNX graphs (backend auto) go to a folder of this test session, shared with the
# nodes it starts: every run starts from an empty cache, whatever earlier runs left behind.
if 'VPR_ROS_CACHE' not in os.environ:
    os.environ['VPR_ROS_CACHE'] = tempfile.mkdtemp(prefix='vpr_ros_test_cache_')
    atexit.register(shutil.rmtree, os.environ['VPR_ROS_CACHE'], ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Without rclpy (a plain venv), the ROS test modules are not collected at all.
collect_ignore_glob = [] if importlib.util.find_spec('rclpy') else ['test_ros_*.py']
SHARED_DATA = Path(os.environ.get('VPR_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))


def shared_dataset(name: str) -> Path:
    """Return ``../shared/data/<name>`` or skip the calling test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f'shared dataset {name!r} not found at {path} (set VPR_SHARED_DATA)')
    return path


@pytest.fixture
def corridor_dir() -> Path:
    """The two-traversal corridor dataset (111 query + 111 reference frames)."""
    return shared_dataset('corridor')


@pytest.fixture
def golden_dir() -> Path:
    """The Pair-VPR numerical fixture produced by the official code."""
    return shared_dataset('pairvpr_golden')


@pytest.fixture
def rtabmap_dir() -> Path:
    """The RTAB-Map loop-closure sample (84 frames)."""
    return shared_dataset('rtabmap_samples')


@pytest.fixture(scope='module')
def single_faiss_thread():
    """Run faiss single-threaded: OpenMP spinning on a shared 2-core machine is 3x slower."""
    import faiss
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def scene_image(i: int):
    """Return a ``[120, 160, 3] uint8`` blocky image of scene ``i`` (seeded, distinct scenes)."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(i)
    return cv2.resize(rng.integers(0, 255, (6, 8, 3)).astype(np.uint8), (160, 120),
                      interpolation=cv2.INTER_NEAREST)


def write_utm_folder(root: Path, count: int) -> Path:
    """Write ``count`` scene images named with UTM coordinates 10 m apart into ``root``."""
    import cv2
    for i in range(count):
        cv2.imwrite(str(root / f'@{500000 + 10 * i}@{4000000}@@.png'), scene_image(i)[..., ::-1])
    return root


def write_index_list(root: Path, count: int) -> Path:
    """Write an index-list dataset of ``count`` scenes (query ``i`` matches reference ``i``)."""
    import cv2
    for part in ('query', 'ref'):
        (root / part).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(root / part / f'{i}.png'), scene_image(i))
    (root / 'ground_truth.json').write_text(json.dumps(
        [{'query': i, 'positives': [i]} for i in range(count)]))
    return root


def official_random_tensor(key: str, shape: tuple, gen):
    """Draw a non-trivial value for an official Pair-VPR parameter (the golden fixture's rules)."""
    import math
    import numpy as np
    import torch
    normal = torch.randn(shape, generator=gen)
    if key.endswith('gamma'):
        return 0.25 + 0.75 * torch.rand(shape, generator=gen)
    if key.endswith('bias'):
        return 0.05 * normal
    if key.endswith('weight') and 'norm' in key.split('.')[-2]:
        return 1 + 0.1 * normal
    if key.endswith('weight'):
        return normal / math.sqrt(int(np.prod(shape[1:])))
    return 0.5 * normal
