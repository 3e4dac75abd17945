"""The cars of the built-in sample data: a random design and its 3-D shape as convex pieces.

A car is a union of convex pieces: slices of the lower body and of the glasshouse between
consecutive stations along its length, four wheels and two mirrors. A convex piece seen from any
direction covers exactly the convex hull of its projected corners, so the car's silhouette (its
mask) is the union of those hulls whatever the view, and the picture can be painted piece by
piece from far to near. Everything here is pure geometry in metres, in the car's own frame:
x forward (the nose at +length/2), y to the car's left, z up from the floor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Materials a face or decal is painted with; the scene module shades each.
PAINT, GLASS, TRIM, TYRE, RIM, RIM_HOLE = "paint", "glass", "trim", "tyre", "rim", "rim_hole"
HEADLIGHT, TAILLIGHT, GRILLE, PLATE = "headlight", "taillight", "grille", "plate"
LETTERING = "lettering"  # the characters on number plates and dealer stickers: part of the car

BODY_STYLES = ("sedan", "hatchback", "suv", "wagon", "coupe")
# How often each style is drawn: mostly sedans and SUVs, as on a used-car lot.
STYLE_WEIGHTS = (0.34, 0.18, 0.26, 0.10, 0.12)

# Paint colours (BGR) and how often they appear: Carvana's lot is mostly white, black, silver and
# grey; white makes the near-white studio hard, black the dark shadows under the cars.
PAINTS: tuple[tuple[str, tuple[int, int, int], float], ...] = (
    ("white", (238, 239, 240), 0.24),
    ("pearl", (226, 232, 236), 0.04),
    ("silver", (196, 196, 192), 0.12),
    ("grey", (128, 128, 126), 0.10),
    ("black", (30, 30, 32), 0.22),
    ("dark blue", (82, 40, 22), 0.06),
    ("blue", (170, 100, 40), 0.04),
    ("red", (38, 30, 170), 0.08),
    ("maroon", (40, 30, 92), 0.04),
    ("green", (60, 92, 44), 0.02),
    ("beige", (160, 190, 205), 0.04),
)

ARCH_CLEARANCE = 1.14  # wheel-arch radius / wheel radius
SEAM = 0.004  # length of the step where a wheel arch starts, in metres


@dataclass(frozen=True)
class CarDesign:
    """The dimensions, shape and colours of one car (metres, BGR)."""

    style: str
    paint_name: str
    paint: tuple[int, int, int]
    length: float
    width: float
    ground_clearance: float
    belt_height: float  # top of the doors, where the side windows start
    roof_height: float
    hood_drop: float  # how much lower the front of the hood is than the belt
    wheel_radius: float
    front_overhang: float  # nose to front axle
    rear_overhang: float  # tail to rear axle
    windscreen_base: float  # x where the windscreen meets the hood
    roof_front: float  # x where the windscreen meets the roof
    roof_rear: float  # x where the roof meets the rear window
    rear_window_base: float  # x where the rear window ends
    rear_window_height: float  # z where the rear window ends
    tumblehome: float  # how much narrower the roof is than the body, per side
    dark_trim: bool  # black plastic lower sills and mirrors instead of body colour
    glass_clarity: float = 0.5  # 0: dark tinted windows; 1: clear ones showing the light cabin and the wall


def random_design(rng: np.random.Generator) -> CarDesign:
    """Draw a plausible car: the style fixes the proportions, each car varies within them."""
    style = str(rng.choice(BODY_STYLES, p=STYLE_WEIGHTS))
    names, colours, weights = zip(*PAINTS)
    k = int(rng.choice(len(PAINTS), p=np.array(weights) / sum(weights)))
    u = rng.uniform
    if style == "suv":
        length, width = u(4.4, 5.1), u(1.84, 2.0)
        clearance, belt, roof = u(0.2, 0.26), u(1.02, 1.16), u(1.66, 1.84)
        wheel, hood_drop = u(0.36, 0.41), u(0.06, 0.12)
        front_oh, rear_oh = u(0.85, 1.0), u(0.85, 1.05)
    elif style == "hatchback":
        length, width = u(3.9, 4.4), u(1.70, 1.82)
        clearance, belt, roof = u(0.13, 0.17), u(0.84, 0.92), u(1.42, 1.54)
        wheel, hood_drop = u(0.29, 0.33), u(0.1, 0.16)
        front_oh, rear_oh = u(0.78, 0.92), u(0.6, 0.78)
    elif style == "coupe":
        length, width = u(4.4, 4.8), u(1.80, 1.92)
        clearance, belt, roof = u(0.11, 0.15), u(0.8, 0.86), u(1.28, 1.38)
        wheel, hood_drop = u(0.32, 0.36), u(0.1, 0.16)
        front_oh, rear_oh = u(0.85, 1.0), u(0.8, 1.0)
    else:  # sedan and wagon share a platform
        length, width = u(4.5, 5.1), u(1.78, 1.92)
        clearance, belt, roof = u(0.13, 0.17), u(0.82, 0.9), u(1.42, 1.50)
        wheel, hood_drop = u(0.31, 0.36), u(0.08, 0.15)
        front_oh, rear_oh = u(0.85, 1.0), u(0.95, 1.15) if style == "sedan" else u(0.85, 1.0)

    nose = length / 2
    tail = -length / 2
    hood = {"suv": u(1.05, 1.25), "hatchback": u(0.95, 1.1), "coupe": u(1.35, 1.55)}.get(style, u(1.2, 1.4))
    windscreen_base = nose - hood
    windscreen_run = {"suv": u(0.5, 0.65), "coupe": u(0.85, 1.0)}.get(style, u(0.65, 0.8))
    roof_front = windscreen_base - windscreen_run
    if style == "sedan":
        roof_rear = roof_front - u(1.0, 1.3)
        rear_window_base = roof_rear - u(0.55, 0.75)
        rear_window_height = belt + 0.03
    elif style == "coupe":
        roof_rear = roof_front - u(0.55, 0.75)
        rear_window_base = tail + u(0.55, 0.8)
        rear_window_height = belt + 0.02
    else:  # the glasshouse runs to the tail and ends in a tailgate window
        roof_rear = tail + {"hatchback": u(0.45, 0.6), "suv": u(0.22, 0.32), "wagon": u(0.3, 0.42)}[style]
        rear_window_base = tail + u(0.08, 0.14)
        rear_window_height = belt + (roof - belt) * u(0.12, 0.3)
    return CarDesign(
        style=style, paint_name=str(names[k]), paint=tuple(int(c) for c in colours[k]),  # type: ignore[arg-type]
        length=length, width=width, ground_clearance=clearance, belt_height=belt, roof_height=roof,
        hood_drop=hood_drop, wheel_radius=wheel, front_overhang=front_oh, rear_overhang=rear_oh,
        windscreen_base=windscreen_base, roof_front=roof_front, roof_rear=roof_rear,
        rear_window_base=rear_window_base, rear_window_height=rear_window_height,
        tumblehome=u(0.12, 0.2), dark_trim=bool(rng.random() < 0.35), glass_clarity=u(0.0, 1.0),
    )


@dataclass(frozen=True)
class Decal:
    """A flat polygon painted on a face right after it (lights, grille, rims)."""

    polygon: np.ndarray  # (k, 3), in the face's plane
    material: str


@dataclass(frozen=True)
class Face:
    corners: tuple[int, ...]  # indices into the piece's vertices
    material: str
    decals: tuple[Decal, ...] = ()


@dataclass(frozen=True)
class Piece:
    """A convex part of the car; layer 1 (glasshouse, mirrors) is painted after layer 0."""

    vertices: np.ndarray  # (n, 3)
    faces: tuple[Face, ...]  # faces of zero area are left out
    layer: int
    normals: np.ndarray  # (faces, 3) outward unit normals
    centres: np.ndarray  # (faces, 3)


def make_piece(vertices: np.ndarray, faces: list[Face] | tuple[Face, ...], layer: int) -> Piece:
    """A piece with its faces' outward normals, which a turn of the turntable only rotates."""
    centre = vertices.mean(axis=0)
    kept, normals, centres = [], [], []
    for face in faces:
        corners = vertices[list(face.corners)]
        normal = _newell_normal(corners)
        length = float(np.linalg.norm(normal))
        if length < 1e-9:
            continue
        normal /= length
        face_centre = corners.mean(axis=0)
        if normal @ (face_centre - centre) < 0:  # the piece is convex: outward is away from its centre
            normal = -normal
        kept.append(face)
        normals.append(normal)
        centres.append(face_centre)
    return Piece(vertices, tuple(kept), layer, np.array(normals), np.array(centres))


