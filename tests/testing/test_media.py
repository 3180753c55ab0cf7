"""The emulator's pictures: entries link to faces it serves itself, over HTTP, as PNG."""

from __future__ import annotations

import struct
import zlib

import aiohttp

from neuroio.testing import Emulator, EntryFactory
from neuroio.testing._faces import FACE_SIZE, SCENE_SIZE, face_png, scene_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, each CRC checked."""
    assert data[:8] == PNG_SIGNATURE
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG, after checking it is whole and decodes."""
    chunks = png_chunks(data)
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour) == (8, 2)  # 8-bit RGB
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(pixels) == height * (1 + 3 * width)
    return width, height


async def fetch(session: aiohttp.ClientSession, url: str, status: int = 200) -> bytes:
    async with session.get(url) as resp:
        assert resp.status == status, (url, resp.status)
        if status == 200:
            assert resp.content_type == "image/png"
        return await resp.read()


async def test_entries_link_to_pictures_the_emulator_serves(
    session: aiohttp.ClientSession, emu: Emulator
) -> None:
    """face_image and full_image of a generated entry are PNGs served on the same port,
    with no token; a person's initial pictures too."""
    entry = await emu.emit(result="exact")
    base = emu.media_url
    assert base == f"{emu.api_url}/media"
    # The platform's layout: space, day, a 32-digit key (here the id first), the kind.
    day = entry["created"][:10].replace("-", "/")
    folder = f"{base}/v1/spaces/17/entries/{day}/{entry['id']:016x}"
    assert entry["face_image"].startswith(folder) and entry["face_image"].endswith("/face.png")
    assert entry["full_image"] == entry["face_image"].replace("/face.png", "/full.png")
    assert entry["initial_face_image"] == f"{base}/v1/spaces/17/persons/{entry['pid']}/face.png"
    face = await fetch(session, entry["face_image"])
    assert png_size(face) == (FACE_SIZE, FACE_SIZE)
    assert png_size(await fetch(session, entry["full_image"])) == SCENE_SIZE
    # The person's own picture is the face of every entry of that person.
    assert await fetch(session, entry["initial_face_image"]) == face
    assert png_size(await fetch(session, entry["initial_full_image"])) == SCENE_SIZE
    assert emu.media_requests[0] == entry["face_image"].removeprefix(emu.api_url)
    assert len(emu.media_requests) == 4


async def test_one_face_per_person(session: aiohttp.ClientSession, emu: Emulator) -> None:
    """The same pid gives the same bytes, other pids and unknown persons other ones."""
    a1 = await emu.emit(result="exact", pid="11111111-aaaa-4aaa-8aaa-000000000001")
    a2 = await emu.emit(result="ha", pid="11111111-aaaa-4aaa-8aaa-000000000001")
    b = await emu.emit(result="exact", pid="22222222-bbbb-4bbb-8bbb-000000000002")
    n1 = await emu.emit(result="nm")
    n2 = await emu.emit(result="det")
    assert n1["pid"] is None and n2["initial_face_image"] == n2["face_image"]
    faces = [await fetch(session, e["face_image"]) for e in (a1, a2, b, n1, n2)]
    assert faces[0] == faces[1]
    assert len({faces[0], faces[2], faces[3], faces[4]}) == 4
    # The full pictures differ per entry (the face moves in the frame), even for one person.
    assert await fetch(session, a1["full_image"]) != await fetch(session, a2["full_image"])


def test_pictures_are_deterministic_and_drawn_apart() -> None:
    """Drawing is a pure function of the key: stable bytes, known and unknown faces differ."""
    assert face_png("p-1") == face_png("p-1")
    assert face_png("p-1") != face_png("p-2")
    assert face_png("p-1") != face_png("p-1", known=False)
    assert scene_png("p-1", camera=1, where=5) == scene_png("p-1", camera=1, where=5)
    assert scene_png("p-1", camera=1) != scene_png("p-1", camera=2)


async def test_unknown_pictures_are_404(session: aiohttp.ClientSession) -> None:
    """An id never emitted, or no longer kept, a bad id or kind: 404, and logged."""
    async with Emulator(history_size=1, seed=3) as emu:
        first = await emu.emit()
        second = await emu.emit()
        await fetch(session, second["face_image"])
        await fetch(session, first["face_image"], status=404)  # pushed out of the history
        await fetch(session, emu.image_url(999), status=404)  # never emitted
        assert await fetch(session, emu.image_url(second["id"])) == await fetch(
            session, second["face_image"]
        )
        good = second["face_image"]
        key = good.split("/")[-2]
        for url in (
            good.replace("/face.png", "/side.png"),
            emu.media_url + "/v1/spaces/17/persons/a%2Fb/face.png",
            good.replace(key, key.upper()),  # no route: keys are lowercase hex
            good.replace(".png", ".jpg"),  # no route
        ):
            await fetch(session, url, status=404)
        assert len(emu.media_requests) == 5 + 2  # the last two match no route


def test_a_factory_alone_links_to_the_platform() -> None:
    """Without media_url the factory's links are the platform's JPEGs, as before; with it,
    the same entries (same seed, same draws) link there instead."""
    plain = EntryFactory(5).make()
    assert plain["face_image"].startswith("https://media.neuroio.com/")
    local = EntryFactory(5, media_url="http://127.0.0.1:40000/media").make()
    assert local["face_image"].startswith("http://127.0.0.1:40000/media/v1/spaces/17/entries/")
    # As long as the platform's (within the longer host), so entries keep their size.
    assert 0 <= len(local["face_image"]) - len(plain["face_image"]) <= 8
    assert {k: v for k, v in plain.items() if "image" not in k and k != "created"} == {
        k: v for k, v in local.items() if "image" not in k and k != "created"
    }
