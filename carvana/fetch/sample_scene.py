"""The photo studio of the built-in sample data, and a painter that photographs a car in it.

What the Carvana photos share, and this studio reproduces: a near-white wall with large dark
lettering, a grey floor with a turntable whose rim shows as an ellipse, a camera far away on a
long lens a little above the cars, the car in 16 positions 22.5 degrees apart (view 1 the front,
view 5 the left-facing side, view 9 the rear), a soft shadow and a faint reflection on the floor
(neither is part of the mask), slightly soft edges, sensor noise.

Geometry is computed at the Carvana resolution (1918x1280) and scaled per axis to the asked size,
so a small sample looks like a resized large one. All functions are pure (the backdrop is cached).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from carvana.fetch import sample_car
from carvana.fetch.sample_car import CarDesign, Piece
from carvana.geometry import Size

REFERENCE = Size(1918, 1280)
VIEWS = 16
SHIFT = 4  # fixed-point bits for sub-pixel polygon corners (cv2 `shift`)
LIGHT = np.array([0.25, -0.55, 1.0]) / np.linalg.norm([0.25, -0.55, 1.0])  # from above, camera side


@dataclass(frozen=True)
class Studio:
    """A photo booth: backdrop lettering, tones, and where its camera stands."""

    word: str
    letter_grey: int
    wall: tuple[int, int, int]  # BGR
    floor: tuple[int, int, int]
    turntable: tuple[int, int, int]
    horizon: float  # wall/floor line, as a fraction of the height
    letters_bottom: float  # baseline of the lettering, as a fraction of the height
    distance: float  # camera to turntable centre, metres
    camera_height: float
    focal: float  # pixels at the reference resolution
    ground_row: float  # image row of the turntable centre at the reference resolution
    turntable_radius: float


STUDIOS = (
    Studio("AUTORAMA", 92, (246, 246, 247), (192, 194, 196), (186, 192, 198), 0.445, 0.44,
           12.0, 1.38, 3800.0, 985.0, 3.4),
    Studio("MOTORVIEW", 104, (242, 244, 246), (184, 186, 188), (178, 186, 194), 0.43, 0.425,
           12.5, 1.42, 3900.0, 975.0, 3.6),
    Studio("DRIVEWAY", 84, (248, 247, 245), (196, 196, 194), (190, 194, 200), 0.455, 0.45,
           11.5, 1.33, 3700.0, 995.0, 3.3),
)


@dataclass(frozen=True)
class Pose:
    """Where the car stands on the turntable for one view."""

    yaw: float  # radians; 0 = nose to the camera, pi/2 = nose to the left of the picture
    offset: tuple[float, float]  # car centre from the turntable centre, metres (x right, y away)


def view_pose(view: int, start_yaw: float, offset: tuple[float, float], jitter: float) -> Pose:
    """Pose for view 1..16: the turntable turns 22.5 degrees between views and carries the car."""
    turn = 2 * np.pi * (view - 1) / VIEWS
    c, s = np.cos(turn), np.sin(turn)
    # The car's offset from the turntable's axis turns with it.
    ox, oy = offset
    return Pose(start_yaw + turn + jitter, (c * ox + s * oy, -s * ox + c * oy))


class Camera:
    """A pinhole camera looking level along +y at the turntable, scaled per axis to `size`."""

    def __init__(self, studio: Studio, size: Size):
        self.studio = studio
        self.size = size
        sx, sy = size.width / REFERENCE.width, size.height / REFERENCE.height
        self.fx, self.fy = studio.focal * sx, studio.focal * sy
        self.cx = size.width / 2
        self.cy = (studio.ground_row - studio.focal * studio.camera_height / studio.distance) * sy
        self.position = np.array([0.0, -studio.distance, studio.camera_height])

    def project(self, world: np.ndarray) -> np.ndarray:
        """(n, 3) world points -> (n, 2) pixel coordinates (float)."""
        depth = world[:, 1] - self.position[1]
        u = self.cx + self.fx * world[:, 0] / depth
        v = self.cy + self.fy * (self.position[2] - world[:, 2]) / depth
        return np.column_stack([u, v])


def rotate_to_world(vectors: np.ndarray, pose: Pose) -> np.ndarray:
    """Directions in the car frame (x forward, y left, z up) -> world (x right, y away, z up)."""
    c, s = np.cos(pose.yaw), np.sin(pose.yaw)
    forward = np.array([-s, -c, 0.0])
    left = np.array([c, -s, 0.0])
    up = np.array([0.0, 0.0, 1.0])
    return vectors @ np.stack([forward, left, up])


def car_to_world(points: np.ndarray, pose: Pose) -> np.ndarray:
    """Points in the car frame -> world, the car standing at its pose on the turntable."""
    out = rotate_to_world(points, pose)
    out[:, 0] += pose.offset[0]
    out[:, 1] += pose.offset[1]
    return out


# --- backdrop ---------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def backdrop(studio_index: int, size: Size) -> np.ndarray:
    """The empty studio at `size`: drawn once at the reference size, then resized (cached)."""
    studio = STUDIOS[studio_index]
    w, h = REFERENCE
    rng = np.random.default_rng(1000 + studio_index)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    # Wall: bright, falling off a little towards the corners like a lit cyclorama.
    fall = 1.0 - 0.03 * ((xs - w / 2) / (w / 2)) ** 2 - 0.02 * (ys / h)
    image = (np.array(studio.wall, np.float32)[None, None, :] * fall[..., None]).clip(0, 255).astype(np.uint8)
    _draw_lettering(image, studio)
    # Floor: below a horizon that bows up slightly in the middle; mottled, darker far away.
    horizon = studio.horizon * h - 0.012 * h * (1 - ((xs[0] - w / 2) / (w / 2)) ** 2)
    floor_rows = ys >= horizon[None, :]
    mottle = cv2.resize(rng.normal(0, 1, (12, 18)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    shade = 0.96 + 0.04 * (ys - studio.horizon * h) / ((1 - studio.horizon) * h) + 0.012 * mottle
    floor = np.array(studio.floor, np.float32)[None, None, :] * shade[..., None]
    image[floor_rows] = floor.clip(0, 255).astype(np.uint8)[floor_rows]
    _draw_turntable(image, studio, rng)
    if size != REFERENCE:
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)
    image.setflags(write=False)
    return image


def _draw_lettering(image: np.ndarray, studio: Studio) -> None:
    """Big geometric capitals across the wall, like a showroom logo."""
    w, h = REFERENCE
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = int(0.015 * h)
    (text_w, text_h), _ = cv2.getTextSize(studio.word, font, 1.0, 1)
    scale = 0.9 * w / text_w
    (text_w, text_h), _ = cv2.getTextSize(studio.word, font, scale, thickness)
    origin = ((w - text_w) // 2, int(studio.letters_bottom * h))
    grey = studio.letter_grey
    cv2.putText(image, studio.word, origin, font, scale, (grey, grey, grey + 4), thickness, cv2.LINE_AA)
    # A faint glass panel behind the middle of the word.
    top = origin[1] - int(1.25 * text_h)
    cv2.rectangle(image, (int(0.37 * w), top), (int(0.62 * w), origin[1] + 10), (215, 215, 215), 2, cv2.LINE_AA)


def _draw_turntable(image: np.ndarray, studio: Studio, rng: np.random.Generator) -> None:
    camera = Camera(studio, REFERENCE)
    a = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    rim = np.column_stack([studio.turntable_radius * np.cos(a), studio.turntable_radius * np.sin(a), np.zeros_like(a)])
    polygon = np.round(camera.project(rim) * (1 << SHIFT)).astype(np.int32)
    disc = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(disc, [polygon], 255, cv2.LINE_AA, SHIFT)
    alpha = (disc.astype(np.float32) / 255 * 0.8)[..., None]
    tone = np.array(studio.turntable, np.float32) * (0.98 + 0.02 * rng.random(image.shape[:2], np.float32)[..., None])
    image[:] = (image * (1 - alpha) + tone * alpha).astype(np.uint8)
    cv2.polylines(image, [polygon], True, (150, 152, 155), 3, cv2.LINE_AA, SHIFT)


def turntable_scuffs(rng: np.random.Generator, count: int = 14) -> np.ndarray:
    """Worn lines on the turntable (ground segments, metres); they turn with it."""
    angle = rng.uniform(0, 2 * np.pi, count)
    radius = np.sqrt(rng.uniform(0.2, 1.0, count)) * 3.0
    start = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    heading = rng.uniform(0, 2 * np.pi, count)
    length = rng.uniform(0.3, 1.2, count)
    end = start + np.column_stack([np.cos(heading), np.sin(heading)]) * length[:, None]
    return np.stack([start, end], axis=1)  # (count, 2, 2)


# --- shading ----------------------------------------------------------------------------------

def shade(material: str, paint: tuple[int, int, int], normal: np.ndarray, to_camera: np.ndarray) -> tuple[float, ...]:
    """BGR colour of a flat face under the studio's soft top light."""
    sky = 0.5 * (1.0 + normal[2])
    diffuse = max(0.0, float(normal @ LIGHT))
    reflected = 2 * float(normal @ to_camera) * normal - to_camera
    highlight = max(0.0, float(reflected @ LIGHT)) ** 16
    facing = abs(float(normal @ to_camera))
    if material == sample_car.PAINT:
        base = np.array(paint, np.float64)
        colour = base * (0.55 + 0.3 * diffuse + 0.25 * sky) + 255 * (0.05 * sky + 0.35 * highlight)
    elif material == sample_car.GLASS:
        colour = np.array([38.0, 34, 30]) + 150 * sky**3 * (1.1 - facing) + 120 * highlight
    elif material == sample_car.TYRE:
        colour = np.full(3, 24.0) + 22 * sky
    elif material == sample_car.RIM:
        colour = np.array([168.0, 170, 172]) * (0.7 + 0.35 * diffuse) + 40 * highlight
    elif material in (sample_car.RIM_HOLE, sample_car.GRILLE):
        colour = np.full(3, 22.0) + 10 * sky
    elif material == sample_car.TRIM:
        colour = np.full(3, 34.0) + 30 * sky + 60 * highlight
    elif material == sample_car.HEADLIGHT:
        colour = np.array([200.0, 200, 196]) * (0.75 + 0.25 * sky) + 60 * highlight
    elif material == sample_car.TAILLIGHT:
        colour = np.array([40.0, 35, 175]) * (0.8 + 0.3 * sky) + 60 * highlight
    elif material == sample_car.PLATE:
        colour = np.array([232.0, 226, 222])
    else:
        raise ValueError(f"unknown material {material!r}")
    return tuple(float(c) for c in np.clip(colour, 0, 255))


