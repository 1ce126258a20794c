"""Embedded default sample: a procedural street loop driven twice, by day and at dusk.

The scene is an L-shaped loop of streets lined with building facades (windows, doors, shop signs,
posters, murals), a paved floor with kerbs, lane markings and crosswalks, and a sky with clouds.
Every texture is built from seeded noise and OpenCV drawing primitives. A frame is rendered by
casting one 2-D ray per image column against the facade polylines and mapping every pixel to a
facade, floor or sky texel (numpy and OpenCV only, no OpenGL).

Traversal 0 is the map: daylight, the camera on the route centre line. Traversal 1 is the query:
dusk light with long shadows, warm colours and lit windows, a lateral offset, yaw and pitch jitter
and sampling positions that fall between the map's.
"""

from dataclasses import dataclass
import logging
import math
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from vpr_ros.data.bag import write_frames
from vpr_ros.data.frame import Frame
from vpr_ros.errors import ConfigError
from vpr_ros.geometry import pose_from_xy_yaw
from vpr_ros.sample.facade import (ATLAS_BAND_ROWS, col, FACADE_MAX_M, MIP_LEVELS, noise, pyramid,
                                   TEXEL_M, to_u8)
from vpr_ros.sample.route import (cast, IMAGE_TOPIC, POSE_TOPIC, RouteConfig, SamplePaths,
                                  TRAVERSALS, viewpoints)
from vpr_ros.sample.scene import build_scene, route_xy, Scene, world_px

_LOG = logging.getLogger(__name__)

SKY_EL_RANGE = (math.radians(-10.0), math.radians(70.0))
SKY_SHAPE = (360, 2048)
# cv2.remap needs every side of its source below SHRT_MAX; larger textures are sampled in
# tiles of _REMAP_TILE + 1 texels (a power of two keeps tile coordinates exact).
_REMAP_MAX_SIDE = 32767
_REMAP_TILE = 16384
_START_NS = 1_700_000_000 * 10**9
_TRAVERSAL_GAP_NS = 3 * 3600 * 10**9


@dataclass(frozen=True)
class _Lighting:
    """Illumination, sky and camera response of one traversal."""

    sun_azimuth: float
    sun_elevation: float
    sun_rgb: tuple
    ambient_rgb: tuple
    sky_horizon: tuple
    sky_zenith: tuple
    cloud_rgb: tuple
    cloud_cover: float
    emissive: float
    exposure: float
    white_balance: tuple
    tone_gamma: float
    vignette: float
    noise_sigma: float


