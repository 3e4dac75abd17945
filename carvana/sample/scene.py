"""The photo studio of the built-in sample data, and a painter that photographs a car in it.

What the Carvana photos share: a near-white wall with large dark lettering on the wall/floor line, a
grey floor with a turntable rim, in some booths a dark band at the bottom, a long lens looking down
from afar, 16 views 22.5 degrees apart (1 the front, 9 the rear), soft shadows and a faint reflection
(not part of the mask), glossy paint mirroring wall and floor, soft edges, sensor noise, and framing
that varies a little per car. Geometry is computed at 1918x1280 and scaled per axis to the asked size,
so a small sample looks like a resized large one. All functions are pure (the backdrop is cached).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from carvana.core.geometry import Size
from carvana.sample import car as sample_car
from carvana.sample.car import CarDesign, Piece

REFERENCE = Size(1918, 1280)
VIEWS = 16
SHIFT = 4  # fixed-point bits for sub-pixel polygon corners (cv2 `shift`)
LIGHT = np.array([0.25, -0.55, 1.0]) / np.linalg.norm([0.25, -0.55, 1.0])  # from above, camera side


@dataclass(frozen=True)
class Studio:
    """A photo booth: backdrop lettering, tones, and where its camera stands."""

    word: str
    split: int  # the word's first `split` letters are light and thin, the rest dark and bold
    letter_grey: int  # of the bold part; the light part is brighter
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
    band: float = 0.0  # height of a dark floor band along the bottom of the frame, as a fraction
    band_tone: tuple[int, int, int] = (44, 44, 46)


STUDIOS = (
    Studio("AUTORAMA", 4, 78, (246, 246, 247), (196, 190, 184), (192, 188, 184), 0.35, 0.335,
           11.5, 2.3, 3700.0, 880.0, 3.6),
    Studio("MOTORVIEW", 5, 88, (242, 244, 246), (184, 186, 188), (178, 186, 194), 0.335, 0.32,
           12.0, 2.5, 3800.0, 860.0, 3.8, band=0.055),
    Studio("DRIVEWAY", 5, 72, (248, 247, 245), (176, 188, 198), (184, 194, 204), 0.365, 0.35,
           11.0, 2.2, 3600.0, 900.0, 3.5),
    Studio("CARSHOW", 3, 82, (244, 245, 246), (200, 194, 188), (196, 192, 190), 0.325, 0.31,
           11.5, 2.4, 3750.0, 850.0, 3.7, band=0.04, band_tone=(40, 52, 96)),
    Studio("AUTOPARK", 4, 76, (247, 247, 247), (188, 190, 192), (194, 196, 198), 0.38, 0.365,
           11.2, 2.25, 3650.0, 915.0, 3.6, band=0.07),
)


@dataclass(frozen=True)
class Shot:
    """How one car is photographed in its booth: framed a little closer or farther, higher or
    lower, under lights that cast a lighter or darker shadow. The same for all 16 views."""

    zoom: float = 1.0  # focal length factor
    lift: float = 0.0  # pixels (at the reference resolution) the turntable centre is moved up
    shadow: float = 1.0  # darkness factor of the floor shadow


def random_shot(rng: np.random.Generator, car_length: float) -> Shot:
    """A shot of a car this long: a long car is never zoomed so far that a side view leaves the frame."""
    zoom = min(float(rng.uniform(0.86, 1.04)), 4.9 / car_length)
    return Shot(zoom=zoom, lift=float(rng.normal(0.0, 35.0)), shadow=float(rng.uniform(0.75, 1.2)))


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

    def __init__(self, studio: Studio, size: Size, shot: Shot = Shot()):
        self.studio = studio
        self.size = size
        sx, sy = size.width / REFERENCE.width, size.height / REFERENCE.height
        focal = studio.focal * shot.zoom
        self.fx, self.fy = focal * sx, focal * sy
        self.cx = size.width / 2
        self.cy = (studio.ground_row - shot.lift - focal * studio.camera_height / studio.distance) * sy
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

@lru_cache(maxsize=len(STUDIOS) + 2)
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
    _draw_floor_band(image, studio, rng)
    if size != REFERENCE:
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)
    image.setflags(write=False)
    return image


def _draw_lettering(image: np.ndarray, studio: Studio) -> None:
    """Big wide capitals across the wall, like a showroom logo: a light thin part, a dark bold one.

    The word runs nearly edge to edge and stands on the wall/floor line, so roofs overlap it.
    It is drawn once in a plain font, then stretched to the logo's box.
    """
    w, h = REFERENCE
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 4.0
    light, bold = studio.word[:studio.split], studio.word[studio.split:]
    thin, thick = 7, 16
    (light_w, text_h), _ = cv2.getTextSize(light, font, scale, thin)
    (bold_w, _), _ = cv2.getTextSize(bold, font, scale, thick)
    pad = thick
    ink = np.zeros((text_h + 2 * pad, light_w + bold_w + 2 * pad), np.uint8)
    cv2.putText(ink, light, (pad, text_h + pad), font, scale, 1, thin, cv2.LINE_AA)
    cv2.putText(ink, bold, (pad + light_w, text_h + pad), font, scale, 2, thick, cv2.LINE_AA)
    box_w, box_h = int(0.96 * w), int(0.24 * h)
    bottom = int(studio.letters_bottom * h) + int(box_h * pad / ink.shape[0])
    left = (w - box_w) // 2
    region = image[bottom - box_h:bottom, left:left + box_w].astype(np.float32)
    grey = studio.letter_grey
    pale = min(grey + 60, 200)
    for value, tone in ((1, pale), (2, grey)):
        alpha = cv2.resize((ink == value).astype(np.float32), (box_w, box_h), interpolation=cv2.INTER_LINEAR)
        region = region * (1 - alpha[..., None]) + np.array((tone, tone, tone + 3), np.float32) * alpha[..., None]
    image[bottom - box_h:bottom, left:left + box_w] = region.round().astype(np.uint8)
    # A faint glass panel behind the middle of the word.
    top = bottom - box_h
    cv2.rectangle(image, (int(0.37 * w), top - 20), (int(0.62 * w), bottom), (215, 215, 215), 2, cv2.LINE_AA)


def _draw_floor_band(image: np.ndarray, studio: Studio, rng: np.random.Generator) -> None:
    """The dark edge of the booth's platform along the bottom of the frame, below a pale lip.

    It is floor, never car, yet as dark as tyres and black paint: a model must learn that the
    car ends at its wheels, not at the first dark pixels.
    """
    if studio.band <= 0:
        return
    w, h = REFERENCE
    top = int(round((1 - studio.band) * h))
    cols = np.arange(w, dtype=np.float32)
    # The lip is not quite straight: the platform is a circle seen from afar.
    edge = top + 0.006 * h * ((cols - w / 2) / (w / 2)) ** 2
    rows = np.arange(h, dtype=np.float32)[:, None]
    lip = (rows >= edge[None, :] - 0.008 * h) & (rows < edge[None, :])
    band = rows >= edge[None, :]
    tone = np.array(studio.band_tone, np.float32)
    shading = 1.0 + 0.25 * (rows - top) / max(1.0, h - top) + 0.05 * rng.normal(0, 1, (h, 1)).astype(np.float32)
    dark = (tone[None, None, :] * shading[..., None]).clip(0, 255).astype(np.uint8)
    dark = np.broadcast_to(dark, image.shape)
    image[band] = dark[band]
    image[lip] = (226, 228, 230)


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

def shade(material: str, paint: tuple[int, int, int], normal: np.ndarray, to_camera: np.ndarray,
          glass_clarity: float = 0.5) -> tuple[float, ...]:
    """BGR colour of a flat face under the studio's soft top light."""
    sky = 0.5 * (1.0 + normal[2])
    diffuse = max(0.0, float(normal @ LIGHT))
    reflected = 2 * float(normal @ to_camera) * normal - to_camera
    highlight = max(0.0, float(reflected @ LIGHT)) ** 16
    facing = abs(float(normal @ to_camera))
    if material == sample_car.PAINT:
        # Glossy paint: lit colour plus a mirror image of the studio, stronger at grazing angles.
        # A white panel thus ends up as bright as the wall behind it, a black hood grey.
        lit = np.array(paint, np.float64) * (0.7 + 0.2 * diffuse + 0.3 * sky)
        gloss = 0.1 + 0.3 * (1.0 - facing) ** 2
        colour = lit * (1 - gloss) + _environment(float(reflected[2])) * gloss + 255 * 0.3 * highlight
        colour = np.minimum(colour, 252.0)
    elif material == sample_car.GLASS:
        # What shows through (the cabin, and the bright wall through the far windows), mixed with
        # the studio mirrored at grazing angles: clear glass on a black car is lighter than its paint.
        through = np.array([38.0, 34, 30]) + np.array([150.0, 152, 155]) * glass_clarity
        mirrored = 0.12 + 0.6 * (1.0 - facing) ** 2
        colour = through * (1 - mirrored) + _environment(float(reflected[2])) * mirrored + 120 * highlight
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
    elif material == sample_car.LETTERING:
        colour = np.array([96.0, 52, 30])
    else:
        raise ValueError(f"unknown material {material!r}")
    return tuple(float(c) for c in np.clip(colour, 0, 255))


