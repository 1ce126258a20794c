"""Places from the project's procedural route (:func:`vpr_ros.sample.renderer.render_traversal`).

Both traversals of a route (map: day; query: dusk, offset viewpoint) are rendered; frames are
grouped into places by position: anchors every ``spacing_m`` metres along the map traversal, and
every frame of either traversal joins its nearest anchor when it lies within ``spacing_m / 2``.
Different route seeds give disjoint places for held-out evaluation, where the queries are the
query traversal and the database the map traversal, positives within ``radius_m``.
"""

from functools import lru_cache

import numpy as np

from vpr_ros.data.ground_truth import positives_within_radius
from vpr_ros.errors import DatasetError
from vpr_ros.geometry import positions_array
from vpr_ros.sample.renderer import render_traversal
from vpr_ros.sample.route import RouteConfig
from vpr_ros_training.places import PlaceTable
from vpr_ros_training.traversal import EvalSet


@lru_cache(maxsize=4)
def render_route(seed: int, frames: int, image_size: tuple[int, int]) -> tuple[tuple, tuple]:
    """Return ``((images, xy) map traversal, (images, xy) query traversal)`` of one route."""
    config = RouteConfig(seed=seed, frames_per_traversal=frames, image_size=tuple(image_size))
    rendered = []
    for traversal in (0, 1):
        frame_list = render_traversal(config, traversal)
        xy = positions_array([f.pose for f in frame_list])[:, :2]
        rendered.append((tuple(f.image for f in frame_list), xy))
    return rendered[0], rendered[1]


def place_anchors(xy: np.ndarray, spacing_m: float) -> np.ndarray:
    """Return map positions at least ``spacing_m`` apart, walking along the traversal."""
    anchors = [xy[0]]
    for point in xy[1:]:
        if np.linalg.norm(point - anchors[-1]) >= spacing_m:
            anchors.append(point)
    return np.array(anchors)


def read_route_places(seed: int, frames: int = 120, image_size: tuple[int, int] = (64, 80),
                      spacing_m: float = 3.0) -> PlaceTable:
    """Return the route's places: frames of both traversals grouped around position anchors."""
    (map_images, map_xy), (query_images, query_xy) = render_route(seed, frames, tuple(image_size))
    anchors = place_anchors(map_xy, spacing_m)
    images = map_images + query_images
    xy = np.concatenate([map_xy, query_xy])
    distance = np.linalg.norm(xy[:, None] - anchors[None], axis=2)
    nearest = distance.argmin(axis=1)
    places = [[images[i] for i in np.flatnonzero((nearest == a) & (distance[:, a] <=
                                                                   spacing_m / 2))]
              for a in range(len(anchors))]
    table = PlaceTable(f'route:{seed}', places).with_min_images(2)
    if len(table) < 2:
        raise DatasetError(f'route {seed} gave {len(table)} places; lower spacing_m')
    return table


def read_route_eval(seed: int, frames: int = 120, image_size: tuple[int, int] = (64, 80),
                    radius_m: float = 2.0) -> EvalSet:
    """Return query traversal against map traversal, positives within ``radius_m`` metres."""
    (map_images, map_xy), (query_images, query_xy) = render_route(seed, frames, tuple(image_size))
    positives = positives_within_radius(query_xy, map_xy, radius_m)
    return EvalSet(f'route:{seed}', query_images, map_images,
                   tuple(tuple(int(i) for i in p) for p in positives))