def _newell_normal(corners: np.ndarray) -> np.ndarray:
    """Normal of a polygon, robust to corners that are not quite coplanar."""
    nxt = np.roll(corners, -1, axis=0)
    return np.array([
        np.sum((corners[:, 1] - nxt[:, 1]) * (corners[:, 2] + nxt[:, 2])),
        np.sum((corners[:, 2] - nxt[:, 2]) * (corners[:, 0] + nxt[:, 0])),
        np.sum((corners[:, 0] - nxt[:, 0]) * (corners[:, 1] + nxt[:, 1])),
    ])


def build_car(design: CarDesign) -> list[Piece]:
    """The car's shape as convex pieces, in the car's frame."""
    stations = _body_stations(design)
    body = _body_pieces(design, stations)
    glasshouse = _glasshouse_pieces(design)
    return body + _wheel_pieces(design) + glasshouse + _mirror_pieces(design)


def wheel_centres(design: CarDesign) -> list[tuple[float, float]]:
    """(x, side) of the four wheels; side is +1 for the left, -1 for the right."""
    front = design.length / 2 - design.front_overhang
    rear = -design.length / 2 + design.rear_overhang
    return [(x, side) for x in (front, rear) for side in (1.0, -1.0)]


# --- lower body -------------------------------------------------------------------------------