def _environment(up: float) -> float:
    """Grey level the studio shows along a reflected ray with this upward component: the floor
    below, the bright wall straight ahead, the dimmer ceiling above."""
    return float(np.interp(up, [-1.0, -0.02, 0.06, 0.45, 1.0], [172.0, 182.0, 245.0, 238.0, 200.0]))


# --- the painter ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ProjectedPiece:
    piece: Piece
    world: np.ndarray
    pixels: np.ndarray
    distance: float  # camera to the piece's centre, metres


def photograph(
    pieces: list[Piece], design: CarDesign, studio_index: int, pose: Pose, size: Size,
    scuffs: np.ndarray, shot: Shot = Shot(),
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one view. Returns the BGR uint8 photo (before noise and compression) and the 0/1 mask."""
    studio = STUDIOS[studio_index]
    camera = Camera(studio, size, shot)
    image = backdrop(studio_index, size).copy()
    _draw_scuffs(image, camera, scuffs, pose)
    projected = []
    for piece in pieces:
        world = car_to_world(piece.vertices, pose)
        # Painter's order by distance from the camera, not by depth: in a side view the body slices
        # all have the same depth, yet the ones nearer the middle hide the ends of their neighbours.
        distance = float(np.linalg.norm(world.mean(axis=0) - camera.position))
        projected.append(_ProjectedPiece(piece, world, camera.project(world), distance))
    _darken_floor(image, camera, projected, design, pose, shot.shadow)

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
    colours = [shade(face.material, design.paint, normals[i], to_camera[i], design.glass_clarity)
               for face, i in zip(faces, visible)]
    # Under-paint the hull in the colour of the biggest face, so that the anti-aliased seams
    # between faces show car, not wall.
    biggest = int(np.argmax([abs(cv2.contourArea(p.astype(np.float32))) for p in polygons]))
    cv2.fillConvexPoly(image, hull, colours[biggest], cv2.LINE_8, SHIFT)
    for face, i, polygon, colour in zip(faces, visible, polygons, colours):
        cv2.fillPoly(image, [polygon], colour, cv2.LINE_AA, SHIFT)
        for decal in face.decals:
            corners = camera.project(car_to_world(decal.polygon, pose))
            cv2.fillPoly(image, [_fixed(corners)],
                         shade(decal.material, design.paint, normals[i], to_camera[i], design.glass_clarity),
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
    darkness: float = 1.0,
) -> None:
    """The floor round the car, none of it in the mask: a dark contact shadow right under the body,
    darkest where the tyres press on the floor, a wide soft shadow reaching well beyond the car,
    and a faint mirror image of the car."""
    h, w = image.shape[:2]
    scale = 4 if w >= 480 else 1  # blur on a quarter-size map: the shadow has no detail to lose
    small = Size(max(1, w // scale), max(1, h // scale))
    per_reference_pixel = w / REFERENCE.width / scale

    def footprint(grow_length: float, grow_width: float) -> np.ndarray:
        half_l, half_w = design.length / 2 + grow_length, design.width / 2 + grow_width
        corners = [(half_l, half_w), (half_l, -half_w), (-half_l, -half_w), (-half_l, half_w)]
        ground = camera.project(car_to_world(np.array([(x, y, 0.0) for x, y in corners]), pose)) / scale
        return _fixed(ground)

    contact = np.zeros((small.height, small.width), np.float32)
    cv2.fillConvexPoly(contact, footprint(-0.05, -0.03), 0.6, cv2.LINE_AA, SHIFT)
    for wx, side in sample_car.wheel_centres(design):
        patch = np.array([(wx + dx, side * (design.width / 2 - 0.14), 0.0) for dx in (-0.35, -0.12, 0.12, 0.35)])
        spot = camera.project(car_to_world(patch, pose)) / scale
        centre = spot.mean(axis=0)
        axes = (max(1.0, float(np.ptp(spot[:, 0])) / 2 + 2), max(1.0, 24.0 * per_reference_pixel))
        cv2.ellipse(contact, (tuple(centre), (2 * axes[0], 2 * axes[1]), 0.0), 0.85, -1, cv2.LINE_AA)
    wide = np.zeros_like(contact)
    cv2.fillConvexPoly(wide, footprint(0.6, 0.45), 0.24, cv2.LINE_AA, SHIFT)
    contact = cv2.GaussianBlur(contact, (0, 0), max(14.0 * per_reference_pixel, 0.6))
    wide = cv2.GaussianBlur(wide, (0, 0), max(70.0 * per_reference_pixel, 1.0))
    shadow = np.minimum((contact + wide) * darkness, 0.85)
    sigma = 40.0 * per_reference_pixel
    reflection = np.zeros_like(shadow)
    for item in projected:
        mirrored = item.world * np.array([1.0, 1.0, -1.0])
        cv2.fillConvexPoly(reflection, cv2.convexHull(_fixed(camera.project(mirrored) / scale)), 1.0, cv2.LINE_AA, SHIFT)
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
