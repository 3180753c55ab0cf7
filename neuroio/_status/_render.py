"""The status page's HTML, rendered on the server from a state (pure: no I/O).

The same page works without JavaScript: everything it shows is in this HTML; the script
(``status.js``) only replaces parts of it as updates arrive, with the same markup.

The state's keys (all optional but ``connection``): ``title``, ``connection`` (the listener's
state: ``live``, ``backoff``, ...), ``healthy``, ``problems`` (list of str), ``uptime``,
``rtt`` and ``last_event_age`` (seconds or ``None``), ``received``, ``rates`` (events per
second, one a second, oldest first), ``spool`` (``{"depth", "bytes", "dead_letters"}``) and
``sinks``: rows of ``name``, ``delivered``, ``lag``, ``lag_seconds``, ``failing_for``,
``failing_since`` (epoch seconds or ``None``), ``last_error``, ``dead_letters``. A bridge of
named streams adds ``streams`` (see :func:`neuroio.bridge._snapshot.streams_state`: the rows
already ordered and cut, so the page stays small with a thousand streams); without it the page
has no streams section.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

__all__ = [
    "RESULT_CLASSES",
    "chart_points",
    "fleet_line",
    "more_rows",
    "page",
    "stream_row",
    "streams_summary",
    "summarize",
]

RESULT_CLASSES = ("exact", "ha", "new", "reinit", "junk", "nm", "det")
"""Results with a colour of their own (as in the terminal's pretty view); others are grey."""

CHART_WIDTH = 600
CHART_HEIGHT = 120


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _camera(source: Any) -> str | None:
    if isinstance(source, dict):
        name = _text(source.get("name"))
        if name is not None:
            return name
        if isinstance(source.get("id"), (int, str)) and not isinstance(source.get("id"), bool):
            return f"source {source['id']}"
    return None


def _image(value: Any) -> str | None:
    """An image URL the page may show: http(s) only (never ``javascript:`` and the like)."""
    url = _text(value)
    if url is None or not url.lower().startswith(("http://", "https://")):
        return None
    return url


def summarize(event: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields of an event a card shows (JSON-able; missing or odd fields: ``None``)."""
    data = event.get("data")
    if not isinstance(data, dict):
        data = {}
    event_id = event.get("id")
    return {
        "id": event_id if isinstance(event_id, int) and not isinstance(event_id, bool) else None,
        "result": _text(data.get("result")),
        "confidence": _number(data.get("confidence")),
        "camera": _camera(data.get("source")),
        "created": _text(data.get("created")),
        "pid": _text(data.get("pid")),
        "face": _image(data.get("face_image")),
    }


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 04s``, ``5.2 s``, ``120 ms``; ``-`` for ``None``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24:02d}h"


def _clock(created: str | None) -> str:
    if created is None:
        return "-"
    try:
        moment = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return created[:19]
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%H:%M:%S UTC")


def chart_points(rates: Sequence[float]) -> tuple[str, float]:
    """The SVG polyline points of ``rates`` and the chart's top value (the same as the
    script draws)."""
    top = max([1.0, *rates])
    if not rates:
        return "", top
    step = CHART_WIDTH / max(1, len(rates) - 1)
    points = " ".join(
        f"{i * step:.1f},{CHART_HEIGHT - (r / top) * (CHART_HEIGHT - 4):.1f}"
        for i, r in enumerate(rates)
    )
    return points, top


def _overview(state: Mapping[str, Any]) -> str:
    connection = str(state.get("connection", "idle"))
    spool = state.get("spool") or {}
    items = [
        ("Connection", f'<span id="connection" class="conn conn-{_e(connection)}">'
         f"{_e(connection)}</span>"),
        ("Uptime", f'<span id="uptime">{_e(duration(state.get("uptime")))}</span>'),
        ("Last PONG round trip", f'<span id="rtt">{_e(duration(state.get("rtt")))}</span>'),
        ("Last event", f'<span id="last-event">{_last_event(state)}</span>'),
        ("Events received", f'<span id="received">{_e(state.get("received", 0))}</span>'),
    ]  # fmt: skip
    if spool:
        items.append(("Spool", f'<span id="spool">{_e(spool.get("depth", 0))} held</span>'))
        items.append(
            ("Dead letters", f'<span id="dead-letters">{_e(spool.get("dead_letters", 0))}</span>')
        )
    cells = "".join(f"<div><dt>{_e(k)}</dt><dd>{v}</dd></div>" for k, v in items)
    return f'<dl class="overview">{cells}</dl>'


def _last_event(state: Mapping[str, Any]) -> str:
    age = state.get("last_event_age")
    return "none yet" if age is None else f"{_e(duration(age))} ago"


def _problems(state: Mapping[str, Any]) -> str:
    problems = state.get("problems") or []
    items = "".join(f"<li>{_e(p)}</li>" for p in problems)
    return f'<ul id="problems" class="problems">{items}</ul>'


def _chart(state: Mapping[str, Any]) -> str:
    rates = state.get("rates") or []
    points, top = chart_points(rates)
    now = rates[-1] if rates else 0.0
    minutes = max(1, round(len(rates) / 60)) if rates else 0
    return (
        '<section class="rate"><h2>Events per second '
        f'<span id="rate-now" class="figure">{now:.1f}</span>'
        f'<span id="rate-span" class="note">{f"last {minutes} min" if minutes else ""}'
        "</span></h2>"
        f'<svg id="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'preserveAspectRatio="none" role="img" aria-label="events per second">'
        f'<polyline id="chart-line" points="{points}"/></svg>'
        f'<div class="note">top of the chart: <span id="rate-top">{top:.0f}</span>/s</div>'
        "</section>"
    )


def sink_row(sink: Mapping[str, Any], can_retry: bool) -> str:
    """One ``<tr>`` of the sinks table (the script renders the same)."""
    failing = (sink.get("failing_for") or 0) > 0
    since = sink.get("failing_since")
    since_text = (
        datetime.datetime.fromtimestamp(since, datetime.timezone.utc).strftime("%H:%M:%S UTC")
        + f" ({duration(sink.get('failing_for'))})"
        if failing and since is not None
        else "-"
    )
    dead = int(sink.get("dead_letters") or 0)
    name = str(sink.get("name", ""))
    button = (
        f'<button type="button" class="retry" data-sink="{_e(name)}"'
        f"{'' if can_retry and dead else ' disabled'}>re-drive</button>"
    )
    return (
        f'<tr class="sink {"failing" if failing else "ok"}" data-sink="{_e(name)}">'
        f'<td class="name">{_e(name)}</td>'
        f'<td class="num">{_e(sink.get("delivered", 0))}</td>'
        f'<td class="num">{_e(sink.get("lag", 0))}</td>'
        f'<td class="num">{_e(duration(sink.get("lag_seconds") or 0.0))}</td>'
        f"<td>{_e(since_text)}</td>"
        f'<td class="error">{_e(sink.get("last_error") or "-")}</td>'
        f'<td class="num{" dead" if dead else ""}">{dead} {button}</td>'
        "</tr>"
    )


def _sinks(state: Mapping[str, Any]) -> str:
    sinks = state.get("sinks")
    if sinks is None:
        return ""
    can_retry = bool(state.get("can_retry"))
    rows = "".join(sink_row(s, can_retry) for s in sinks)
    return (
        '<section class="sinks"><h2>Routes and sinks</h2><table id="sinks">'
        "<thead><tr><th>route / sink</th><th>delivered</th><th>lag (events)</th>"
        "<th>lag (time)</th><th>failing since</th><th>last error</th>"
        "<th>dead letters</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        '<p id="retry-result" class="note" role="status"></p></section>'
    )


def _count(value: Any) -> str:
    """``1,000``: the thousands marked, as the script's ``toLocaleString("en-US")``."""
    return f"{int(value):,}"


def streams_summary(streams: Mapping[str, Any]) -> str:
    """``998 of 1,000 streams live; 1 rejected; 1 backoff`` (the script renders the same)."""
    total = int(streams.get("total", 0))
    parts = [f"{_count(streams.get('live', 0))} of {_count(total)} "
             f"{'stream' if total == 1 else 'streams'} live"]  # fmt: skip
    parts += [f"{_count(count)} {state}" for state, count in streams.get("counts") or []]
    return "; ".join(parts)


def fleet_line(fleet: Mapping[str, Any]) -> str:
    """``worker w-1 of 3 live workers (w-1, w-2, w-3); holds 20 streams (its share: 20)``;
    more than 10 workers are counted, not named (the script renders the same)."""
    workers = list(fleet.get("workers") or [])
    names = f" ({', '.join(workers)})" if 0 < len(workers) <= 10 else ""
    text = (
        f"worker {fleet.get('worker')} of {_count(len(workers))} live "
        f"{'worker' if len(workers) == 1 else 'workers'}{names}"
    )
    held = fleet.get("held")
    if held is not None:
        text += f"; holds {_count(held)} {'stream' if held == 1 else 'streams'}"
        if fleet.get("target") is not None:
            text += f" (its share: {_count(fleet['target'])})"
    if not fleet.get("connected", True):
        text += "; NATS connection lost"
    return text


def stream_row(row: Mapping[str, Any], fleet: bool) -> str:
    """One ``<tr>`` of the streams table (the script renders the same); in a ``fleet`` with
    the column of who holds the stream."""
    state = str(row.get("state", "idle"))
    age = row.get("last_event_age")
    holder = ""
    if fleet:
        if row.get("held"):
            held = "held by this worker"
        elif row.get("holder"):
            held = f"stopped (held by {row['holder']})"
        else:
            held = "stopped"
        holder = f'<td class="holder">{_e(held)}</td>'
    # A stream another worker holds is not down: grey, not red.
    kind = "live" if state == "live" else "away" if fleet and not row.get("held") else "down"
    return (
        f'<tr class="stream {kind}" '
        f'data-stream="{_e(row.get("name", ""))}">'
        f'<td class="name">{_e(row.get("name", ""))}</td>'
        f'<td><span class="conn conn-{_e(state)}">{_e(state)}</span></td>{holder}'
        f'<td class="num">{_e(row.get("events", 0))}</td>'
        f'<td class="num">{_e(row.get("reconnects", 0))}</td>'
        f'<td class="num">{"none yet" if age is None else _e(duration(age)) + " ago"}</td>'
        f'<td class="error">{_e(row.get("reason") or "")}</td>'
        "</tr>"
    )


def more_rows(streams: Mapping[str, Any], fleet: bool) -> str:
    """The rows counting the streams left out of the table (the script renders the same)."""
    columns = 7 if fleet else 6
    rows = []
    down, live, held = (int(streams.get(k) or 0) for k in ("more_down", "more_live", "more_held"))
    if down:
        rows.append(f"and {_count(down)} more {'stream' if down == 1 else 'streams'} not live")
    if live:
        rows.append(f"and {_count(live)} more live {'stream' if live == 1 else 'streams'}")
    if held:
        rows.append(f"and {_count(held)} more held by other workers")
    return "".join(f'<tr class="more"><td colspan="{columns}">{_e(r)}</td></tr>' for r in rows)


def _streams(state: Mapping[str, Any]) -> str:
    streams = state.get("streams")
    if not isinstance(streams, Mapping):
        return ""
    fleet = streams.get("fleet")
    in_fleet = isinstance(fleet, Mapping)
    rows = "".join(stream_row(r, in_fleet) for r in streams.get("rows") or [])
    line = (
        f'<p id="fleet" class="note">{_e(fleet_line(fleet))}</p>'
        if isinstance(fleet, Mapping)
        else ""
    )
    return (
        '<section class="streams"><h2>Streams '
        f'<span id="streams-summary" class="figure">{_e(streams_summary(streams))}</span></h2>'
        f'{line}<table id="streams"><thead><tr><th>stream</th><th>state</th>'
        f"{'<th>holder</th>' if in_fleet else ''}<th>events</th><th>reconnects</th>"
        "<th>last event</th><th>reason</th></tr></thead>"
        f"<tbody>{rows}{more_rows(streams, in_fleet)}</tbody></table></section>"
    )


def card(event: Mapping[str, Any]) -> str:
    """One event card (the script renders the same)."""
    result = event.get("result") or "?"
    css = result if result in RESULT_CLASSES else "other"
    face = event.get("face")
    picture = (
        f'<img class="face" src="{_e(face)}" alt="face of event {_e(event.get("id"))}" '
        'loading="lazy" referrerpolicy="no-referrer" width="96" height="96">'
        if face
        else '<div class="face none">no image</div>'
    )
    confidence = event.get("confidence")
    camera = event.get("camera") or "?"
    return (
        f'<article class="card" data-result="{_e(result)}" data-camera="{_e(camera)}" '
        f'data-id="{_e(event.get("id"))}">{picture}<div class="facts">'
        f'<span class="badge r-{css}">{_e(result)}</span>'
        f'<span class="conf">{"-" if confidence is None else f"{confidence:.1f}"}</span>'
        f'<span class="camera">{_e(camera)}</span>'
        f'<span class="time">{_e(_clock(event.get("created")))}</span>'
        f'<span class="pid">{_e(event.get("pid") or "-")}</span>'
        f'<span class="id">#{_e(event.get("id"))}</span></div></article>'
    )


def _cards(events: Sequence[Mapping[str, Any]]) -> str:
    cards = "".join(card(e) for e in reversed(events))
    return (
        '<section class="events"><h2>Last events</h2>'
        '<div class="filters"><label>result <select id="filter-result">'
        '<option value="">all</option>'
        + "".join(f'<option value="{r}">{r}</option>' for r in RESULT_CLASSES)
        + '</select></label> <label>camera <select id="filter-camera">'
        '<option value="">all</option></select></label>'
        '<span class="note noscript-hide">filters need JavaScript</span></div>'
        f'<div id="cards" class="cards">{cards}</div></section>'
    )


def page(state: Mapping[str, Any], events: Sequence[Mapping[str, Any]], *, csrf: str) -> str:
    """The whole page for ``state`` and the last ``events`` (summaries, oldest first)."""
    title = str(state.get("title", "bridge"))
    healthy = bool(state.get("healthy"))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="neuroio-csrf" content="{_e(csrf)}">'
        f"<title>neuroio-events {_e(title)}</title>"
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/status.css"></head><body>'
        f'<header><h1>neuroio-events <span class="owner">{_e(title)}</span></h1>'
        f'<span id="health" class="health {"ok" if healthy else "failing"}">'
        f"{'healthy' if healthy else 'unhealthy'}</span>"
        '<span id="live" class="live-dot" title="live updates">static</span></header>'
        f"<main>{_overview(state)}{_problems(state)}{_streams(state)}{_chart(state)}{_sinks(state)}"
        f"{_cards(events)}</main>"
        '<script src="/static/status.js"></script></body></html>'
    )
