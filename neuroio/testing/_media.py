"""The emulator's media side: the face and full images its entries link to.

The platform's entries link to pictures in its storage; the emulator's link to itself, so a
page or an image sink can show and fetch faces with no network::

    GET /media/v1/spaces/<space>/entries/<YYYY/MM/DD>/<key>/face.png   the entry's face
    GET /media/v1/spaces/<space>/entries/<YYYY/MM/DD>/<key>/full.png   its camera frame
    GET /media/v1/spaces/<space>/persons/<pid>/face.png                a person's face
    GET /media/v1/spaces/<space>/persons/<pid>/full.png                a frame with it

laid out like the platform's links and as long (so entries keep their size), with ``.png``.
The key's first 16 hex digits are the entry id (:func:`._entries.entry_image_url`); the entry
is looked up in the REST history, so an id never emitted (or no longer kept) is 404.
Pictures are drawn on the first request (:mod:`._faces`) and cached, bounded, per person: one
``pid`` always has the same face, an entry without one (``nm``, ``det``) a grey face of its
own. No token is needed, as for the platform's media links.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from aiohttp import web

from ._entries import entry_image_url, person_image_url
from ._faces import face_png, scene_png
from ._rest import History, Stored

__all__ = ["MEDIA_PREFIX", "MediaSide", "entry_image_url", "person_image_url"]

MEDIA_PREFIX = "/media"
"""Where the pictures are served, under the emulator's ``api_url``."""

_KINDS = ("face", "full")
# A person id as the platform writes it (a UUID), or anything close enough in tests.
_PID = re.compile(r"[0-9A-Za-z-]{1,64}\Z")
_CACHE_FACES = 1024
_CACHE_SCENES = 256
_HEADERS = {"Cache-Control": "public, max-age=86400"}


@functools.lru_cache(maxsize=_CACHE_FACES)
def _face(key: str, known: bool) -> bytes:
    return face_png(key, known=known)


@functools.lru_cache(maxsize=_CACHE_SCENES)
def _scene(key: str, known: bool, camera: int, where: int) -> bytes:
    return scene_png(key, known=known, camera=camera, where=where)


class MediaSide:
    """Serves the pictures of the entries in ``history``.

    Args:
        history: the emulator's emitted entries.
        notify: called after every request is logged (it wakes the emulator's waiters).
        find: looks an entry up by id; ``None``: in ``history`` (an emulator serving several
            spaces looks in each space's).
    """

    def __init__(
        self,
        history: History,
        *,
        notify: Callable[[], None],
        find: Callable[[int], Stored | None] | None = None,
    ) -> None:
        self._find: Callable[[int], Stored | None] = find or history.find
        self._notify = notify
        self.requests: list[str] = []
        """The path of every media request, in order (404s too)."""

    def add_routes(self, app: web.Application) -> None:
        """Route ``/media/...`` of ``app`` here."""
        space = MEDIA_PREFIX + r"/v1/spaces/{space:\d{1,12}}"
        day = r"{year:\d{4}}/{month:\d{2}}/{day:\d{2}}"
        app.router.add_get(
            space + "/entries/" + day + "/{key:[0-9a-f]{32}}/{kind}.png", self._entry
        )
        app.router.add_get(space + "/persons/{pid}/{kind}.png", self._person)

    def _logged(self, request: web.Request) -> str:
        self.requests.append(request.path)
        self._notify()
        kind = request.match_info["kind"]
        if kind not in _KINDS:
            raise web.HTTPNotFound(text="no such picture")
        return kind

    async def _entry(self, request: web.Request) -> web.Response:
        kind = self._logged(request)
        entry_id = int(request.match_info["key"][:16], 16)
        stored = self._find(entry_id)
        if stored is None:
            raise web.HTTPNotFound(text=f"no entry {entry_id} in the history")
        pid = stored.pid
        known = isinstance(pid, str) and bool(pid)
        key = pid if known else f"entry-{stored.id}"
        assert isinstance(key, str)
        if kind == "face":
            body = _face(key, known)
        else:
            camera = stored.source_id if isinstance(stored.source_id, int) else 0
            body = _scene(key, known, camera, stored.id)
        return web.Response(body=body, content_type="image/png", headers=_HEADERS)

    async def _person(self, request: web.Request) -> web.Response:
        kind = self._logged(request)
        pid = request.match_info["pid"]
        if not _PID.match(pid):
            raise web.HTTPNotFound(text="not a person id")
        body = _face(pid, True) if kind == "face" else _scene(pid, True, 0, 0)
        return web.Response(body=body, content_type="image/png", headers=_HEADERS)
