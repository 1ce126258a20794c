"""Ground truth by position: the map places within a radius (and heading) of each query."""

from typing import Optional

import numpy as np

from vpr_ros.errors import ConfigError

_BRUTE_FORCE_CHUNK = 1024


def positives_within_radius(query_xy: np.ndarray, db_xy: np.ndarray, radius_m: float,
                            query_yaw: Optional[np.ndarray] = None,
                            db_yaw: Optional[np.ndarray] = None,
                            max_yaw_diff_rad: Optional[float] = None) -> list[np.ndarray]:
    """Return, per query, the sorted database ids within ``radius_m`` (inclusive, Euclidean).

    Args:
        query_xy: ``[Q, 2]`` (east, north) or (x, y) positions in metres, or ``[Q, 3]``
            (x, y, z) positions.
        db_xy: ``[D, 2]`` (or ``[D, 3]``) database positions, as many coordinates as
            ``query_xy``.
        radius_m: the positive radius (25 m in the standard benchmarks).
        query_yaw: ``[Q]`` headings in radians (needed with ``max_yaw_diff_rad``).
        db_yaw: ``[D]`` headings in radians.
        max_yaw_diff_rad: when given, also require the wrapped heading difference to be at
            most this (inclusive).

    Returns:
        A list of ``Q`` ``int64`` arrays of database ids in increasing order.
    """
    queries, database = _as_xy(query_xy, 'query_xy'), _as_xy(db_xy, 'db_xy')
    if len(queries) and len(database) and queries.shape[1] != database.shape[1]:
        raise ConfigError(f'query positions have {queries.shape[1]} coordinates but database '
                          f'positions {database.shape[1]}')
    if radius_m < 0 or not np.isfinite(radius_m):
        raise ConfigError(f'positive radius must be a finite number >= 0, got {radius_m}')
    if len(database) == 0 or len(queries) == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(len(queries))]
    within = _neighbours_within(queries, database, float(radius_m))
    if max_yaw_diff_rad is None:
        return within
    q_yaw, d_yaw = _check_yaws(query_yaw, db_yaw, len(queries), len(database))
    return [ids[np.abs(wrap_angle(d_yaw[ids] - q_yaw[q])) <= max_yaw_diff_rad]
            for q, ids in enumerate(within)]


def _as_xy(points: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, array.shape[-1] if array.ndim == 2 else 2)
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise ConfigError(f'{name} must be [N, 2] or [N, 3] positions, got shape {array.shape}')
    if not np.all(np.isfinite(array)):
        raise ConfigError(f'{name} contains non-finite positions')
    return array


def _check_yaws(query_yaw: Optional[np.ndarray], db_yaw: Optional[np.ndarray],
                num_queries: int, num_db: int) -> tuple[np.ndarray, np.ndarray]:
    if query_yaw is None or db_yaw is None:
        raise ConfigError('max_yaw_diff_rad needs both query_yaw and db_yaw')
    q_yaw = np.asarray(query_yaw, dtype=np.float64).reshape(-1)
    d_yaw = np.asarray(db_yaw, dtype=np.float64).reshape(-1)
    if len(q_yaw) != num_queries or len(d_yaw) != num_db:
        raise ConfigError(f'yaw arrays have {len(q_yaw)} / {len(d_yaw)} values for '
                          f'{num_queries} queries / {num_db} database positions')
    return q_yaw, d_yaw


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Wrap angles in radians to ``[-pi, pi)``."""
    return (np.asarray(angle, dtype=np.float64) + np.pi) % (2.0 * np.pi) - np.pi


def _neighbours_within(queries: np.ndarray, database: np.ndarray,
                       radius: float) -> list[np.ndarray]:
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        return _brute_force_within(queries, database, radius)
    tree = cKDTree(database)
    found = tree.query_ball_point(queries, r=radius, p=2.0, return_sorted=True)
    return [np.asarray(ids, dtype=np.int64) for ids in found]


def _brute_force_within(queries: np.ndarray, database: np.ndarray,
                        radius: float) -> list[np.ndarray]:
    result = []
    for start in range(0, len(queries), _BRUTE_FORCE_CHUNK):
        chunk = queries[start:start + _BRUTE_FORCE_CHUNK]
        distances = np.sqrt(((chunk[:, None, :] - database[None, :, :]) ** 2).sum(-1))
        result.extend(np.flatnonzero(row <= radius).astype(np.int64) for row in distances)
    return result