# --- the painter ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ProjectedPiece:
    piece: Piece
    world: np.ndarray
    pixels: np.ndarray
    distance: float  # camera to the piece's centre, metres


def photograph(
    pieces: list[Piece], design: CarDesign, studio_index: int, pose: Pose, size: Size,
    scuffs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one view. Returns the BGR uint8 photo (before noise and compression) and the 0/1 mask."""
    studio = STUDIOS[studio_index]
    camera = Camera(studio, size)
    image = backdrop(studio_index, size).copy()
    _draw_scuffs(image, camera, scuffs, pose)
    projected = []
    for piece in pieces:
        world = car_to_world(piece.vertices, pose)
        # Painter's order by distance from the camera, not by depth: in a side view the body slices
        # all have the same depth, yet the ones nearer the middle hide the ends of their neighbours.
        distance = float(np.linalg.norm(world.mean(axis=0) - camera.position))
        projected.append(_ProjectedPiece(piece, world, camera.project(world), distance))
    _darken_floor(image, camera, projected, design, pose)

    mask = np.zeros(image.shape[:2], np.uint8)
    # The camera is above the waist, so the glasshouse never hides behind the body: paint the
    # body and wheels far to near, then the glasshouse and mirrors far to near.
    for item in sorted(projected, key=lambda p: (p.piece.layer, -p.distance)):
        hull = cv2.convexHull(_fixed(item.pixels))
        cv2.fillConvexPoly(mask, hull, 1, cv2.LINE_8, SHIFT)
        _paint_piece(image, hull, item, design, camera, pose)
    return image, mask


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << SHIFT)).astype(np.int32)


def _paint_piece(
    image: np.ndarray, hull: np.ndarray, item: _ProjectedPiece, design: CarDesign, camera: Camera, pose: Pose,
) -> None:
    piece = item.piece
    normals = rotate_to_world(piece.normals, pose)
    to_camera = camera.position - car_to_world(piece.centres, pose)
    to_camera /= np.linalg.norm(to_camera, axis=1, keepdims=True)
    visible = np.flatnonzero(np.einsum("ij,ij->i", normals, to_camera) > 0)
    if not len(visible):
        return
    faces = [piece.faces[i] for i in visible]
    polygons = [_fixed(item.pixels[list(face.corners)]) for face in faces]
    colours = [shade(face.material, design.paint, normals[i], to_camera[i]) for face, i in zip(faces, visible)]
    # Under-paint the hull in the colour of the biggest face, so that the anti-aliased seams
    # between faces show car, not wall.
    biggest = int(np.argmax([abs(cv2.contourArea(p.astype(np.float32))) for p in polygons]))
    cv2.fillConvexPoly(image, hull, colours[biggest], cv2.LINE_8, SHIFT)
    for face, i, polygon, colour in zip(faces, visible, polygons, colours):
        cv2.fillPoly(image, [polygon], colour, cv2.LINE_AA, SHIFT)
        for decal in face.decals:
            corners = camera.project(car_to_world(decal.polygon, pose))
            cv2.fillPoly(image, [_fixed(corners)], shade(decal.material, design.paint, normals[i], to_camera[i]),
                         cv2.LINE_AA, SHIFT)


def _draw_scuffs(image: np.ndarray, camera: Camera, scuffs: np.ndarray, pose: Pose) -> None:
    c, s = np.cos(pose.yaw), np.sin(pose.yaw)
    turned = scuffs @ np.array([[c, -s], [s, c]])
    ground = np.concatenate([turned, np.zeros(turned.shape[:2] + (1,))], axis=2).reshape(-1, 3)
    lines = _fixed(camera.project(ground)).reshape(-1, 2, 2)
    thickness = max(1, round(2 * camera.size.width / REFERENCE.width))
    for line in lines:
        cv2.line(image, tuple(line[0]), tuple(line[1]), (168, 172, 176), thickness, cv2.LINE_AA, SHIFT)


def _darken_floor(
    image: np.ndarray, camera: Camera, projected: list[_ProjectedPiece], design: CarDesign, pose: Pose,
) -> None:
    """A soft shadow under the car and a faint mirror image of it on the floor (not in the mask)."""
    h, w = image.shape[:2]
    scale = 4 if w >= 480 else 1  # blur on a quarter-size map: the shadow has no detail to lose
    small = Size(max(1, w // scale), max(1, h // scale))
    shadow = np.zeros((small.height, small.width), np.float32)
    half_l, half_w = design.length / 2 + 0.15, design.width / 2 + 0.1
    footprint = np.array([(x, y, 0.0) for x, y in ((half_l, half_w), (half_l, -half_w), (-half_l, -half_w), (-half_l, half_w))])
    ground = camera.project(car_to_world(footprint, pose)) / scale
    cv2.fillConvexPoly(shadow, _fixed(ground), 0.55, cv2.LINE_AA, SHIFT)
    for wx, side in sample_car.wheel_centres(design):  # darker where the tyres press on the floor
        patch = np.array([(wx + dx, side * (design.width / 2 - 0.14), 0.0) for dx in (-0.35, -0.12, 0.12, 0.35)])
        spot = camera.project(car_to_world(patch, pose)) / scale
        centre = spot.mean(axis=0)
        axes = (max(1.0, float(np.ptp(spot[:, 0])) / 2 + 2), max(1.0, 6.0 / scale * w / REFERENCE.width * 4))
        cv2.ellipse(shadow, (tuple(centre), (2 * axes[0], 2 * axes[1]), 0.0), 0.35, -1, cv2.LINE_AA)
    reflection = np.zeros_like(shadow)
    for item in projected:
        mirrored = item.world * np.array([1.0, 1.0, -1.0])
        cv2.fillConvexPoly(reflection, cv2.convexHull(_fixed(camera.project(mirrored) / scale)), 1.0, cv2.LINE_AA, SHIFT)
    sigma = 10.0 * w / REFERENCE.width / scale * 4
    shadow = cv2.GaussianBlur(np.minimum(shadow, 0.7), (0, 0), max(sigma, 0.8))
    reflection = cv2.GaussianBlur(reflection, (0, 0), max(sigma / 2, 0.6)) * 0.12
    # Touch only the floor rows and the box where the shadow or reflection is visible.
    rows, cols = np.nonzero((shadow > 0.004) | (reflection > 0.004))
    if not len(rows):
        return
    top = max(int((camera.studio.horizon - 0.012) * h) // scale, int(rows.min()))
    bottom, left, right = int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    if bottom <= top:
        return
    box = (slice(top * scale, min(h, bottom * scale)), slice(left * scale, min(w, right * scale)))
    crop_h, crop_w = box[0].stop - box[0].start, box[1].stop - box[1].start
    keep = 1.0 - shadow[top:bottom, left:right] - reflection[top:bottom, left:right]
    tint = reflection[top:bottom, left:right, None] * np.array(design.paint, np.float32)
    if scale > 1:
        full = ((right - left) * scale, (bottom - top) * scale)
        keep = cv2.resize(keep, full, interpolation=cv2.INTER_LINEAR)
        tint = cv2.resize(tint, full, interpolation=cv2.INTER_LINEAR)
    keep = np.round(keep[:crop_h, :crop_w] * 255).astype(np.uint8)
    tint = np.round(tint[:crop_h, :crop_w]).astype(np.uint8)
    floor = cv2.multiply(image[box], cv2.merge([keep, keep, keep]), scale=1 / 255)
    image[box] = cv2.add(floor, tint)