_LIGHTING = (
    _Lighting(sun_azimuth=math.radians(55.0), sun_elevation=math.radians(48.0),
              sun_rgb=(0.95, 0.92, 0.85), ambient_rgb=(0.46, 0.5, 0.56),
              sky_horizon=(0.78, 0.85, 0.95), sky_zenith=(0.3, 0.5, 0.85),
              cloud_rgb=(0.97, 0.97, 0.98), cloud_cover=0.45, emissive=0.0,
              exposure=1.0, white_balance=(1.0, 1.0, 1.0), tone_gamma=1.0,
              vignette=0.12, noise_sigma=0.008),
    _Lighting(sun_azimuth=math.radians(250.0), sun_elevation=math.radians(9.0),
              sun_rgb=(0.9, 0.55, 0.3), ambient_rgb=(0.28, 0.26, 0.32),
              sky_horizon=(0.98, 0.55, 0.3), sky_zenith=(0.18, 0.16, 0.38),
              cloud_rgb=(0.55, 0.35, 0.4), cloud_cover=0.6, emissive=0.65,
              exposure=1.25, white_balance=(1.08, 0.96, 0.8), tone_gamma=1.12,
              vignette=0.3, noise_sigma=0.016),
)


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera pose and intrinsics of one frame."""

    xy: np.ndarray
    yaw: float
    height: float
    focal: float
    cx: float
    cy: float
    shape: tuple


# -------------------------------------------------------------------------------- lighting


def _sun_dir(light: _Lighting) -> np.ndarray:
    return np.array([math.cos(light.sun_azimuth), math.sin(light.sun_azimuth)])


def _shadow_mask(scene: Scene, light: _Lighting, shape: tuple) -> np.ndarray:
    """Rasterise the shadows the facades cast on the floor into the floor texture grid."""
    mask = np.zeros(shape, np.float32)
    walls, reach = scene.walls, -_sun_dir(light) / math.tan(light.sun_elevation)
    mid = walls.u0 + 0.5 * np.linalg.norm(walls.b - walls.a, axis=1)
    for k in range(len(walls.a)):
        heights = scene.heights[walls.wall[k]]
        h = float(heights[min(col(mid[k]), len(heights) - 1)])
        base = np.array([walls.a[k], walls.b[k]]) - 0.3 * walls.normal[k]
        quad = np.vstack([base, base[::-1] + h * reach])
        cv2.fillPoly(mask, [world_px(scene.floor_origin, quad)], 1.0)
    return cv2.GaussianBlur(mask, (5, 5), 0)


def _lit_floor(scene: Scene, light: _Lighting) -> tuple:
    """Return the mip pyramid of the floor as lit by ``light`` (sun, sky light, shadows)."""
    shadow = _shadow_mask(scene, light, scene.floor_albedo.shape[:2])
    sun = np.array(light.sun_rgb, np.float32) * math.sin(light.sun_elevation)
    lit = np.array(light.ambient_rgb, np.float32) + (1.0 - shadow)[..., None] * sun
    return pyramid(scene.floor_albedo * lit)


def _sky(rng: np.random.Generator, light: _Lighting) -> np.ndarray:
    """Return the sky panorama: rows are elevation (top = highest), columns azimuth 0..2 pi."""
    rows, cols = SKY_SHAPE
    el = np.linspace(SKY_EL_RANGE[1], SKY_EL_RANGE[0], rows)[:, None]
    t = (np.clip(el / SKY_EL_RANGE[1], 0.0, 1.0) ** 0.6)[..., None]
    sky = (1.0 - t) * np.array(light.sky_horizon) + t * np.array(light.sky_zenith)
    sky = np.broadcast_to(sky, (rows, cols, 3)).astype(np.float32)
    clouds = noise(rng, (rows, cols), (6, 16), 4)
    cover = np.clip((clouds - 1.0 + 2.0 * light.cloud_cover) * 1.5, 0.0, 0.9)[..., None]
    sky = sky * (1.0 - cover) + cover * np.array(light.cloud_rgb, np.float32)
    az = np.linspace(0.0, 2.0 * math.pi, cols, endpoint=False)[None, :]
    dist = np.arccos(np.clip(np.cos(el) * math.cos(light.sun_elevation)
                             * np.cos(az - light.sun_azimuth)
                             + np.sin(el) * math.sin(light.sun_elevation), -1.0, 1.0))
    glow = np.exp(-(dist / 0.35) ** 2)[..., None] * np.array(light.sun_rgb)
    return (sky + 0.8 * glow).astype(np.float32)


@dataclass(frozen=True)
class _Traversal:
    """Per-traversal lighting with the textures it implies."""

    light: _Lighting
    floor: tuple
    sky: np.ndarray


def _traversal_look(scene: Scene, config: RouteConfig, traversal: int) -> _Traversal:
    light = _LIGHTING[traversal]
    rng = np.random.default_rng([config.seed, 2, traversal])
    return _Traversal(light, _lit_floor(scene, light), _sky(rng, light))


# ------------------------------------------------------------------------------- rendering


def _remap(src: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Bilinearly sample ``src`` at the 1-D coordinate arrays; returns ``[N, C]`` float32.

    Outside ``src`` the edge texels are repeated. A texture with a side of
    :data:`_REMAP_MAX_SIDE` or more (the facade atlas of a route longer than about 1.6 km) is
    sampled tile by tile, because ``cv2.remap`` refuses such sources; the values are the same.
    """
    mx, my = mx.astype(np.float32), my.astype(np.float32)
    if max(src.shape[:2]) < _REMAP_MAX_SIDE:
        out = _remap_flat(src, mx, my)
    else:
        out = _remap_tiled(src, mx, my)
    out = out.astype(np.float32)
    return out / 255.0 if src.dtype == np.uint8 else out


