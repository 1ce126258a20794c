"""Pair-VPR training data: dataset readers, SF-XL view sampling, samplers, configs."""

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from training_fixtures import CONFIGS
from vpr_ros.errors import ConfigError, DatasetError
from vpr_ros_training.augmentation import PairAugmentation, PlaceAugmentation
from vpr_ros_training.config import (config_as_dict, load_config, parse_config, StageOneConfig,
                                     StageTwoConfig)
from vpr_ros_training.datasets import GlobalBatchSampler, PairDataset, PlaceDataset
from vpr_ros_training.gldv2 import read_gldv2
from vpr_ros_training.gsv_cities import gsv_image_name, read_gsv_cities
from vpr_ros_training.place_folder import read_place_folders
from vpr_ros_training.places import PlaceUnion
from vpr_ros_training.route_places import place_anchors, read_route_eval, render_route
from vpr_ros_training.sfxl import (angle_difference_deg, bearing_deg, crop_view, SfxlPlaces,
                                   ViewRule)
from vpr_ros_training.synthetic import render_places
from vpr_ros_training.traversal import read_traversal_eval, read_traversal_places

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def write_image(path: Path, value: int, size: int = 16) -> None:
    """Write a uniform JPEG whose pixel value identifies it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), value, dtype=np.uint8))


def gsv_rows(city: str, places: dict[int, int]) -> list[dict]:
    """Return dataframe rows: ``places`` maps place id -> number of images."""
    rows = []
    for place, count in places.items():
        for k in range(count):
            rows.append({'place_id': place, 'year': 2015 + k, 'month': 3, 'northdeg': 7 * k,
                         'city_id': city, 'lat': 10.5 + place, 'lon': -3.25, 'panoid': f'p{k}'})
    return rows


def make_gsv(root: Path) -> None:
    """Write two cities; pixel value = 40 * place + image index."""
    for city, places in (('Aville', {0: 4, 1: 3}), ('Btown', {0: 5, 7: 4})):
        rows = gsv_rows(city, places)
        (root / 'Dataframes').mkdir(parents=True, exist_ok=True)
        with (root / 'Dataframes' / f'{city}.csv').open('w', newline='') as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        for row in rows:
            value = 40 * row['place_id'] + int(row['panoid'][1:]) + (100 if city == 'Btown' else 0)
            write_image(root / 'Images' / city / gsv_image_name(row), value % 256)


def test_gsv_image_name_follows_the_dataset_convention() -> None:
    """City, 7-digit place id, year, 2-digit month, 3-digit heading, lat, lon, panorama id."""
    row = {'place_id': '100013', 'year': '2017', 'month': '7', 'northdeg': '45',
           'city_id': 'London', 'lat': '51.50', 'lon': '-0.12', 'panoid': 'abc'}
    assert gsv_image_name(row) == 'London_0000013_2017_07_045_51.5_-0.12_abc.jpg'


def test_gsv_cities_places_by_city_with_min_images(tmp_path: Path) -> None:
    """Places with < 4 images are dropped; ids get the city prefix; places stay city by city."""
    make_gsv(tmp_path)
    table = read_gsv_cities(tmp_path, ('Aville', 'Btown'), min_images=4, seed=3)
    assert sorted(table.keys[:1]) == [0] and sorted(table.keys[1:]) == [100000, 100007]
    rng = np.random.default_rng(0)
    for place, key in enumerate(table.keys):
        images = table.sample_images(place, 4, rng)
        values = sorted(int(image[0, 0, 0]) for image in images)
        assert len(set(values)) == 4, 'four distinct images of the place'
        base = (40 * (key % 100000) + (100 if key >= 100000 else 0)) % 256
        assert all(abs(v - base) <= 8 for v in values)


def test_gldv2_clean_csv(tmp_path: Path) -> None:
    """Image ids map to a/b/c/<id>.jpg; landmarks with too few images are dropped."""
    ids = {5: ['abc1', 'abd2', 'xyz3', 'xyw4'], 9: ['qqq1', 'qqq2']}
    (tmp_path / 'train_clean.csv').write_text(
        'landmark_id,images\n' + ''.join(f'{k},{" ".join(v)}\n' for k, v in ids.items()))
    for value, image_id in enumerate(ids[5] + ids[9]):
        write_image(tmp_path / 'img' / image_id[0] / image_id[1] / image_id[2]
                    / f'{image_id}.jpg', 30 * value)
    table = read_gldv2(tmp_path / 'img', tmp_path / 'train_clean.csv', min_images=4)
    assert table.keys == (5,)
    assert sorted(int(i[0, 0, 0]) // 10 for i in table.sample_images(0, 4,
                                                                     np.random.default_rng(1))) \
        == [0, 3, 6, 9]
    with pytest.raises(DatasetError, match='landmark_id'):
        (tmp_path / 'bad.csv').write_text('id,url\n1,x\n')
        read_gldv2(tmp_path / 'img', tmp_path / 'bad.csv')


def test_place_folders_and_union(tmp_path: Path) -> None:
    """One place per sub-folder; a union relabels places consecutively."""
    for place in range(3):
        for k in range(place + 1):
            write_image(tmp_path / f'place_{place}' / f'{k}.png', 50 * place)
    table = read_place_folders(tmp_path, min_images=2)
    assert table.keys == ('place_1', 'place_2')
    union = PlaceUnion([table, render_places(2, 2, 16, seed=0)])
    assert len(union) == 4 and union.source_of(1) == 0 and union.source_of(2) == 1
    first, second = union.sample_pair(1, np.random.default_rng(0))
    assert first[0, 0, 0] == second[0, 0, 0] == 100


def panorama(width: int, height: int, yaw_deg: float) -> np.ndarray:
    """Return a ``[H, W, 1]`` panorama whose columns hold their compass bearing in degrees."""
    north = ((180.0 - yaw_deg) % 360.0) / 360.0 * width
    bearings = ((np.arange(width) - north) / width * 360.0) % 360.0
    return np.broadcast_to(bearings[None, :, None], (height, width, 1))


@pytest.mark.parametrize('yaw', [0.0, 77.0, 250.0])
def test_sfxl_crop_faces_the_focal_point(yaw: float) -> None:
    """The centre column of the crop looks along the bearing from the camera to the focal point."""
    pano = panorama(3328, 512, yaw)
    camera, focal = np.array([100.0, 200.0]), np.array([90.0, 215.0])
    bearing = bearing_deg(focal, camera)
    assert bearing == pytest.approx(math.degrees(math.atan2(-10.0, 15.0)) % 360)
    crop = crop_view(pano, bearing, yaw)
    assert crop.shape[:2] == (512, 512)
    centre = crop[0, 256, 0]
    assert angle_difference_deg(centre, bearing) < 360.0 / 3328 * 2


def sfxl_folder(root: Path) -> list[str]:
    """Write panoramas of two 15 m cells (6 and 3 images) with metadata in the names."""
    positions = [(1006 + 2 * k, 5011 + k) for k in range(6)] + [(1050, 5050)] * 3
    paths = []
    for index, (east, north) in enumerate(positions):
        name = f'@{east}@{north}@10@S@37.7@-122.4@pano{index}@0@{30 * index}@0@0@0@201901@@.jpg'
        path = root / 'panos' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((26, 169, 3), 10 * index, dtype=np.uint8))
        paths.append(str(path))
    return paths


def test_sfxl_cells_and_view_angle_rule(tmp_path: Path) -> None:
    """Cells need >= 5 panoramas; pair partners differ in viewing angle by 3-50 degrees."""
    places = SfxlPlaces(sfxl_folder(tmp_path), cell_m=15.0, min_images=5)
    assert places.keys == ((1005, 5010),)
    rng = np.random.default_rng(4)
    for _ in range(20):
        focal = places.focal_point(0, rng)
        distance = np.linalg.norm(focal - places._fields[places._members[0], :2].mean(0))
        assert 10.0 - 1e-6 <= distance <= 20.0 + 1e-6
        first = int(rng.choice(places._members[0]))
        second = places.partner(0, first, focal, rng)
        diff = angle_difference_deg(bearing_deg(focal, places._fields[first, :2]),
                                    bearing_deg(focal, places._fields[second, :2]))
        assert diff > 0.1
    first, second = places.sample_pair(0, rng)
    assert first.shape == second.shape == (26, 26, 3)
    strict = SfxlPlaces(places.paths, 15.0, 5, ViewRule(max_tries=500, relaxed_after=501))
    focal, members = np.array([1011.0, 5030.0]), strict._members[0]
    bearings = [bearing_deg(focal, strict._fields[m, :2]) for m in members]
    checked = 0
    for first in members:
        allowed = {int(m) for m, b in zip(members, bearings) if 3.0 <= angle_difference_deg(
            b, bearing_deg(focal, strict._fields[first, :2])) <= 50.0}
        if allowed:
            assert strict.partner(0, int(first), focal, rng) in allowed
            checked += 1
    assert checked >= 3


def test_traversal_places_and_eval(corridor_dir: Path) -> None:
    """Corridor frames 0-69 make 35 two-frame places; frames 70-110 are a held-out set."""
    table = read_traversal_places(corridor_dir, frames_per_place=2, first=0, stop=70)
    assert len(table) == 35 and all(len(table.images(p)) == 4 for p in range(35))
    eval_set = read_traversal_eval(corridor_dir, first=70, stop=111)
    assert len(eval_set.queries) == len(eval_set.database) == 41
    assert all(q - 2 <= p <= q + 2 for q, ps in enumerate(eval_set.positives) for p in ps)
    assert eval_set.labels().sum() == sum(len(p) for p in eval_set.positives)


def test_route_places_group_by_position() -> None:
    """Anchors are spacing_m apart; route positives are the map frames within radius_m."""
    (_, map_xy), (_, query_xy) = render_route(5, 24, (32, 40))
    anchors = place_anchors(map_xy, 3.0)
    assert np.all(np.linalg.norm(np.diff(anchors, axis=0), axis=1) >= 3.0)
    eval_set = read_route_eval(5, 24, (32, 40), radius_m=2.5)
    distance = np.linalg.norm(query_xy[:, None] - map_xy[None], axis=2)
    assert [list(p) for p in eval_set.positives] == [list(np.flatnonzero(d <= 2.5))
                                                     for d in distance]


def test_global_batches_match_across_world_sizes() -> None:
    """W ranks of P samples each see exactly the batches of one process with W * P samples."""
    single = GlobalBatchSampler(23, per_rank=6, world_size=1, shuffle=True, seed=9)
    ranks = [GlobalBatchSampler(23, per_rank=3, world_size=2, rank=r, shuffle=True, seed=9)
             for r in range(2)]
    for epoch in (0, 1):
        for sampler in [single] + ranks:
            sampler.set_epoch(epoch)
        merged = [a + b for a, b in zip(*[list(r) for r in ranks])]
        assert merged == list(single) and len(merged) == 3
    single.set_epoch(1, skip=2)
    assert list(single) == merged[2:]
    ordered = GlobalBatchSampler(8, per_rank=4, shuffle=False)
    assert [[p for p, _ in batch] for batch in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError):
        GlobalBatchSampler(3, per_rank=2, world_size=2)


def test_datasets_are_deterministic_per_sample_key() -> None:
    """Same key -> same images, augmentation and mask; the mask covers int(0.9 N) patches."""
    places = render_places(4, 4, 32, seed=1)
    pairs = PairDataset(places, PairAugmentation(28, MEAN, STD), num_patches=4, mask_ratio=0.9)
    first, again, other = pairs[(2, 77)], pairs[(2, 77)], pairs[(2, 78)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == (3, 28, 28) and int(first[2].sum()) == 3
    groups = PlaceDataset(places, PlaceAugmentation(28, MEAN, STD), images_per_place=4)
    images, labels = groups[(3, 5)]
    assert images.shape == (4, 3, 28, 28) and labels.tolist() == [3, 3, 3, 3]
    assert torch.equal(images, groups[(3, 5)][0])


def test_place_augmentation_without_randaugment_only_resizes_and_normalises() -> None:
    """A uniform image stays uniform: (value / 255 - mean) / std."""
    image = np.full((40, 50, 3), 153, dtype=np.uint8)
    out = PlaceAugmentation(28, MEAN, STD, num_ops=0)(image)
    assert out.shape == (3, 28, 28)
    assert torch.allclose(out, torch.full_like(out, (153 / 255 - 0.5) / 0.25), atol=1e-5)


@pytest.mark.parametrize('name, global_batch, epochs, blocks', [
    ('vitb', 512, 500, 6), ('vitl', 512, 1000, 12), ('vitg', 512, 1000, 20)])
def test_published_stage_one_recipes(name: str, global_batch: int, epochs: int,
                                     blocks: int) -> None:
    """Stage-one configs: 512 pairs per step, the paper's epochs and trainable blocks."""
    config = load_config(StageOneConfig, CONFIGS / f'{name}_stage_one.yaml')
    assert config.run.batch_size_per_gpu * config.run.num_gpus == global_batch
    assert (config.optim.epochs, config.model.num_trainable_blocks) == (epochs, blocks)
    assert config.model.options['image_size'] == 224
    assert config.optim.scaled_lr(global_batch) == pytest.approx(3e-4 * math.sqrt(0.5))
    assert [s.kind for s in config.data.sources] == ['sfxl', 'gldv2', 'gsv_cities']