def _body_stations(d: CarDesign) -> np.ndarray:
    """x positions of the body's cross-sections: even spacing, plus every corner of the profile."""
    half = d.length / 2
    xs = list(np.linspace(-half, half, 18))
    xs += [half - 0.22, -half + 0.2, d.windscreen_base, d.rear_window_base]
    arch = ARCH_CLEARANCE * d.wheel_radius
    for x, _ in wheel_centres(d)[::2]:
        xs += [x - arch - SEAM, x + arch + SEAM]  # outside the arch: full-depth body
        xs += list(x + arch * np.array([-1, -0.9, -0.7, -0.4, 0.0, 0.4, 0.7, 0.9, 1.0]))
    xs = np.unique(np.round(np.clip(xs, -half, half), 5))
    # Stations closer than 2 cm add nothing but thin slivers; keep the arch seams, which must be close.
    keep = [xs[0]]
    for x in xs[1:]:
        if x - keep[-1] > 0.02 or _is_arch_edge(d, x) or _is_arch_edge(d, keep[-1]):
            keep.append(x)
    return np.array(keep)


def _is_arch_edge(d: CarDesign, x: float) -> bool:
    arch = ARCH_CLEARANCE * d.wheel_radius
    return any(abs(abs(x - wx) - arch) < 2 * SEAM for wx, _ in wheel_centres(d)[::2])


def _body_top(d: CarDesign, x: np.ndarray) -> np.ndarray:
    """Height of the hood, the waist and the boot lid along the car."""
    half, belt = d.length / 2, d.belt_height
    hood_front = belt - d.hood_drop
    if d.style in ("sedan", "coupe"):
        rear = [(-half, belt - 0.12), (-half + 0.2, belt + 0.01), (d.rear_window_base, belt + 0.02)]
    else:
        rear = [(-half, belt - 0.06), (-half + 0.2, belt - 0.01), (d.rear_window_base, belt)]
    front = [(d.windscreen_base, belt), (half - 0.22, hood_front), (half, hood_front - 0.08)]
    px, pz = zip(*sorted(rear + front))
    return np.interp(x, px, pz)


