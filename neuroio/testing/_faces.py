"""Generated face pictures for the emulator: a small cartoon face per person, as PNG.

Pure functions, no I/O: :func:`face_png` draws a face whose colours and features derive from a
hash of a key (the person's ``pid``, so one person always has the same face), and
:func:`scene_png` puts that face in a camera frame (the ``full_image``). Unknown persons (no
``pid``) get a grey face, so they stand apart at a glance.

PNG rather than JPEG or SVG: the standard library writes it (``zlib`` and ``struct``), every
browser and image library reads it, and it is lossless, so the same key always gives the same
bytes. The pixels are drawn shape by shape over their bounding boxes, a few milliseconds a
picture; the emulator caches the results.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

__all__ = ["FACE_SIZE", "SCENE_SIZE", "encode_png", "face_png", "scene_png"]

FACE_SIZE = 96
"""Width and height of a face picture, pixels."""
SCENE_SIZE = (240, 160)
"""Width and height of a full (scene) picture, pixels."""

_Colour = tuple[int, int, int]

_SKINS: tuple[_Colour, ...] = (
    (255, 224, 196),
    (241, 194, 155),
    (224, 172, 125),
    (198, 134, 88),
    (141, 85, 54),
    (96, 62, 40),
)
_HAIRS: tuple[_Colour, ...] = (
    (40, 30, 25),
    (90, 56, 30),
    (160, 110, 60),
    (225, 190, 110),
    (170, 60, 30),
    (200, 200, 205),
    (60, 60, 70),
)
_EYES: tuple[_Colour, ...] = ((60, 40, 20), (40, 90, 160), (50, 120, 70), (90, 90, 90))
_BACKGROUNDS: tuple[_Colour, ...] = (
    (173, 216, 230),
    (204, 235, 197),
    (254, 217, 166),
    (222, 203, 228),
    (255, 255, 204),
    (229, 216, 189),
    (179, 205, 227),
    (253, 218, 236),
)
# Camera walls of the scene, by source id.
_WALLS: tuple[_Colour, ...] = (
    (120, 134, 150),
    (150, 128, 110),
    (110, 140, 120),
    (140, 120, 150),
    (160, 150, 120),
)
_MOUTH: _Colour = (150, 40, 50)
_WHITE: _Colour = (255, 255, 255)
_GLASSES: _Colour = (30, 30, 30)


class _Canvas:
    """An RGB picture being drawn: one ``bytearray`` row after row."""

    __slots__ = ("width", "height", "pixels")

    def __init__(self, width: int, height: int, fill: _Colour) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(fill) * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: _Colour) -> None:
        """Fill the pixels with ``x0 <= x < x1`` and ``y0 <= y < y1`` (clipped)."""
        x0, x1 = max(0, x0), min(self.width, x1)
        if x1 <= x0:
            return
        run = bytes(colour) * (x1 - x0)
        for y in range(max(0, y0), min(self.height, y1)):
            start = (y * self.width + x0) * 3
            self.pixels[start : start + len(run)] = run

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, colour: _Colour, *, top: float = -1e9
    ) -> None:
        """Fill an ellipse centred on ``(cx, cy)``; only its part with ``y >= top``."""
        for y in range(max(0, int(cy - ry)), min(self.height, int(cy + ry) + 1)):
            if y < top:
                continue
            dy = (y + 0.5 - cy) / ry
            if dy * dy > 1.0:
                continue
            half = rx * (1.0 - dy * dy) ** 0.5
            self.rect(int(cx - half + 0.5), y, int(cx + half + 0.5), y + 1, colour)

    def paste(self, other: _Canvas, x: int, y: int) -> None:
        """Copy ``other`` with its top left corner at ``(x, y)`` (it must fit)."""
        row = other.width * 3
        for j in range(other.height):
            start = ((y + j) * self.width + x) * 3
            self.pixels[start : start + row] = other.pixels[j * row : (j + 1) * row]

    def png(self) -> bytes:
        """The picture as PNG."""
        return encode_png(self.width, self.height, bytes(self.pixels))


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """A PNG of ``width`` x ``height`` 8-bit RGB pixels given row after row."""
    row = width * 3
    if len(rgb) != row * height:
        raise ValueError(f"{width}x{height} RGB needs {row * height} bytes, got {len(rgb)}")
    # Filter type 0 (none) before every row; zlib does the rest well on flat cartoon colours.
    raw = b"".join(b"\x00" + rgb[y * row : (y + 1) * row] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _grey(colour: _Colour) -> _Colour:
    level = (colour[0] * 30 + colour[1] * 59 + colour[2] * 11) // 100
    return (level, level, level)


def _draw_face(key: str, *, known: bool) -> _Canvas:
    """The face of ``key``: every choice is a byte of its SHA-256."""
    h = hashlib.sha256(key.encode("utf-8")).digest()
    background = _BACKGROUNDS[h[0] % len(_BACKGROUNDS)]
    skin = _SKINS[h[1] % len(_SKINS)]
    hair = _HAIRS[h[2] % len(_HAIRS)]
    eyes = _EYES[h[3] % len(_EYES)]
    mouth = _MOUTH
    if not known:
        background, skin, hair, eyes, mouth = (
            (228, 228, 228),
            _grey(skin),
            _grey(hair),
            (70, 70, 70),
            (110, 110, 110),
        )
    s = FACE_SIZE
    canvas = _Canvas(s, s, background)
    cx, cy = s / 2, s * 0.54
    rx = s * (0.27 + (h[4] % 8) / 100)  # narrow to wide
    ry = s * (0.34 + (h[5] % 6) / 100)
    style = h[6] % 4  # 0 bald, 1 short, 2 long, 3 tall
    if style == 2:
        canvas.ellipse(cx, cy - ry * 0.1, rx * 1.18, ry * 1.08, hair)
    elif style == 3:
        canvas.ellipse(cx, cy - ry * 0.75, rx * 0.95, ry * 0.6, hair)
    canvas.ellipse(cx - rx, cy, s * 0.06, s * 0.09, skin)  # ears
    canvas.ellipse(cx + rx, cy, s * 0.06, s * 0.09, skin)
    canvas.ellipse(cx, cy, rx, ry, skin)
    if style in (1, 2):
        # A cap of hair: the top of a slightly larger ellipse.
        canvas.ellipse(cx, cy - ry * 0.12, rx * 1.04, ry * 0.98, hair, top=0)
        canvas.ellipse(cx, cy + ry * 0.05, rx * 0.98, ry * 0.85, skin)
    spread = rx * (0.38 + (h[7] % 10) / 100)
    eye_y = cy - ry * 0.12
    eye_r = s * (0.045 + (h[8] % 3) / 100)
    for side in (-1, 1):
        ex = cx + side * spread
        canvas.ellipse(ex, eye_y, eye_r * 1.6, eye_r * 1.2, _WHITE)
        canvas.ellipse(ex, eye_y, eye_r, eye_r, eyes)
        if h[9] % 5 == 0:  # glasses: a frame around each eye and a bridge
            r = eye_r * 2.3
            canvas.rect(int(ex - r), int(eye_y - r), int(ex + r), int(eye_y - r) + 2, _GLASSES)
            canvas.rect(int(ex - r), int(eye_y + r) - 2, int(ex + r), int(eye_y + r), _GLASSES)
    if h[9] % 5 == 0:
        canvas.rect(
            int(cx - spread * 0.4), int(eye_y), int(cx + spread * 0.4), int(eye_y) + 2, _GLASSES
        )
    nose = tuple(max(0, c - 30) for c in skin)
    canvas.ellipse(cx, cy + ry * 0.15, s * 0.025, s * 0.05, (nose[0], nose[1], nose[2]))
    mouth_y = cy + ry * 0.5
    width = rx * (0.35 + (h[10] % 20) / 100)
    if h[11] % 3 == 0:  # a smile: the lower half of an ellipse, skin drawn over its top
        canvas.ellipse(cx, mouth_y - s * 0.03, width, s * 0.07, mouth, top=mouth_y - s * 0.03)
    elif h[11] % 3 == 1:  # an open mouth
        canvas.ellipse(cx, mouth_y, width * 0.5, s * 0.045, mouth)
    else:  # a straight one
        canvas.rect(int(cx - width), int(mouth_y), int(cx + width), int(mouth_y) + 3, mouth)
    return canvas


def face_png(key: str, *, known: bool = True) -> bytes:
    """The face picture of ``key`` (a ``pid``), ``FACE_SIZE`` pixels square, as PNG.

    The same key gives the same bytes. ``known=False`` draws it grey (an unknown person).
    """
    return _draw_face(key, known=known).png()


def scene_png(key: str, *, known: bool = True, camera: int = 0, where: int = 0) -> bytes:
    """A camera frame (``SCENE_SIZE``) with the face of ``key`` in it, as PNG.

    Args:
        key: as for :func:`face_png`.
        known: as for :func:`face_png`.
        camera: the source id: the colour of the wall.
        where: any number: where in the frame the face is (the entry id moves it).
    """
    width, height = SCENE_SIZE
    wall = _WALLS[camera % len(_WALLS)]
    scene = _Canvas(width, height, wall)
    floor = tuple(max(0, c - 40) for c in wall)
    scene.rect(0, height * 3 // 4, width, height, (floor[0], floor[1], floor[2]))
    scene.rect(width // 12, height // 8, width // 12 + 36, height * 3 // 4, (90, 70, 60))  # door
    face = _draw_face(key, known=known)
    span = width - FACE_SIZE - 8
    x = 4 + (where * 37) % span
    y = (height - FACE_SIZE) // 3
    scene.paste(face, x, y)
    return scene.png()