@pytest.mark.parametrize('name, per_gpu, gpus, top_k', [
    ('vitb', 20, 5, 100), ('vitl', 14, 7, 100), ('vitg', 12, 8, 500)])
def test_published_stage_two_recipes(name: str, per_gpu: int, gpus: int, top_k: int) -> None:
    """Stage-two configs: P places x 4 images per GPU, 10 epochs, lr 8e-5, top-K."""
    config = load_config(StageTwoConfig, CONFIGS / f'{name}_stage_two.yaml')
    assert (config.run.batch_size_per_gpu, config.run.num_gpus) == (per_gpu, gpus)
    assert (config.optim.epochs, config.optim.lr, config.optim.images_per_place) == (10, 8e-5, 4)
    assert (config.optim.schedule_iters, config.evaluation.top_k) == (6225, top_k)
    assert parse_config(StageTwoConfig, config_as_dict(config)) == config


def test_config_errors_name_the_problem() -> None:
    """Unknown keys, unknown source kinds and bad values are rejected by name."""
    with pytest.raises(ConfigError, match='batchsize'):
        parse_config(StageOneConfig, {'run': {'batchsize': 3}})
    with pytest.raises(ConfigError, match='msls'):
        parse_config(StageOneConfig, {'data': {'sources': [{'kind': 'msls'}]}})
    with pytest.raises(ConfigError, match='precision'):
        parse_config(StageOneConfig, {'run': {'precision': 'fp8'}})
    config = load_config(StageTwoConfig, CONFIGS / 'tiny_stage_two.yaml',
                         ['run.max_steps=3', 'optim.lr=2e-4'])
    assert (config.run.max_steps, config.optim.lr) == (3, 2e-4)
