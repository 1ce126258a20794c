"""Facade textures of the sample route: buildings, windows, shop fronts, posters and landmarks.

Every texture is built from seeded noise and OpenCV drawing primitives on a grid of
:data:`TEXEL_M` metre texels. Both facades are stacked into one atlas, each in a band of
:data:`ATLAS_BAND_ROWS` rows, and kept as a mip pyramid of :data:`MIP_LEVELS` levels.
"""

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vpr_ros.sample.route import Walls

TEXEL_M = 0.05
FACADE_MAX_M = 14.0
FACADE_ROWS = int(FACADE_MAX_M / TEXEL_M)
ATLAS_BAND_ROWS = FACADE_ROWS + 2 * (FACADE_ROWS // 4)
MIP_LEVELS = 5


# -------------------------------------------------------------------------------- textures


def noise(rng: np.random.Generator, shape: tuple, cells: tuple, octaves: int = 3) -> np.ndarray:
    """Fractal value noise of ``shape``, roughly zero-mean and unit amplitude, periodic in x.

    The period is exact when ``shape[1]`` is a multiple of ``cells[1] * 2**(octaves - 1)``.
    """
    out = np.zeros(shape, np.float32)
    for octave in range(octaves):
        gy, gx = (max(2, c * 2**octave) for c in cells)
        cy, cx = -(-shape[0] // gy), -(-shape[1] // gx)
        grid = np.pad(rng.standard_normal((gy + 4, gx)).astype(np.float32), ((0, 0), (2, 2)),
                      mode='wrap')
        big = cv2.resize(grid, ((gx + 4) * cx, (gy + 4) * cy), interpolation=cv2.INTER_CUBIC)
        out += big[2 * cy:2 * cy + shape[0], 2 * cx:2 * cx + shape[1]] / 2**octave
    return out / 1.75


def col(u: float) -> int:
    """Return the atlas texel column of facade arc length ``u`` (metres)."""
    return int(round(u / TEXEL_M))


def _row(z: float) -> int:
    return int(round((FACADE_MAX_M - z) / TEXEL_M))


def _rect(img: np.ndarray, u0: float, u1: float, z0: float, z1: float, colour: Any) -> None:
    """Fill the facade rectangle [u0, u1] x [z0, z1] (metres) with ``colour``."""
    cv2.rectangle(img, (col(u0), _row(z1)), (col(u1) - 1, _row(z0) - 1),
                  tuple(float(c) for c in np.broadcast_to(colour, 3)), -1)


_PALETTE = np.array([
    (0.62, 0.3, 0.22), (0.75, 0.68, 0.55), (0.55, 0.55, 0.57), (0.85, 0.83, 0.78),
    (0.55, 0.65, 0.75), (0.5, 0.62, 0.45), (0.85, 0.72, 0.4), (0.7, 0.45, 0.5),
    (0.4, 0.33, 0.28), (0.3, 0.38, 0.45), (0.9, 0.55, 0.35), (0.6, 0.7, 0.62)], np.float32)
_VIVID = np.array([
    (0.85, 0.1, 0.1), (0.1, 0.45, 0.85), (0.95, 0.8, 0.1), (0.1, 0.65, 0.3),
    (0.95, 0.45, 0.05), (0.55, 0.15, 0.7), (0.05, 0.7, 0.75), (0.95, 0.95, 0.95),
    (0.08, 0.08, 0.1), (0.9, 0.3, 0.6)], np.float32)


def _vivid(rng: np.random.Generator) -> np.ndarray:
    return _VIVID[rng.integers(len(_VIVID))]


def _pattern(rng: np.random.Generator, style: int, shape: tuple) -> np.ndarray:
    """Return a brightness pattern ``[H, W]`` for a facade: brick, plaster, panels or siding."""
    rows, cols = np.indices(shape)
    grain = 1.0 + 0.07 * noise(rng, shape, (max(1, shape[0] // 40), max(1, shape[1] // 40)))
    if style == 0:
        mortar = (rows % 5 == 0) | ((cols + 5 * ((rows // 5) % 2)) % 10 == 0)
        return grain * np.where(mortar, 1.25, 1.0 + 0.06 * rng.standard_normal(shape))
    if style == 1:
        return grain * (1.0 + 0.05 * noise(rng, shape, (max(1, shape[0] // 8), 4)))
    if style == 2:
        joint = (rows % 24 == 0) | (cols % 36 == 0)
        panel = 1.0 + 0.08 * rng.standard_normal((shape[0] // 24 + 1, shape[1] // 36 + 1))
        return grain * np.where(joint, 0.6, panel[rows // 24, cols // 36])
    return grain * np.where(rows % 4 == 0, 0.78, 1.0)


def _letters(rng: np.random.Generator, n: int) -> str:
    return ''.join(chr(65 + int(c)) for c in rng.integers(0, 26, n))


@dataclass(frozen=True)
class _Canvas:
    """Facade texture being drawn: albedo, coverage, emitted light and roof height per column."""

    rgb: np.ndarray
    alpha: np.ndarray
    emis: np.ndarray
    heights: np.ndarray


def _text(img: np.ndarray, text: str, u0: float, u1: float, z0: float, z1: float,
          colour: Any) -> None:
    """Write ``text`` centred in the facade box [u0, u1] x [z0, z1], as large as it fits."""
    font = cv2.FONT_HERSHEY_DUPLEX
    box = img[_row(z1):_row(z0), col(u0):col(u1)]
    (w, h), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = min(box.shape[1] * 0.9 / w, box.shape[0] * 0.75 / h)
    (w, h), _ = cv2.getTextSize(text, font, scale, 1)
    ink = np.zeros(box.shape[:2], np.uint8)
    cv2.putText(ink, text, ((box.shape[1] - w) // 2, (box.shape[0] + h) // 2), font, scale, 255,
                max(1, int(scale * 1.5)), cv2.LINE_AA)
    alpha = (ink.astype(np.float32) / 255.0)[..., None]
    box[:] = box * (1.0 - alpha) + alpha * np.asarray(colour, np.float32)


def _draw_window(rng: np.random.Generator, cv: _Canvas, box: tuple, frame: Any,
                 glass: np.ndarray) -> None:
    """Draw one framed window; some have curtains, some are lit at night."""
    u0, u1, z0, z1 = box
    _rect(cv.rgb, u0 - 0.08, u1 + 0.08, z0 - 0.1, z1 + 0.08, frame)
    _rect(cv.rgb, u0, u1, z0, z1, glass)
    _rect(cv.rgb, u0, u1, (z0 + z1) / 2 + 0.2, z1, glass * 1.35)
    if rng.random() < 0.3:
        _rect(cv.rgb, u0, u1, z1 - (z1 - z0) * rng.uniform(0.2, 0.7), z1, _PALETTE[
            rng.integers(len(_PALETTE))])
    if rng.random() < 0.4:
        _rect(cv.emis, u0, u1, z0, z1, np.array((1.0, 0.78, 0.45)) * rng.uniform(0.35, 0.9))


def _draw_windows(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float,
                  height: float) -> None:
    """Draw the upper storeys: a regular grid of windows of one building."""
    storey, win_w = rng.uniform(2.8, 3.4), rng.uniform(0.6, 1.4)
    win_h, pitch = rng.uniform(1.1, 1.7), win_w + rng.uniform(0.5, 1.6)
    count = int((u1 - u0 - 0.6) // pitch)
    frame = (0.92, 0.9, 0.86) if rng.random() < 0.6 else _PALETTE[rng.integers(len(_PALETTE))]
    glass = np.array((0.12, 0.16, 0.22), np.float32) * rng.uniform(0.7, 1.4)
    start = u0 + (u1 - u0 - count * pitch) / 2.0 + (pitch - win_w) / 2.0
    z = rng.uniform(3.5, 4.0)
    while z + win_h + 0.5 < height:
        for k in range(count):
            a = start + k * pitch
            _draw_window(rng, cv, (a, a + win_w, z, z + win_h), frame, glass)
        z += storey


def _draw_shop(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw a shop front: lettered sign band, lit display window with goods, door."""
    sign, ink = _vivid(rng), _vivid(rng)
    _rect(cv.rgb, u0 + 0.2, u1 - 0.2, 2.5, 3.2, sign)
    _text(cv.rgb, _letters(rng, int(rng.integers(3, 8))), u0 + 0.3, u1 - 0.3, 2.5, 3.2,
          ink if np.abs(ink - sign).sum() > 0.6 else 1.0 - sign)
    _rect(cv.emis, u0 + 0.2, u1 - 0.2, 2.5, 3.2, sign * 0.5)
    door = u0 + 0.4 if rng.random() < 0.5 else u1 - 1.5
    _rect(cv.rgb, u0 + 0.3, u1 - 0.3, 0.4, 2.3, (0.2, 0.2, 0.22))
    _rect(cv.rgb, u0 + 0.4, u1 - 0.4, 0.5, 2.2, (0.1, 0.13, 0.16))
    for _ in range(int((u1 - u0) * 1.5)):
        a, z = rng.uniform(u0 + 0.4, u1 - 0.8), rng.uniform(0.5, 1.6)
        _rect(cv.rgb, a, a + rng.uniform(0.15, 0.4), z, z + rng.uniform(0.15, 0.5), _vivid(rng))
    _rect(cv.emis, u0 + 0.4, u1 - 0.4, 0.5, 2.2, (0.55, 0.5, 0.4))
    _rect(cv.rgb, door, door + 1.1, 0.0, 2.3, (0.35, 0.3, 0.25))
    _rect(cv.rgb, door + 0.1, door + 1.0, 0.1, 2.2, (0.08, 0.08, 0.1))


def _draw_entrance(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw a residential ground floor: coloured door with a lamp and two small windows."""
    door = rng.uniform(u0 + 1.5, max(u0 + 1.6, u1 - 2.6))
    colour = _vivid(rng) * 0.8 if rng.random() < 0.6 else np.array((0.4, 0.25, 0.12))
    _rect(cv.rgb, door - 0.15, door + 1.25, 0.0, 2.55, (0.85, 0.85, 0.8))
    _rect(cv.rgb, door, door + 1.1, 0.15, 2.4, colour)
    _rect(cv.rgb, door + 0.15, door + 0.95, 1.5, 2.25, (0.15, 0.18, 0.2))
    _rect(cv.emis, door + 0.4, door + 0.7, 2.65, 2.9, (1.0, 0.9, 0.6))
    _rect(cv.rgb, door + 0.4, door + 0.7, 2.65, 2.9, (0.9, 0.9, 0.8))
    glass = np.array((0.12, 0.16, 0.22), np.float32)
    for a in (door - 1.3, door + 1.5):
        if u0 + 0.2 < a and a + 0.9 < u1 - 0.2:
            _draw_window(rng, cv, (a, a + 0.9, 1.0, 2.2), (0.9, 0.9, 0.88), glass)


def _draw_garage(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw one or two roller shutters."""
    tone = rng.uniform(0.35, 0.75)
    a = u0 + 0.6
    while a + 2.8 < u1:
        _rect(cv.rgb, a - 0.1, a + 2.7, 0.0, 2.6, (0.3, 0.3, 0.3))
        for z in np.arange(0.0, 2.5, 0.1):
            _rect(cv.rgb, a, a + 2.6, z, z + 0.07, (tone, tone, tone * 1.05))
        a += rng.uniform(3.2, 6.0)


def _draw_posters(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw a blank wall with posters of random shapes and a graffiti tag."""
    for _ in range(int(rng.integers(1, 4))):
        a, w = rng.uniform(u0 + 0.3, u1 - 1.2), rng.uniform(0.6, 1.0)
        _rect(cv.rgb, a, a + w, 0.9, 0.9 + 1.4 * w, _vivid(rng))
        centre = (col(a + w / 2), _row(0.9 + 0.7 * w))
        cv2.circle(cv.rgb, centre, int(rng.integers(3, 9)), tuple(map(float, _vivid(rng))), -1)
        _text(cv.rgb, _letters(rng, 3), a, a + w, 0.95, 1.25, _vivid(rng))
    c0, c1 = col(u0 + 0.2), col(u1 - 0.2)
    blob = noise(rng, (_row(0.2) - _row(1.4), c1 - c0), (2, max(1, (c1 - c0) // 30)))
    region = cv.rgb[_row(1.4):_row(0.2), c0:c1]
    region[blob > 0.7] = _vivid(rng)


_GROUND_FLOORS = (_draw_shop, _draw_entrance, _draw_garage, _draw_posters)


def _draw_building(rng: np.random.Generator, cv: _Canvas, u0: float, u1: float) -> None:
    """Draw one building of the facade between ``u0`` and ``u1`` metres."""
    height = float(rng.uniform(5.0, 13.0))
    colour = _PALETTE[rng.integers(len(_PALETTE))] * rng.uniform(0.85, 1.1)
    c0, c1, r0 = col(u0), col(u1), _row(height)
    pattern = _pattern(rng, int(rng.integers(4)), (FACADE_ROWS - r0, c1 - c0))
    cv.rgb[r0:, c0:c1] = colour * pattern[..., None]
    cv.alpha[r0:, c0:c1] = 1.0
    cv.heights[c0:c1] = height
    _rect(cv.rgb, u0, u1, height - 0.35, height, colour * 0.55)
    _draw_windows(rng, cv, u0, u1, height)
    _rect(cv.rgb, u0, u1, 0.0, 0.3, colour * 0.5)
    _GROUND_FLOORS[rng.integers(len(_GROUND_FLOORS))](rng, cv, u0, u1)
    _rect(cv.rgb, u0, u0 + 0.12, 0.0, height, (0.25, 0.25, 0.27))


def _draw_landmark(rng: np.random.Generator, cv: _Canvas, u: float) -> None:
    """Draw a rooftop billboard or a large mural near ``u``: the place's distinctive mark."""
    width = rng.uniform(2.5, 4.5)
    height = float(cv.heights[col(u)])
    if rng.random() < 0.5 and height < FACADE_MAX_M - 3.2:
        top = height + rng.uniform(2.0, 2.8)
        _rect(cv.rgb, u + 0.3, u + 0.45, height, top, (0.2, 0.2, 0.2))
        _rect(cv.rgb, u + width - 0.45, u + width - 0.3, height, top, (0.2, 0.2, 0.2))
        cv.alpha[_row(top):_row(height), col(u + 0.3):col(u + width - 0.3)] = 1.0
        base, board = _vivid(rng), (height + 0.6, top)
        _rect(cv.rgb, u, u + width, *board, base)
        _text(cv.rgb, _letters(rng, int(rng.integers(2, 6))), u, u + width, *board, 1.0 - base)
        cv.alpha[_row(top):_row(board[0]), col(u):col(u + width)] = 1.0
        _rect(cv.emis, u, u + width, *board, base * 0.6)
        return
    _rect(cv.rgb, u, u + width, 0.3, min(height - 0.4, 5.5), _vivid(rng))
    _rect(cv.emis, u, u + width, 0.3, min(height - 0.4, 5.5), 0.0)
    for _ in range(int(rng.integers(3, 7))):
        centre = (col(rng.uniform(u, u + width)), _row(rng.uniform(0.6, min(height, 5.5))))
        radius = int(rng.integers(6, 25))
        if rng.random() < 0.5:
            cv2.circle(cv.rgb, centre, radius, tuple(map(float, _vivid(rng))), -1)
        else:
            cv2.rectangle(cv.rgb, centre, (centre[0] + radius, centre[1] + 2 * radius),
                          tuple(map(float, _vivid(rng))), -1)


def _facade(rng: np.random.Generator, length: float) -> _Canvas:
    """Draw the whole facade of one side of the street, ``length`` metres long."""
    cols = col(length) + 1
    cv = _Canvas(np.zeros((FACADE_ROWS, cols, 3), np.float32),
                 np.zeros((FACADE_ROWS, cols), np.float32),
                 np.zeros((FACADE_ROWS, cols, 3), np.float32), np.zeros(cols, np.float32))
    u = 0.0
    while u < length - 1e-6:
        width = min(float(rng.uniform(5.0, 13.0)), length - u)
        if length - u - width < 4.0:
            width = length - u
        _draw_building(rng, cv, u, u + width)
        u += width
    for mark in np.cumsum(rng.uniform(8.0, 16.0, int(length / 8.0))):
        if mark + 5.0 < length:
            _draw_landmark(rng, cv, float(mark))
    return cv


def pyramid(img: np.ndarray) -> tuple:
    """Return ``MIP_LEVELS`` successively halved copies of ``img`` (level 0 first)."""
    levels = [img]
    for _ in range(MIP_LEVELS - 1):
        levels.append(cv2.pyrDown(levels[-1]))
    return tuple(levels)


def to_u8(img: np.ndarray) -> np.ndarray:
    """Return float image ``img`` (0..1) as rounded, clipped ``uint8``."""
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def build_atlas(rng: np.random.Generator, walls: Walls) -> tuple[tuple, tuple, tuple]:
    """Draw both facades; stack them (wall 1 mirrored so its lettering reads correctly)."""
    canvases = [_facade(rng, length) for length in walls.lengths]
    cols = max(cv.rgb.shape[1] for cv in canvases)
    rgba, emis, heights = [], [], []
    for wall, cv in enumerate(canvases):
        flip = (lambda a: a[:, ::-1]) if wall == 1 else (lambda a: a)
        rgba.append(_atlas_band(flip(np.dstack([cv.rgb, cv.alpha])), cols))
        emis.append(_atlas_band(flip(cv.emis), cols))
        heights.append(cv.heights[::-1] if wall == 1 else cv.heights)
    atlas, emissive = np.vstack(rgba), np.vstack(emis)
    return pyramid(to_u8(atlas)), pyramid(to_u8(emissive)), tuple(heights)


def _atlas_band(texture: np.ndarray, cols: int) -> np.ndarray:
    """Pad a facade to ``cols`` columns and ``ATLAS_BAND_ROWS`` rows: ground row repeated, empty.

    Repeating the ground row keeps bilinear and mip samples at the foot of a facade opaque; the
    empty rows keep the next facade's sky from bleeding into it.
    """
    quarter = FACADE_ROWS // 4
    texture = np.pad(texture, ((0, quarter), (0, 0), (0, 0)), mode='edge')
    return np.pad(texture, ((0, quarter), (0, cols - texture.shape[1]), (0, 0)))