def _body_bottom(d: CarDesign, x: np.ndarray) -> np.ndarray:
    """Underside of the body: lifted at the bumpers and cut out round the wheels."""
    half = d.length / 2
    lift = np.interp(np.abs(x), [0, half - 0.3, half], [0, 0.02, 0.14])
    z = d.ground_clearance + lift
    arch = ARCH_CLEARANCE * d.wheel_radius
    for wx, _ in wheel_centres(d)[::2]:
        dx = np.abs(x - wx)
        inside = dx <= arch + 1e-9
        z = np.where(inside, d.wheel_radius + np.sqrt(np.clip(arch**2 - dx**2, 0, None)), z)
    return z


def _half_width(d: CarDesign, x: np.ndarray) -> np.ndarray:
    """Half the body's width: rounded in plan view over the last 60 cm at each end."""
    end = 0.6
    u = np.clip((np.abs(x) - (d.length / 2 - end)) / end, 0, 1)
    return d.width / 2 * (0.8 + 0.2 * np.sqrt(1 - u**2))


def _body_section(w: float, bottom: float, top: float) -> np.ndarray:
    """An octagonal cross-section (y, z): rounded sills, flat sides and a rounded shoulder."""
    h = top - bottom
    return np.array([
        (w * 0.93, bottom), (w, bottom + 0.3 * h), (w, top - 0.18 * h), (w * 0.88, top),
        (-w * 0.88, top), (-w, top - 0.18 * h), (-w, bottom + 0.3 * h), (-w * 0.93, bottom),
    ])


def _body_pieces(d: CarDesign, xs: np.ndarray) -> list[Piece]:
    widths, bottoms, tops = _half_width(d, xs), _body_bottom(d, xs), _body_top(d, xs)
    sections = [_body_section(w, b, t) for w, b, t in zip(widths, bottoms, tops)]
    sill = TRIM if d.dark_trim else PAINT
    # Edges of the octagon: 0 sill, 1 side, 2 shoulder, 3 top, 4 shoulder, 5 side, 6 sill, 7 underside.
    side_materials = [sill, PAINT, PAINT, PAINT, PAINT, PAINT, sill, TRIM]
    pieces = []
    last = len(xs) - 2
    for i in range(len(xs) - 1):
        materials = list(side_materials)
        if i == last:  # the front corners carry the headlights
            materials[2] = materials[4] = HEADLIGHT
        if i == 0:  # and the rear corners the tail lights
            materials[2] = materials[4] = TAILLIGHT
        caps = {}
        if i == 0:
            caps["start"] = _tail_decals(xs[0], widths[0], bottoms[0], tops[0])
        if i == last:
            caps["end"] = _nose_decals(xs[-1], widths[-1], bottoms[-1], tops[-1])
        pieces.append(_slice(xs[i], sections[i], xs[i + 1], sections[i + 1], materials, PAINT, caps, layer=0))
    return pieces


def _slice(
    x0: float, section0: np.ndarray, x1: float, section1: np.ndarray, edge_materials: list[str],
    cap_material: str, caps: dict[str, tuple[Decal, ...]], layer: int,
) -> Piece:
    """The piece between two cross-sections: one quad per edge, plus end caps where asked."""
    n = len(section0)
    vertices = np.vstack([
        np.column_stack([np.full(n, x0), section0]), np.column_stack([np.full(n, x1), section1]),
    ])
    faces = [Face((k, (k + 1) % n, n + (k + 1) % n, n + k), edge_materials[k]) for k in range(n)]
    if "start" in caps:
        faces.append(Face(tuple(range(n)), cap_material, caps["start"]))
    if "end" in caps:
        faces.append(Face(tuple(range(n, 2 * n)), cap_material, caps["end"]))
    return make_piece(vertices, faces, layer)


