"""The connection's logic with no I/O: no asyncio, no aiohttp, no clock of its own.

- :mod:`.frames`: encode AUTH and PING, classify and parse what the server sends.
- :mod:`.session`: one connection's verdicts (accepted, rejected, lost and why), and the
  silent rejections that span connections.
- :mod:`.heartbeat`: when to PING and when a silent connection is dead, from a given ``now``.
- :mod:`.backoff`: the reconnect delays.
- :mod:`.gaps`: where gap recovery starts, which ids are trusted, duplicates and limits.

The listener's connection (``neuroio._connection``) feeds these what happened on the socket
and acts on their answers; everything here is tested with plain synchronous functions.
"""
