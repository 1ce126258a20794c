"""Node-side configuration: frozen dataclasses behind the ROS parameters of each node.

Like :mod:`vpr_ros.config`, every field carries ``metadata['help']`` and, for numbers,
``metadata['range']`` (min, max) or, for strings, ``metadata['choices']``. ``runtime=True`` in the
metadata marks a parameter that may change while the node runs; all others are read-only.

:data:`LOCALIZE_GROUPS` and :data:`BUILD_MAP_GROUPS` list, per node, which dataclasses become
parameters under which prefix; ``config/localize.yaml`` and ``config/build_map.yaml`` hold exactly
those keys (test-enforced).
"""

from dataclasses import dataclass, fields
from typing import Optional

from vpr_ros.config import DEFAULT_MODEL, IndexConfig, LocalizerConfig, option, validate

RELIABILITIES = ('best_effort', 'reliable')
POSE_SOURCES = ('odometry', 'pose_stamped', 'pose_with_covariance')


@dataclass(frozen=True)
class KeyframeGateConfig:
    """When a frame counts as a keyframe (localize: runs VPR; build_map: enters the map).

    A frame passes when every enabled minimum is met since the last keyframe: at least
    ``min_interval_s`` seconds, and (when either motion minimum is enabled) at least
    ``min_distance_m`` travelled or ``min_rotation_deg`` turned. 0 disables a criterion.
    """

    min_interval_s: float = option(0.0, 'minimum time between keyframes in seconds (0 = off)',
                                   (0.0, 3600.0), runtime=True)
    min_distance_m: float = option(0.0, 'minimum travelled distance between keyframes in metres '
                                   '(0 = off; localize reads it from the odometry topic)',
                                   (0.0, 1e4), runtime=True)
    min_rotation_deg: float = option(0.0, 'minimum heading change between keyframes in degrees '
                                     '(0 = off)', (0.0, 180.0), runtime=True)

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    @property
    def uses_motion(self) -> bool:
        """Whether a motion criterion is enabled (and so a pose source is needed)."""
        return self.min_distance_m > 0.0 or self.min_rotation_deg > 0.0


@dataclass(frozen=True)
class LocalizeNodeConfig:
    """Topics, map, model and output options of the ``localize`` node."""

    image_topic: str = option('image', 'input image topic (relative names follow the namespace); '
                              'with use_compressed the node reads <image_topic>/compressed')
    use_compressed: bool = option(False, 'subscribe to sensor_msgs/CompressedImage (jpeg/png) '
                                  'instead of sensor_msgs/Image')
    reliability: str = option('best_effort', 'image subscription reliability: best_effort '
                              '(sensor data, connects to any camera) or reliable',
                              choices=RELIABILITIES)
    queue_depth: int = option(5, 'image subscription queue depth (keep last)', (1, 1000))
    odom_topic: str = option('odom', 'nav_msgs/Odometry topic for keyframe gating by motion')
    map_path: str = option('', 'map database directory (reload with ~/reload_map)', runtime=True)
    model: str = option(DEFAULT_MODEL, 'registry model name (ignored when checkpoint is set)')
    checkpoint: str = option('', 'safetensors checkpoint of the model ("" = registry weights)')
    map_frame: str = option('map', 'frame_id of ~/pose, ~/matches and ~/markers (the global '
                            'frame of AMCL / robot_localization / rtabmap)')
    exclude_recent_s: float = option(0.0, 'ignore map places stamped within this many seconds of '
                                     'the query, e.g. a map growing from the same camera '
                                     '(0 = off)', (0.0, 1e9), runtime=True)
    publish_pose: bool = option(True, 'publish ~/pose for accepted matches', runtime=True)
    publish_loop_closure: bool = option(True, 'publish ~/loop_closure for accepted matches',
                                        runtime=True)
    covariance_candidates: int = option(5, 'top candidates whose pose spread gives the ~/pose '
                                        'covariance', (1, 100), runtime=True)
    min_position_stddev_m: float = option(0.5, 'lower bound of the ~/pose position standard '
                                          'deviation in metres', (0.0, 1e4), runtime=True)
    min_yaw_stddev_deg: float = option(5.0, 'lower bound of the ~/pose orientation standard '
                                       'deviation in degrees', (0.0, 180.0), runtime=True)
    marker_scale_m: float = option(0.5, 'size of the RViz place markers in metres',
                                   (0.001, 100.0), runtime=True)
    diagnostics_period_s: float = option(1.0, '/diagnostics publishing period in seconds',
                                         (0.05, 60.0))
    map_watch_period_s: float = option(0.0, 'reload the map when its manifest changes, checked '
                                       'every N seconds, loading it in the background (0 = off; '
                                       'use with a growing build_map)', (0.0, 3600.0))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class BuildMapNodeConfig:
    """Topics, pairing, map and saving options of the ``build_map`` node."""

    image_topic: str = option('image', 'input image topic; with use_compressed the node reads '
                              '<image_topic>/compressed')
    use_compressed: bool = option(False, 'subscribe to sensor_msgs/CompressedImage (jpeg/png)')
    reliability: str = option('best_effort', 'image subscription reliability: best_effort or '
                              'reliable', choices=RELIABILITIES)
    queue_depth: int = option(10, 'image and pose subscription queue depth', (1, 1000))
    pose_source: str = option('odometry', 'pose message type: odometry (nav_msgs/Odometry), '
                              'pose_stamped (geometry_msgs/PoseStamped) or pose_with_covariance '
                              '(geometry_msgs/PoseWithCovarianceStamped, e.g. /amcl_pose)',
                              choices=POSE_SOURCES)
    pose_topic: str = option('odom', 'pose topic paired with the images by nearest stamp')
    pair_tolerance_s: float = option(0.05, 'largest image-to-pose stamp difference in seconds',
                                     (0.0, 10.0), runtime=True)
    max_pending_frames: int = option(30, 'images waiting for a pose; the oldest is dropped '
                                     'beyond this', (1, 10000))
    map_path: str = option('', 'map database directory written on ~/save and at shutdown')
    append: bool = option(True, 'continue an existing map at map_path instead of replacing it')
    model: str = option(DEFAULT_MODEL, 'registry model name (ignored when checkpoint is set)')
    checkpoint: str = option('', 'safetensors checkpoint of the model ("" = registry weights)')
    store_tokens: bool = option(True, 'store dense tokens for pair re-ranking (models with a '
                                'pair classifier only)')
    autosave_period_s: float = option(0.0, 'save the map every N seconds when it grew '
                                      '(0 = only on ~/save and at shutdown)', (0.0, 86400.0))
    diagnostics_period_s: float = option(1.0, '/diagnostics publishing period in seconds',
                                         (0.05, 60.0))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)


