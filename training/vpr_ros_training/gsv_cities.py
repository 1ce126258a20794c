"""GSV-Cities reader: per-city dataframes (CSV) and the image files they name.

Layout (amaralibey/gsv-cities): ``<root>/Dataframes/<City>.csv`` with columns ``place_id, year,
month, northdeg, city_id, lat, lon, panoid`` and ``<root>/Images/<City>/<name>.jpg`` where ``name``
is built by :func:`gsv_image_name`. Place ids are made unique across cities by adding
``city_index * 10**5``; places are ordered city by city, shuffled within each city (a batch of
consecutive places therefore comes from one city, as in the published stage-two recipe).
"""

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from vpr_ros.errors import DatasetError
from vpr_ros_training.places import PlaceTable

TRAIN_CITIES = (
    'Bangkok', 'BuenosAires', 'LosAngeles', 'MexicoCity', 'OSL', 'Rome', 'Barcelona', 'Chicago',
    'Madrid', 'Miami', 'Phoenix', 'TRT', 'Boston', 'Lisbon', 'Medellin', 'Minneapolis', 'PRG',
    'WashingtonDC', 'Brussels', 'London', 'Melbourne', 'Osaka', 'PRS',
)
COLUMNS = ('place_id', 'year', 'month', 'northdeg', 'city_id', 'lat', 'lon', 'panoid')
CITY_ID_STRIDE = 10 ** 5


def gsv_image_name(row: dict) -> str:
    """Return the image file name of one dataframe row (GSV-Cities naming convention)."""
    place = int(row['place_id']) % CITY_ID_STRIDE
    return '_'.join([
        row['city_id'], str(place).zfill(7), str(int(row['year'])).zfill(4),
        str(int(row['month'])).zfill(2), str(int(row['northdeg'])).zfill(3),
        str(float(row['lat'])), str(float(row['lon'])), row['panoid']]) + '.jpg'


def read_city_rows(root: Path, city: str) -> list[dict]:
    """Read one city's dataframe, naming the file and any missing column."""
    path = root / 'Dataframes' / f'{city}.csv'
    try:
        with path.open(newline='') as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DatasetError(f'cannot read GSV-Cities dataframe {path}: {exc}') from exc
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if missing:
        raise DatasetError(f'{path} lacks column(s) {missing}; expected {list(COLUMNS)}')
    return rows


def city_places(root: Path, city: str, city_index: int,
                rng: np.random.Generator) -> tuple[list[int], list[list[str]]]:
    """Return (unique place ids, image paths per place) of one city, places shuffled."""
    grouped: dict[int, list[str]] = {}
    for row in read_city_rows(root, city):
        key = int(row['place_id']) + city_index * CITY_ID_STRIDE
        path = root / 'Images' / row['city_id'] / gsv_image_name(row)
        grouped.setdefault(key, []).append(str(path))
    keys = sorted(grouped)
    order = rng.permutation(len(keys))
    keys = [keys[i] for i in order]
    return keys, [grouped[k] for k in keys]


def read_gsv_cities(root: str | Path, cities: Sequence[str] = TRAIN_CITIES, min_images: int = 4,
                    seed: int = 0) -> PlaceTable:
    """Return the GSV-Cities places of ``cities`` with at least ``min_images`` images each."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    keys: list[int] = []
    places: list[list[str]] = []
    for index, city in enumerate(cities):
        city_keys, city_images = city_places(root, city, index, rng)
        keys += city_keys
        places += city_images
    if not places:
        raise DatasetError(f'no GSV-Cities places found under {root} for cities {list(cities)}')
    return PlaceTable('gsv_cities', places, keys).with_min_images(min_images)
