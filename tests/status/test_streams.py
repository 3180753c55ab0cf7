"""The streams section of the status page, rendered from snapshots (pure: no socket): the
streams not live first, cut past 50 rows, the summary line, reasons escaped, the fleet's line;
a single-stream bridge's page has no streams section."""

from __future__ import annotations

import re
from typing import Any

import pytest

from neuroio._status._render import fleet_line, page, streams_summary
from neuroio.bridge._snapshot import (
    STREAM_DOWN_ROWS,
    STREAM_ROWS,
    BridgeSnapshot,
    StreamSnapshot,
    page_state,
    streams_state,
)

NOW = 1_800_000_000.0


def snapshot(*streams: StreamSnapshot) -> BridgeSnapshot:
    return BridgeSnapshot(taken_at=NOW, streams=streams)


def stream(name: str, state: str = "live", **figures: Any) -> StreamSnapshot:
    return StreamSnapshot(name, state, state != "stopped", **figures)


def many(count: int, state: str = "live") -> list[StreamSnapshot]:
    return [stream(f"shop-{i:04d}", state) for i in range(count)]


def html_of(snap: BridgeSnapshot, health: dict[str, Any] | None = None) -> str:
    return page(page_state(snap, health or {}, {}, {}), [], csrf="x")


def row_names(html: str) -> list[str]:
    return re.findall(r'<tr class="stream \w+" data-stream="([^"]+)">', html)


def test_single_stream_bridge_has_no_streams_section() -> None:
    """Without named streams the state has no ``streams`` and the page no table of them."""
    state = page_state(BridgeSnapshot(taken_at=NOW, state="live"), {}, {}, {})
    assert "streams" not in state
    html = page(state, [], csrf="x")
    assert 'id="streams"' not in html and "streams-summary" not in html


def test_streams_not_live_come_first_worst_first_then_by_name() -> None:
    """Rejected, failed, backoff, then the other states not live, then the live ones."""
    snap = snapshot(
        stream("a-live"),
        stream("b-backoff", "backoff"),
        stream("c-connecting", "connecting"),
        stream("d-rejected", "rejected"),
        stream("e-failed", "failed"),
        stream("a-backoff", "backoff"),
        stream("f-stopped", "stopped"),
    )
    names = [r["name"] for r in streams_state(snap, {})["rows"]]
    assert names == [
        "d-rejected",
        "e-failed",
        "a-backoff",
        "b-backoff",
        "c-connecting",
        "f-stopped",  # not in a fleet: a stream stopped here is down
        "a-live",
    ]
    assert row_names(html_of(snap)) == names


@pytest.mark.parametrize("count", [1, STREAM_ROWS])
def test_up_to_fifty_streams_every_one_is_listed(count: int) -> None:
    """Up to :data:`STREAM_ROWS` streams, every one has its row and nothing is counted."""
    view = streams_state(snapshot(*many(count)), {})
    assert len(view["rows"]) == count
    assert view["more_live"] == view["more_down"] == view["more_held"] == 0
    assert 'class="more"' not in html_of(snapshot(*many(count)))


def test_a_thousand_streams_list_only_the_ones_not_live() -> None:
    """Past 50 rows the live streams are one counting row: the two down ones stay on top."""
    streams = many(998)
    streams.insert(500, stream("shop-rejected", "rejected"))
    streams.insert(3, stream("shop-backoff", "backoff"))
    snap = snapshot(*streams)
    view = streams_state(snap, {})
    assert [r["name"] for r in view["rows"]] == ["shop-rejected", "shop-backoff"]
    assert view["more_live"] == 998
    html = html_of(snap)
    assert row_names(html) == ["shop-rejected", "shop-backoff"]
    assert '<tr class="more"><td colspan="6">and 998 more live streams</td></tr>' in html
    assert len(html) < len(html_of(snapshot(stream("one")))) + 2000


def test_an_outage_of_every_stream_is_cut_too() -> None:
    """A thousand streams in backoff: :data:`STREAM_DOWN_ROWS` rows, the rest counted."""
    view = streams_state(snapshot(*many(1000, "backoff")), {})
    assert len(view["rows"]) == STREAM_DOWN_ROWS
    assert view["more_down"] == 1000 - STREAM_DOWN_ROWS
    html = page(page_state(snapshot(*many(1000, "backoff")), {}, {}, {}), [], csrf="x")
    assert f"and {1000 - STREAM_DOWN_ROWS:,} more streams not live" in html