@dataclass(frozen=True)
class ParameterGroup:
    """One config dataclass declared as ROS parameters ``<prefix>.<field>`` (or bare names)."""

    prefix: str
    cls: type
    names: Optional[tuple] = None
    runtime: Optional[frozenset] = None
    defaults: Optional[object] = None

    def default(self, name: str) -> object:
        """Return the declared default of field ``name`` (from ``defaults`` when set)."""
        if self.defaults is not None:
            return getattr(self.defaults, name)
        return {f.name: f for f in fields(self.cls)}[name].default

    def field_names(self) -> tuple:
        """Return the declared field names (all fields unless ``names`` picks a subset)."""
        return self.names if self.names is not None else tuple(f.name for f in fields(self.cls))

    def parameter_name(self, name: str) -> str:
        """Return the ROS parameter name of field ``name``."""
        return f'{self.prefix}.{name}' if self.prefix else name

    def is_runtime(self, name: str) -> bool:
        """Whether field ``name`` may change while the node runs."""
        if self.runtime is not None:
            return name in self.runtime
        meta = {f.name: f.metadata for f in fields(self.cls)}[name]
        return bool(meta.get('runtime', False))


LOCALIZER_RUNTIME = frozenset({'top_k', 'rerank', 'rerank_fusion', 'fusion_beta',
                               'rerank_batch_size', 'accept_probability', 'temporal_window',
                               'temporal_max_distance_m', 'temporal_max_id_gap',
                               'verify_top_n', 'min_inliers', 'verify_model',
                               'verify_threshold'})
LOCALIZE_GROUPS = (
    ParameterGroup('', LocalizeNodeConfig),
    ParameterGroup('localizer', LocalizerConfig, runtime=LOCALIZER_RUNTIME),
    ParameterGroup('keyframe', KeyframeGateConfig),
)
BUILD_MAP_GROUPS = (
    ParameterGroup('', BuildMapNodeConfig),
    ParameterGroup('localizer', LocalizerConfig,
                   names=('batch_size', 'device', 'precision', 'backend', 'backend_cache_dir'),
                   runtime=frozenset()),
    ParameterGroup('index', IndexConfig, runtime=frozenset()),
    ParameterGroup('keyframe', KeyframeGateConfig),
)
NODE_GROUPS = {'localize': LOCALIZE_GROUPS, 'build_map': BUILD_MAP_GROUPS}
