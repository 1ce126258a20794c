"""Typed data-source configs (``data.sources`` entries), one per dataset format, by ``kind``.

Each config's :meth:`load` returns a :class:`~vpr_ros_training.places.PlaceSet`. A ``first_place``/
``stop_place`` window (``stop_place`` 0 = all) selects a contiguous range of places so that
training and held-out evaluation can use disjoint places of one dataset.
"""

from dataclasses import dataclass

from vpr_ros.config import validate
from vpr_ros.errors import ConfigError
from vpr_ros_training.config import option, register_source, SourceConfig
from vpr_ros_training.gldv2 import read_gldv2
from vpr_ros_training.gsv_cities import read_gsv_cities, TRAIN_CITIES
from vpr_ros_training.place_folder import read_place_folders
from vpr_ros_training.places import PlaceSet, PlaceTable, PlaceUnion
from vpr_ros_training.route_places import read_route_eval, read_route_places
from vpr_ros_training.sfxl import read_sfxl_paths, SfxlPlaces, ViewRule
from vpr_ros_training.synthetic import render_places
from vpr_ros_training.traversal import (EvalSet, places_eval, read_traversal_eval,
                                        read_traversal_places)


def window(table: PlaceTable, first: int, stop: int) -> PlaceTable:
    """Return places ``[first, stop)`` of ``table`` (``stop`` 0 = to the end)."""
    stop = len(table) if stop <= 0 else min(stop, len(table))
    if not 0 <= first < stop:
        raise ConfigError(f'{table.name}: empty place window [{first}, {stop}) of {len(table)}')
    return table.subset(range(first, stop))


@register_source('gsv_cities')
@dataclass(frozen=True)
class GsvCitiesSource(SourceConfig):
    """GSV-Cities dataframes + images (stage one pairs, stage two P x 4 batches)."""

    root: str = option('', 'GSV-Cities folder holding Dataframes/ and Images/')
    cities: tuple = option(TRAIN_CITIES, 'cities to read (published: the 23 training cities)')
    min_images: int = option(4, 'drop places with fewer images', (1, 1000))
    seed: int = option(0, 'seed of the within-city place shuffle')

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> PlaceSet:
        """Read the dataframes."""
        return read_gsv_cities(self.root, self.cities, self.min_images, self.seed)


@register_source('sfxl')
@dataclass(frozen=True)
class SfxlSource(SourceConfig):
    """SF-XL raw panoramas with focal-point view sampling (stage one)."""

    root: str = option('', 'folder of raw 360-degree panoramas (@utm_e@utm_n@...@yaw@...jpg)')
    paths_file: str = option('', 'optional text file listing panorama paths relative to root')
    cell_m: float = option(15.0, 'side of the UTM cells that define places (m)', (0.1, 1e4))
    min_images: int = option(5, 'drop cells with fewer panoramas', (2, 100000))
    focal_min_m: int = option(10, 'minimum focal distance from the cell centre (m)', (0, 1000))
    focal_max_m: int = option(20, 'maximum focal distance (m)', (0, 1000))
    min_angle_deg: float = option(3.0, 'minimum viewing-angle difference of a pair', (0.0, 180.0))
    max_angle_deg: float = option(50.0, 'maximum viewing-angle difference', (0.0, 180.0))
    max_tries: int = option(10, 'draws of the second panorama before giving up', (1, 1000))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> PlaceSet:
        """Index the panoramas into cells."""
        rule = ViewRule(self.focal_min_m, self.focal_max_m, self.min_angle_deg,
                        self.max_angle_deg, self.max_tries)
        return SfxlPlaces(read_sfxl_paths(self.root, self.paths_file), self.cell_m,
                          self.min_images, rule)


@register_source('gldv2')
@dataclass(frozen=True)
class Gldv2Source(SourceConfig):
    """Google Landmarks v2, cleaned training CSV (stage one)."""

    root: str = option('', 'GLDv2 train image folder (a/b/c/<id>.jpg)')
    csv: str = option('', 'path of train_clean.csv')
    min_images: int = option(4, 'drop landmarks with fewer images', (2, 100000))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> PlaceSet:
        """Read the CSV."""
        return read_gldv2(self.root, self.csv, self.min_images)