def _rect(x: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([(x, y0, z0), (x, y1, z0), (x, y1, z1), (x, y0, z1)])


def _nose_decals(x: float, w: float, bottom: float, top: float) -> tuple[Decal, ...]:
    h = top - bottom
    return (
        Decal(_rect(x, -0.75 * w, 0.75 * w, bottom + 0.05 * h, bottom + 0.28 * h), TRIM),
        Decal(_rect(x, -0.42 * w, 0.42 * w, bottom + 0.35 * h, top - 0.18 * h), GRILLE),
        Decal(_rect(x, 0.5 * w, 0.9 * w, top - 0.42 * h, top - 0.12 * h), HEADLIGHT),
        Decal(_rect(x, -0.9 * w, -0.5 * w, top - 0.42 * h, top - 0.12 * h), HEADLIGHT),
        *_plate(x, bottom + 0.2 * h),
    )


def _tail_decals(x: float, w: float, bottom: float, top: float) -> tuple[Decal, ...]:
    h = top - bottom
    return (
        Decal(_rect(x, -0.85 * w, 0.85 * w, bottom + 0.04 * h, bottom + 0.22 * h), TRIM),
        Decal(_rect(x, 0.55 * w, 0.92 * w, top - 0.38 * h, top - 0.1 * h), TAILLIGHT),
        Decal(_rect(x, -0.92 * w, -0.55 * w, top - 0.38 * h, top - 0.1 * h), TAILLIGHT),
        *_plate(x, bottom + 0.42 * h),
    )


def _plate(x: float, z: float) -> tuple[Decal, ...]:
    """A number plate with a row of dark characters, which a model must keep inside the car."""
    plate = Decal(_rect(x, -0.16, 0.16, z, z + 0.11), PLATE)
    glyphs = tuple(Decal(_rect(x, y, y + 0.03, z + 0.025, z + 0.075), LETTERING)
                   for y in np.linspace(-0.13, 0.1, 6))
    return (plate, *glyphs)


# --- glasshouse -------------------------------------------------------------------------------

def _glasshouse_profile(d: CarDesign) -> list[tuple[float, float, str]]:
    """(x, roof z, side material of the segment behind this station), from the tail forwards."""
    belt, roof = d.belt_height, d.roof_height
    b_pillar = (d.roof_front + d.roof_rear) / 2 + 0.1 * (d.roof_front - d.roof_rear)
    crown = 0.03
    if d.style in ("sedan", "coupe"):
        quarter = d.roof_rear + 0.25 * (d.roof_front - d.roof_rear)  # the C-pillar starts here
        rear = [(d.rear_window_base, d.rear_window_height, PAINT), (d.roof_rear, roof - crown, PAINT),
                (quarter, roof, GLASS)]
    else:
        d_pillar = d.roof_rear + 0.2
        rear = [(d.rear_window_base, d.rear_window_height, PAINT), (d.roof_rear, roof - crown, PAINT),
                (d_pillar, roof - crown / 2, GLASS)]
    middle = [(b_pillar - 0.06, roof + crown, TRIM), (b_pillar + 0.06, roof + crown, GLASS)]
    front = [(d.roof_front, roof - crown, GLASS), (d.windscreen_base, belt, GLASS)]
    return rear + middle + front


def _glasshouse_section(w_belt: float, w_roof: float, belt: float, top: float) -> np.ndarray:
    """A cross-section (y, z) of the cabin: sloping windows, a rounded roof rail, a flat roof."""
    rail = min(0.06, 0.3 * (top - belt))
    return np.array([
        (w_belt, belt), (w_roof + 0.04, top - rail), (w_roof, top),
        (-w_roof, top), (-w_roof - 0.04, top - rail), (-w_belt, belt),
    ])


def _glasshouse_pieces(d: CarDesign) -> list[Piece]:
    profile = _glasshouse_profile(d)
    xs = np.array([p[0] for p in profile])
    belts = _body_top(d, xs)
    w_belt = _half_width(d, xs) * 0.9
    sections = [
        _glasshouse_section(wb, max(wb - d.tumblehome - 0.04, 0.3), b, max(z, b))
        for wb, b, (_, z, _) in zip(w_belt, belts, profile)
    ]
    pieces = []
    for i in range(len(profile) - 1):
        side = profile[i][2]
        rise = abs(profile[i + 1][1] - profile[i][1]) / max(xs[i + 1] - xs[i], 1e-6)
        top = GLASS if rise > 0.25 else PAINT  # steep segments are the windscreen and rear window
        # Edges: 0 window, 1 rail, 2 roof, 3 rail, 4 window, 5 floor (inside the body).
        materials = [side, PAINT, top, PAINT, side, TRIM]
        caps = {"start": ()} if i == 0 and sections[0][2][1] - belts[0] > 0.05 else {}
        pieces.append(_slice(xs[i], sections[i], xs[i + 1], sections[i + 1], materials, GLASS, caps, layer=1))
    return pieces


def _mirror_pieces(d: CarDesign) -> list[Piece]:
    x = d.windscreen_base - 0.12
    w = float(_half_width(d, np.array([x]))[0]) * 0.9
    z = d.belt_height + 0.04
    material = TRIM if d.dark_trim else PAINT
    pieces = []
    for side in (1.0, -1.0):
        y0, y1 = side * (w - 0.02), side * (w + 0.2)
        corners = np.array([
            (x + dx, y, z + dz) for dx in (-0.05, 0.12) for y in (y0, y1) for dz in (0.0, 0.15)
        ])
        faces = (  # box corners indexed by (dx, y, dz) bits
            Face((0, 1, 3, 2), material), Face((4, 5, 7, 6), material), Face((0, 1, 5, 4), material),
            Face((2, 3, 7, 6), material), Face((0, 2, 6, 4), material), Face((1, 3, 7, 5), material),
        )
        pieces.append(make_piece(corners, faces, layer=1))
    return pieces


# --- wheels -----------------------------------------------------------------------------------

def _wheel_pieces(d: CarDesign, segments: int = 20) -> list[Piece]:
    r = d.wheel_radius
    tyre_width = 0.22 + 0.1 * (r - 0.3)
    angles = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    pieces = []
    for wx, side in wheel_centres(d):
        outer_y = side * (d.width / 2 - 0.03)
        inner_y = outer_y - side * tyre_width
        ring = np.column_stack([wx + r * np.cos(angles), r + r * np.sin(angles)])
        vertices = np.vstack([
            np.column_stack([ring[:, 0], np.full(segments, inner_y), ring[:, 1]]),
            np.column_stack([ring[:, 0], np.full(segments, outer_y), ring[:, 1]]),
        ])
        n = segments
        faces = [Face((k, (k + 1) % n, n + (k + 1) % n, n + k), TYRE) for k in range(n)]
        faces.append(Face(tuple(range(n)), TYRE))
        faces.append(Face(tuple(range(n, 2 * n)), TYRE, _rim_decals(wx, outer_y, r, spin=wx)))
        pieces.append(make_piece(vertices, faces, layer=0))
    return pieces


def _rim_decals(x: float, y: float, r: float, spin: float) -> tuple[Decal, ...]:
    def disc(radius: float, a0: float = 0.0, a1: float = 2 * np.pi, k: int = 16) -> np.ndarray:
        a = np.linspace(a0, a1, k, endpoint=a1 - a0 < 2 * np.pi)
        return np.column_stack([x + radius * np.cos(a), np.full(k, y), r + radius * np.sin(a)])

    holes = []
    spokes = 5
    for s in range(spokes):
        a0 = spin + 2 * np.pi * s / spokes + 0.22
        a1 = a0 + 2 * np.pi / spokes - 0.44
        holes.append(Decal(np.vstack([disc(0.6 * r, a0, a1, 5), disc(0.24 * r, a1, a0, 3)]), RIM_HOLE))
    return (Decal(disc(0.66 * r), RIM), *holes, Decal(disc(0.14 * r, k=8), TRIM))
