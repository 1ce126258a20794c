"""The benchmark format registry: ``--dataset-format`` names and the reader each one runs."""

import inspect
from typing import Any

from vpr_ros.data.benchmarks.dataset import EvalDataset, PathLike
from vpr_ros.data.benchmarks.image_folders import read_folder_dataset
from vpr_ros.data.benchmarks.index_list import read_index_list_dataset
from vpr_ros.data.benchmarks.kitti import read_kitti_poses_dataset
from vpr_ros.data.benchmarks.loop_matrix import read_loop_matrix_dataset
from vpr_ros.data.benchmarks.msls import read_msls_test, read_msls_val
from vpr_ros.data.benchmarks.netvlad import read_pittsburgh, read_tokyo247
from vpr_ros.data.benchmarks.nordland import read_nordland
from vpr_ros.data.benchmarks.sequence import read_sequence_dataset
from vpr_ros.data.benchmarks.traversals import read_bag_pair
from vpr_ros.errors import DatasetError

FORMATS = ('folder', 'index-list', 'nordland', 'msls-val', 'msls-test', 'pitts', 'tokyo',
           'bags', 'sequence', 'loop-matrix', 'kitti-poses')
SEQUENCE_FORMATS = ('sequence', 'loop-matrix', 'kitti-poses')
"""The formats read as one loop-closure sequence (the map grows as the frames come)."""


def load_dataset(fmt: str, path: PathLike, **options: Any) -> EvalDataset:
    """Read the dataset at ``path`` in format ``fmt`` (one of :data:`FORMATS`).

    ``options`` go to the reader (``radius_m``, ``index_dir``, ``variant``, ``query_bag``,
    ``image_topic``, ``pose_topic``, ``max_yaw_diff_rad`` ...). For ``bags``, ``path`` is the
    map bag and ``options['query_bag']`` the query bag.
    """
    readers = {'folder': read_folder_dataset, 'index-list': read_index_list_dataset,
               'nordland': read_nordland, 'msls-val': read_msls_val,
               'msls-test': read_msls_test, 'pitts': read_pittsburgh, 'tokyo': read_tokyo247,
               'sequence': read_sequence_dataset, 'loop-matrix': read_loop_matrix_dataset,
               'kitti-poses': read_kitti_poses_dataset}
    if fmt == 'bags':
        options = dict(options)
        query_bag = options.pop('query_bag', None)
        if query_bag is None:
            raise DatasetError('dataset format bags needs a query bag')
        return read_bag_pair(path, query_bag, **options)
    if fmt not in readers:
        raise DatasetError(f'unknown dataset format {fmt!r}; valid: {", ".join(FORMATS)}')
    try:
        inspect.signature(readers[fmt]).bind(path, **options)
    except TypeError as exc:
        raise DatasetError(f'dataset format {fmt}: bad option ({exc})') from exc
    return readers[fmt](path, **options)