@register_source('places')
@dataclass(frozen=True)
class PlaceFolderSource(SourceConfig):
    """Generic folder with one sub-folder of images per place."""

    root: str = option('', 'folder of place folders')
    min_images: int = option(2, 'drop places with fewer images', (1, 100000))
    first_place: int = option(0, 'first place of the window used', (0, 10 ** 9))
    stop_place: int = option(0, 'end of the window (exclusive, 0 = all)', (0, 10 ** 9))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> PlaceSet:
        """Read the folders."""
        table = read_place_folders(self.root, self.min_images)
        return window(table, self.first_place, self.stop_place)

    def eval_set(self) -> EvalSet:
        """Return the window as a held-out evaluation set (first image of a place = database)."""
        return places_eval(self.load())


@register_source('traversal')
@dataclass(frozen=True)
class TraversalSource(SourceConfig):
    """Two traversals (query/, ref/, ground_truth.json) such as the corridor data."""

    root: str = option('', 'folder with query/, ref/ and ground_truth.json')
    frames_per_place: int = option(2, 'consecutive frames grouped into one place', (1, 1000))
    first_frame: int = option(0, 'first frame used', (0, 10 ** 9))
    stop_frame: int = option(0, 'end of the frame range (exclusive, 0 = all)', (0, 10 ** 9))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> PlaceSet:
        """Group the frames into places."""
        return read_traversal_places(self.root, self.frames_per_place, self.first_frame,
                                     self.stop_frame)

    def eval_set(self) -> EvalSet:
        """Return query frames against reference frames of the range, with the ground truth."""
        return read_traversal_eval(self.root, self.first_frame, self.stop_frame)


@register_source('synthetic')
@dataclass(frozen=True)
class SyntheticSource(SourceConfig):
    """Procedural places rendered in memory (tests, smoke runs)."""

    num_places: int = option(64, 'places rendered', (1, 10 ** 6))
    images_per_place: int = option(4, 'views per place', (2, 1000))
    image_size: int = option(64, 'rendered view size in pixels', (8, 4096))
    seed: int = option(0, 'rendering seed (use different seeds for train and test places)')

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> PlaceSet:
        """Render the places."""
        return render_places(self.num_places, self.images_per_place, self.image_size, self.seed)

    def eval_set(self) -> EvalSet:
        """Return the places as a held-out evaluation set."""
        return places_eval(self.load())


@register_source('route')
@dataclass(frozen=True)
class RouteSource(SourceConfig):
    """The procedural two-traversal route (vpr_ros.sample.renderer), grouped by position."""

    seed: int = option(7, 'route seed (different seeds give disjoint places)')
    frames: int = option(120, 'frames rendered per traversal', (2, 100000))
    image_size: tuple = option((64, 80), 'rendered (height, width) in pixels')
    spacing_m: float = option(3.0, 'distance between place anchors (m)', (0.1, 1000.0))
    radius_m: float = option(2.0, 'evaluation positive radius (m)', (0.0, 1000.0))

    def __post_init__(self) -> None:
        """Validate values."""
        validate(self)

    def load(self) -> PlaceSet:
        """Render the route and group its frames into places."""
        return read_route_places(self.seed, self.frames, tuple(self.image_size), self.spacing_m)

    def eval_set(self) -> EvalSet:
        """Return query traversal against map traversal with positives within radius_m."""
        return read_route_eval(self.seed, self.frames, tuple(self.image_size), self.radius_m)


def load_places(sources: tuple) -> PlaceSet:
    """Load every source; several sources are concatenated into one :class:`PlaceUnion`."""
    if not sources:
        raise ConfigError('data.sources is empty: name at least one data source')
    sets = [source.load() for source in sources]
    return sets[0] if len(sets) == 1 else PlaceUnion(sets)


def load_eval_sets(sources: tuple) -> list[EvalSet]:
    """Return the held-out evaluation set of every source that supports one."""
    sets = []
    for source in sources:
        if not hasattr(source, 'eval_set'):
            raise ConfigError(f'source kind {source.kind!r} cannot serve as an evaluation set')
        sets.append(source.eval_set())
    return sets