def test_summary_counts_the_states_not_live_worst_first() -> None:
    """``998 of 1,000 streams live; 1 rejected; 1 backoff``, also in the page's heading."""
    snap = snapshot(*many(998), stream("x", "backoff"), stream("y", "rejected"))
    view = streams_state(snap, {})
    assert streams_summary(view) == "998 of 1,000 streams live; 1 rejected; 1 backoff"
    assert (
        '<span id="streams-summary" class="figure">'
        "998 of 1,000 streams live; 1 rejected; 1 backoff</span>"
    ) in html_of(snap)
    assert streams_summary(streams_state(snapshot(stream("only")), {})) == "1 of 1 stream live"


def test_row_figures_and_state_styling() -> None:
    """Each row: the state with the page's connection styling, events, reconnects summed,
    the last event's age."""
    snap = snapshot(
        stream(
            "shop-1",
            events=42,
            reconnects=(("timeout", 2), ("closed", 1)),
            last_event_at=NOW - 3.0,
        ),
        stream("shop-2", "backoff"),
    )
    html = html_of(snap)
    assert (
        '<tr class="stream live" data-stream="shop-1"><td class="name">shop-1</td>'
        '<td><span class="conn conn-live">live</span></td><td class="num">42</td>'
        '<td class="num">3</td><td class="num">3.0 s ago</td><td class="error"></td></tr>'
    ) in html
    assert '<span class="conn conn-backoff">backoff</span>' in html
    assert '<td class="num">none yet</td>' in html


def test_rejected_reason_is_shown_escaped() -> None:
    """A rejected stream's reason (from ``/healthz``'s ``streams``) is shown, its markup
    escaped; so are names."""
    reason = '<img src=x onerror="alert(1)">401 & refused'
    snap = snapshot(stream("shop-<b>", "rejected"), stream("shop-2", "failed"), stream("ok"))
    health = {
        "streams": {
            "shop-<b>": {"rejected": reason, "failed": None},
            "shop-2": {"rejected": None, "failed": "the spool <is> gone"},
        }
    }
    html = html_of(snap, health)
    assert "<img src=x" not in html and "<b>" not in html
    assert (
        '<td class="error">token rejected: &lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
        "401 &amp; refused</td>"
    ) in html
    assert 'data-stream="shop-&lt;b&gt;"' in html
    assert '<td class="error">the spool &lt;is&gt; gone</td>' in html


FLEET = {
    "worker": "w-1",
    "bucket": "neuroio-fleet",
    "ttl": 10.0,
    "connected": True,
    "workers": ["w-1", "w-2", "w-3"],
    "target": 1,
    "held": ["a"],
    "streams": {"a": "w-1", "b": "w-2", "c": None},
}


def test_fleet_shows_who_holds_each_stream_and_the_fleet_line() -> None:
    """In a fleet: the held streams "held by this worker", the others stopped (held by whom
    when known), sorted after the live ones; the fleet's status in one line."""
    snap = snapshot(stream("b", "stopped"), stream("c", "stopped"), stream("a"))
    html = html_of(snap, {"fleet": FLEET})
    assert row_names(html) == ["a", "b", "c"]
    assert '<td class="holder">held by this worker</td>' in html
    assert '<tr class="stream away" data-stream="b">' in html
    assert '<td class="holder">stopped (held by w-2)</td>' in html
    assert '<td class="holder">stopped</td>' in html
    assert (
        '<p id="fleet" class="note">worker w-1 of 3 live workers (w-1, w-2, w-3); '
        "holds 1 stream (its share: 1)</p>"
    ) in html
    assert "<th>holder</th>" in html
    assert "<th>holder</th>" not in html_of(snap)  # not in a fleet: no such column


def test_fleet_of_a_thousand_streams_lists_only_those_needing_a_look() -> None:
    """Past 50 rows in a fleet, live streams and those held elsewhere are counted."""
    streams = many(300) + [stream(f"other-{i:03d}", "stopped") for i in range(699)]
    streams.append(stream("shop-down", "backoff"))
    html = html_of(snapshot(*streams), {"fleet": FLEET})
    assert row_names(html) == ["shop-down"]
    assert "and 300 more live streams" in html
    assert "and 699 more held by other workers" in html
    assert '<td colspan="7">' in html


def test_fleet_line_with_many_workers_counts_them_and_says_nats_is_lost() -> None:
    """Eleven workers or more are counted, not named; a lost NATS connection is said."""
    fleet = {"worker": "w-0", "workers": [f"w-{i}" for i in range(12)], "connected": False}
    view = streams_state(snapshot(stream("a")), {"fleet": fleet})
    assert fleet_line(view["fleet"]) == "worker w-0 of 12 live workers; NATS connection lost"
