"""Training data of GCL: per-city query/database images, label matrices and panorama flags.

A :class:`PairSource` is what the pair sampler and the pair dataset need. Builders:
:func:`route_pair_source` (the project's procedural route, :mod:`vpr_ros.sample.renderer`: the dusk
traversal is the query set, the day traversal the database, labels from the rendered camera
poses), :func:`traversal_pair_source` (a two-traversal folder such as ``../shared/data/corridor``
whose frame ``i`` of both traversals shows the same place: cameras are placed ``frame_spacing_m``
apart on a straight line, all facing the same way) and
:func:`vpr_ros_training.gcl.msls.msls_pair_source` (MSLS cities).
"""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from vpr_ros.sample.renderer import render_traversal
from vpr_ros.sample.route import RouteConfig
from vpr_ros_training.gcl.fov import FovConfig
from vpr_ros_training.gcl.labels import Cameras, graded_labels, LabelMatrix
from vpr_ros_training.traversal import frame_range, traversal_frames


@dataclass(frozen=True)
class PairSource:
    """Per city: query and database image items, label matrix and panorama flags."""

    name: str
    queries: tuple
    database: tuple
    matrices: tuple
    query_pano: tuple
    db_pano: tuple
    graded: bool = True

    def __len__(self) -> int:
        """Return the number of cities."""
        return len(self.matrices)


@lru_cache(maxsize=4)
def render_route_cameras(seed: int, frames: int,
                         image_size: tuple[int, int]) -> tuple[tuple, tuple]:
    """Return ``((images, Cameras) day/map, (images, Cameras) dusk/query)`` of one route."""
    config = RouteConfig(seed=seed, frames_per_traversal=frames, image_size=tuple(image_size))
    rendered = []
    for traversal in (0, 1):
        frame_list = render_traversal(config, traversal)
        xy = np.array([f.pose.position[:2] for f in frame_list], dtype=np.float64)
        yaw = np.array([f.pose.yaw for f in frame_list], dtype=np.float64)
        rendered.append((tuple(f.image for f in frame_list), Cameras(xy, yaw)))
    return rendered[0], rendered[1]


def line_cameras(frames: range, spacing_m: float) -> Cameras:
    """Return cameras ``spacing_m`` apart along +x, all facing +x, for frame indices."""
    x = np.asarray(frames, dtype=np.float64) * spacing_m
    return Cameras(np.stack([x, np.zeros_like(x)], 1), np.zeros(len(x)))


def traversal_pair_source(root: str, first: int, stop: int, spacing_m: float, fov: FovConfig,
                          graded: bool = True) -> PairSource:
    """Return query frames ``[first, stop)`` against the reference frames of the same range."""
    queries, refs = traversal_frames(Path(root))
    frames = frame_range(len(queries), first, stop)
    cameras = line_cameras(frames, spacing_m)
    matrix = graded_labels(cameras, cameras, fov).as_matrix()
    count = len(frames)
    return PairSource(f'traversal:{Path(root).name}[{frames.start}:{frames.stop}]',
                      (tuple(str(queries[i]) for i in frames),),
                      (tuple(str(refs[i]) for i in frames),),
                      (matrix if graded else binary_matrix(matrix),),
                      (np.zeros(count, bool),), (np.zeros(count, bool),), graded)


def binary_matrix(matrix: LabelMatrix, threshold: float = 0.5) -> LabelMatrix:
    """Return binary labels ``psi >= threshold`` (our CL baseline labels without ``sim``)."""
    return LabelMatrix(matrix.shape, lambda q: (matrix.row(q) >= threshold).astype(np.float32))


def route_pair_source(seeds: tuple, frames: int, image_size: tuple[int, int],
                      fov: FovConfig, graded: bool = True) -> PairSource:
    """Return one 'city' per route seed: dusk frames as queries, day frames as the database."""
    queries, database, matrices, q_pano, db_pano = [], [], [], [], []
    for seed in seeds:
        (map_images, map_cams), (query_images, query_cams) = render_route_cameras(
            int(seed), frames, tuple(image_size))
        matrix = graded_labels(query_cams, map_cams, fov).as_matrix()
        queries.append(query_images)
        database.append(map_images)
        matrices.append(matrix if graded else binary_matrix(matrix))
        q_pano.append(np.zeros(len(query_images), bool))
        db_pano.append(np.zeros(len(map_images), bool))
    return PairSource(f'route:{",".join(str(s) for s in seeds)}', tuple(queries),
                      tuple(database), tuple(matrices), tuple(q_pano), tuple(db_pano), graded)