def _remap_flat(src: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Sample ``src`` (sides below :data:`_REMAP_MAX_SIDE`) at float32 coordinates: ``[N, C]``."""
    n, width = len(mx), 1024
    pad = (-n) % width
    grid = [np.pad(m, (0, pad)).reshape(-1, width) for m in (mx, my)]
    out = cv2.remap(src, grid[0], grid[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, src.shape[2] if src.ndim == 3 else 1)[:n]


def _tile_index(coord: np.ndarray, size: int) -> np.ndarray:
    """Return the :data:`_REMAP_TILE` tile whose texels a bilinear sample at ``coord`` reads.

    Tile ``k`` holds texels ``k * T`` to ``(k + 1) * T`` inclusive, so a sample in
    ``[k * T, (k + 1) * T)`` finds both neighbours in it; samples before the first or after the
    last tile go to that tile, whose edge is the texture's edge.
    """
    count = max(1, -(-(size - 1) // _REMAP_TILE))
    index = np.nan_to_num(np.floor(coord / np.float32(_REMAP_TILE)), nan=0.0)
    return np.clip(index, 0, count - 1).astype(np.int64)


def _remap_tiled(src: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Sample a texture of any size as :func:`_remap_flat` would, one tile at a time.

    Tile offsets are multiples of the power of two :data:`_REMAP_TILE`, so the coordinates
    relative to a tile are exact in float32 and every sample gets the same weights and texels as
    on the whole texture.
    """
    rows, cols = _tile_index(my, src.shape[0]), _tile_index(mx, src.shape[1])
    out = np.empty((len(mx), src.shape[2] if src.ndim == 3 else 1), src.dtype)
    keys = rows * (int(cols.max(initial=0)) + 1) + cols
    for key in np.unique(keys):
        sel = keys == key
        r0, c0 = int(rows[sel][0]) * _REMAP_TILE, int(cols[sel][0]) * _REMAP_TILE
        tile = src[r0:r0 + _REMAP_TILE + 1, c0:c0 + _REMAP_TILE + 1]  # a view: cv2 takes strides
        out[sel] = _remap_flat(tile, mx[sel] - np.float32(c0), my[sel] - np.float32(r0))
    return out


def _sample(pyramid: tuple, tx: np.ndarray, ty: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Sample a mip pyramid at level-0 texel coordinates, choosing levels by texel footprint."""
    level = np.clip(np.floor(np.log2(np.maximum(footprint, 1.0))), 0, MIP_LEVELS - 1)
    out = np.zeros((len(tx), pyramid[0].shape[2]), np.float32)
    for lev in np.unique(level).astype(int):
        sel = level == lev
        scale = 0.5**lev
        out[sel] = _remap(pyramid[lev], (tx[sel] + 0.5) * scale - 0.5,
                          (ty[sel] + 0.5) * scale - 0.5)
    return out


def _camera(config: RouteConfig, xy: np.ndarray, yaw: float, pitch: float) -> _Camera:
    height, width = config.image_size
    focal = width / 2.0 / math.tan(math.radians(config.fov_deg) / 2.0)
    return _Camera(np.asarray(xy, float), float(yaw), config.camera_height_m, focal,
                   width / 2.0, height / 2.0 + focal * math.tan(pitch), (height, width))


def _column_rays(cam: _Camera) -> tuple[np.ndarray, np.ndarray]:
    """Return each column's normalised image x and its ray (unit forward depth) ``[W, 2]``."""
    xc = (np.arange(cam.shape[1]) + 0.5 - cam.cx) / cam.focal
    fwd = np.array([math.cos(cam.yaw), math.sin(cam.yaw)])
    right = np.array([math.sin(cam.yaw), -math.cos(cam.yaw)])
    return xc, fwd[None] + xc[:, None] * right[None]


def _sky_pixels(sky: np.ndarray, cam: _Camera, xc: np.ndarray) -> np.ndarray:
    """Look the sky panorama up for every pixel: ``[H, W, 3]``."""
    rows = np.arange(cam.shape[0]) + 0.5
    az = np.mod(cam.yaw - np.arctan(xc), 2.0 * math.pi)[None, :]
    el = np.arctan((cam.cy - rows)[:, None] / (cam.focal * np.sqrt(1.0 + xc**2))[None, :])
    tx = np.broadcast_to(az / (2.0 * math.pi) * SKY_SHAPE[1], el.shape).ravel()
    ty = ((SKY_EL_RANGE[1] - el) / (SKY_EL_RANGE[1] - SKY_EL_RANGE[0]) * SKY_SHAPE[0]).ravel()
    return _remap(sky, tx, ty).reshape(cam.shape + (3,))


def _floor_pixels(scene: Scene, floor: tuple, cam: _Camera, dirs: np.ndarray,
                  idx: tuple) -> np.ndarray:
    """Shade the floor pixels ``idx`` (row and column index arrays): ``[N, 3]``."""
    depth = cam.height * cam.focal / (idx[0] + 0.5 - cam.cy)
    world = cam.xy[None] + depth[:, None] * dirs[idx[1]]
    tx, ty = ((world - np.array(scene.floor_origin)) / TEXEL_M).T
    footprint = depth / cam.focal / TEXEL_M * (1.0 + depth / cam.height) ** 0.5
    return _sample(floor, tx, ty, footprint)


def _wall_shadow_line(scene: Scene, light: _Lighting, hits: np.ndarray,
                      seg: np.ndarray) -> np.ndarray:
    """Height below which each column's facade point lies in the shadow of the opposite side."""
    walls, sun = scene.walls, _sun_dir(light)
    origins = hits + 0.01 * walls.normal[seg]
    dist, occluder, u = cast(walls, origins, np.broadcast_to(sun, origins.shape))
    line = np.full(len(seg), -np.inf)
    found = np.isfinite(dist)
    for wall in (0, 1):
        sel = found & (walls.wall[occluder] == wall)
        heights = scene.heights[wall]
        cols = np.clip(np.round(u[sel] / TEXEL_M).astype(int), 0, len(heights) - 1)
        line[sel] = heights[cols] - dist[sel] * math.tan(light.sun_elevation)
    return line


def _wall_pixels(scene: Scene, look: _Traversal, cam: _Camera, hit: tuple,
                 z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shade the facade pixels; return ``[H, W, 3]`` colours and the ``[H, W]`` facade mask."""
    depth, seg, u, hits = hit
    idx = np.nonzero((z >= 0.0) & (z < FACADE_MAX_M))
    walls, light = scene.walls, look.light
    tx = u[idx[1]] / TEXEL_M
    ty = walls.wall[seg][idx[1]] * ATLAS_BAND_ROWS + (FACADE_MAX_M - z[idx]) / TEXEL_M
    footprint = (depth / cam.focal / TEXEL_M)[idx[1]]
    rgba = _sample(scene.atlas, tx, ty, footprint)
    glow = _sample(scene.emissive, tx, ty, footprint)
    direct = np.maximum(walls.normal[seg] @ _sun_dir(light), 0.0)
    direct *= math.cos(light.sun_elevation)
    lit_col = direct[idx[1]] * (z[idx] > _wall_shadow_line(scene, light, hits, seg)[idx[1]])
    light_rgb = np.array(light.ambient_rgb) + lit_col[:, None] * np.array(light.sun_rgb)
    rgb = np.zeros(z.shape + (3,), np.float32)
    rgb[idx] = rgba[:, :3] * light_rgb + glow * light.emissive
    mask = np.zeros(z.shape, bool)
    mask[idx] = rgba[:, 3] > 0.5
    return rgb, mask


def _expose(img: np.ndarray, light: _Lighting, rng: np.random.Generator) -> np.ndarray:
    """Apply exposure, white balance, vignetting, sensor noise and the tone curve."""
    h, w = img.shape[:2]
    r2 = (((np.arange(w) + 0.5 - w / 2.0) ** 2)[None, :]
          + ((np.arange(h) + 0.5 - h / 2.0) ** 2)[:, None]) / ((w / 2.0) ** 2 + (h / 2.0) ** 2)
    gain = (light.exposure * (1.0 - light.vignette * r2)[..., None]
            * np.array(light.white_balance)).astype(np.float32)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(light.noise_sigma)
    return to_u8(np.clip(img * gain + noise, 0.0, 1.0) ** np.float32(light.tone_gamma))


def _render(scene: Scene, look: _Traversal, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    """Render one ``[H, W, 3] uint8`` RGB frame seen by ``cam``."""
    xc, dirs = _column_rays(cam)
    depth, seg, u = cast(scene.walls, np.broadcast_to(cam.xy, dirs.shape), dirs)
    rows = np.arange(cam.shape[0]) + 0.5
    with np.errstate(invalid='ignore'):
        z = cam.height + (cam.cy - rows)[:, None] * depth[None, :] / cam.focal
    img = _sky_pixels(look.sky, cam, xc)
    floor = np.nonzero(z < 0.0)
    img[floor] = _floor_pixels(scene, look.floor, cam, dirs, floor)
    hits = cam.xy[None] + np.where(np.isfinite(depth), depth, 0.0)[:, None] * dirs
    wall_rgb, wall_mask = _wall_pixels(scene, look, cam, (depth, seg, u, hits), z)
    img[wall_mask] = wall_rgb[wall_mask]
    return _expose(img, look.light, rng)


# ------------------------------------------------------------------------------ public API


def render_traversal(config: RouteConfig, traversal: int) -> list[Frame]:
    """Render one drive around the route: 0 = map (day), 1 = query (dusk, offset viewpoint).

    Args:
        config: the route, camera and jitter settings; the same config renders the same frames.
        traversal: 0 for the map traversal, 1 for the query traversal.

    Returns:
        ``config.frames_per_traversal`` frames at ``config.frame_rate_hz`` with ground-truth
        camera poses in the 'map' frame.
    """
    if traversal not in (0, 1):
        raise ConfigError(f'traversal must be 0 (map) or 1 (query), got {traversal!r}')
    scene = build_scene(config)
    look = _traversal_look(scene, config, traversal)
    s, lateral, jitter, pitch = viewpoints(config, traversal)
    xy = route_xy(scene, s, lateral)
    yaw = np.interp(np.mod(s, scene.route_s[-1]), scene.route_s, scene.route_heading) + jitter
    start = _START_NS + traversal * _TRAVERSAL_GAP_NS
    frames = []
    for i in range(len(s)):
        rng = np.random.default_rng([config.seed, 4, traversal, i])
        image = _render(scene, look, _camera(config, xy[i], yaw[i], pitch[i]), rng)
        frames.append(Frame(stamp_ns=start + int(round(i * 1e9 / config.frame_rate_hz)),
                            image=image, pose=pose_from_xy_yaw(xy[i, 0], xy[i, 1], yaw[i]),
                            source=f'sample/{TRAVERSALS[traversal]}'))
    _LOG.debug('rendered %d frames of traversal %d', len(frames), traversal)
    return frames


def write_sample(out_dir: Any, config: Optional[RouteConfig] = None,
                 storage: str = 'mcap') -> SamplePaths:
    """Render both traversals and write them as rosbag2 bags ``map`` and ``query`` in ``out_dir``.

    Each bag holds rgb8 ``sensor_msgs/Image`` messages on :data:`IMAGE_TOPIC` and the
    ground-truth camera poses as ``nav_msgs/Odometry`` on :data:`POSE_TOPIC`, with the same
    stamps.

    Args:
        out_dir: directory for the two bags (created when missing).
        config: the route; ``None`` uses ``RouteConfig()``.
        storage: rosbag2 storage plugin, 'mcap' or 'sqlite3'.

    Returns:
        The bag paths and topic names.

    Raises:
        BagError: a bag exists already at ``out_dir/map`` or ``out_dir/query``, or cannot be
            written.
    """
    config = RouteConfig() if config is None else config
    out_dir = Path(out_dir)
    bags = []
    for traversal, name in enumerate(TRAVERSALS):
        frames = render_traversal(config, traversal)
        bags.append(write_frames(out_dir / name, frames, image_topic=IMAGE_TOPIC,
                                 pose_topic=POSE_TOPIC, storage=storage))
    _LOG.info('wrote the sample route (%d frames per traversal) to %s',
              config.frames_per_traversal, out_dir)
    return SamplePaths(map_bag=bags[0], query_bag=bags[1])
