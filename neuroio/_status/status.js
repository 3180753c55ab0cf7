// The status page, kept live: server-sent events from /api/events replace what the server
// rendered, with the same markup (see _render.py). No library, no build step.
"use strict";
(function () {
  const MAX_CARDS = 50;
  const RESULTS = ["exact", "ha", "new", "reinit", "junk", "nm", "det"];
  const CHART_W = 600, CHART_H = 120;
  const csrf = document.querySelector('meta[name="neuroio-csrf"]').content;
  const $ = (id) => document.getElementById(id);
  let events = [];   // summaries, oldest first, at most MAX_CARDS
  let canRetry = false;

  function esc(value) {
    return String(value).replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }

  function duration(s) {
    if (s === null || s === undefined) return "-";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    let m = Math.floor(s / 60); const sec = Math.floor(s) % 60;
    if (m < 60) return m + "m " + String(sec).padStart(2, "0") + "s";
    const h = Math.floor(m / 60); m = m % 60;
    if (h < 48) return h + "h " + String(m).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d " + String(h % 24).padStart(2, "0") + "h";
  }

  function clock(created) {
    if (!created) return "-";
    const t = new Date(created);
    if (isNaN(t.getTime())) return created.slice(0, 19);
    return t.toISOString().slice(11, 19) + " UTC";
  }

  function setText(id, text) { const el = $(id); if (el) el.textContent = text; }

  function renderState(s) {
    const conn = $("connection");
    conn.textContent = s.connection;
    conn.className = "conn conn-" + s.connection;
    const health = $("health");
    health.textContent = s.healthy ? "healthy" : "unhealthy";
    health.className = "health " + (s.healthy ? "ok" : "failing");
    setText("uptime", duration(s.uptime));
    setText("rtt", duration(s.rtt));
    setText("last-event", s.last_event_age === null ? "none yet" : duration(s.last_event_age) + " ago");
    setText("received", String(s.received));
    if (s.spool) {
      setText("spool", s.spool.depth + " held");
      setText("dead-letters", String(s.spool.dead_letters));
    }
    $("problems").innerHTML = (s.problems || []).map((p) => "<li>" + esc(p) + "</li>").join("");
    renderChart(s.rates || []);
    canRetry = !!s.can_retry;
    if (s.sinks && $("sinks")) {
      $("sinks").tBodies[0].innerHTML = s.sinks.map(sinkRow).join("");
    }
    if (s.streams && $("streams")) renderStreams(s.streams);
  }

  // The streams come ordered and cut by the server (a thousand streams: a few rows).
  function count(n) { return Number(n).toLocaleString("en-US"); }
  function plural(n, one, many) { return n === 1 ? one : many; }

  function streamsSummary(v) {
    const parts = [count(v.live) + " of " + count(v.total) + " " +
      plural(v.total, "stream", "streams") + " live"];
    for (const [state, n] of v.counts || []) parts.push(count(n) + " " + state);
    return parts.join("; ");
  }

  function fleetLine(f) {
    const workers = f.workers || [];
    const names = workers.length > 0 && workers.length <= 10 ? " (" + workers.join(", ") + ")" : "";
    let text = "worker " + f.worker + " of " + count(workers.length) + " live " +
      plural(workers.length, "worker", "workers") + names;
    if (f.held !== null && f.held !== undefined) {
      text += "; holds " + count(f.held) + " " + plural(f.held, "stream", "streams");
      if (f.target !== null && f.target !== undefined) text += " (its share: " + count(f.target) + ")";
    }
    if (f.connected === false) text += "; NATS connection lost";
    return text;
  }

  function streamRow(r, fleet) {
    const state = r.state || "idle";
    let holder = "";
    if (fleet) {
      const held = r.held ? "held by this worker"
        : r.holder ? "stopped (held by " + r.holder + ")" : "stopped";
      holder = '<td class="holder">' + esc(held) + "</td>";
    }
    const age = r.last_event_age;
    const kind = state === "live" ? "live" : fleet && !r.held ? "away" : "down";
    return '<tr class="stream ' + kind + '" data-stream="' +
      esc(r.name) + '"><td class="name">' + esc(r.name) + "</td>" +
      '<td><span class="conn conn-' + esc(state) + '">' + esc(state) + "</span></td>" + holder +
      '<td class="num">' + esc(r.events) + "</td>" +
      '<td class="num">' + esc(r.reconnects) + "</td>" +
      '<td class="num">' + (age === null || age === undefined ? "none yet" : esc(duration(age)) + " ago") +
      "</td>" + '<td class="error">' + esc(r.reason || "") + "</td></tr>";
  }

  function moreRows(v, fleet) {
    const rows = [];
    if (v.more_down) rows.push("and " + count(v.more_down) + " more " +
      plural(v.more_down, "stream", "streams") + " not live");
    if (v.more_live) rows.push("and " + count(v.more_live) + " more live " +
      plural(v.more_live, "stream", "streams"));
    if (v.more_held) rows.push("and " + count(v.more_held) + " more held by other workers");
    return rows.map((t) => '<tr class="more"><td colspan="' + (fleet ? 7 : 6) + '">' + esc(t) +
      "</td></tr>").join("");
  }

  function renderStreams(v) {
    const fleet = !!v.fleet;
    setText("streams-summary", streamsSummary(v));
    if (fleet) setText("fleet", fleetLine(v.fleet));
    $("streams").tBodies[0].innerHTML =
      (v.rows || []).map((r) => streamRow(r, fleet)).join("") + moreRows(v, fleet);
  }

  function renderChart(rates) {
    const top = Math.max(1, ...rates);
    const step = CHART_W / Math.max(1, rates.length - 1);
    const points = rates.map((r, i) =>
      (i * step).toFixed(1) + "," + (CHART_H - (r / top) * (CHART_H - 4)).toFixed(1));
    $("chart-line").setAttribute("points", points.join(" "));
    setText("rate-top", top.toFixed(0));
    setText("rate-now", (rates.length ? rates[rates.length - 1] : 0).toFixed(1));
    const minutes = rates.length ? Math.max(1, Math.round(rates.length / 60)) : 0;
    setText("rate-span", minutes ? "last " + minutes + " min" : "");
  }

  function sinkRow(k) {
    const failing = (k.failing_for || 0) > 0;
    let since = "-";
    if (failing && k.failing_since !== null && k.failing_since !== undefined) {
      since = new Date(k.failing_since * 1000).toISOString().slice(11, 19) + " UTC (" +
        duration(k.failing_for) + ")";
    }
    const dead = k.dead_letters || 0;
    const disabled = canRetry && dead ? "" : " disabled";
    return '<tr class="sink ' + (failing ? "failing" : "ok") + '" data-sink="' + esc(k.name) + '">' +
      '<td class="name">' + esc(k.name) + "</td>" +
      '<td class="num">' + esc(k.delivered) + "</td>" +
      '<td class="num">' + esc(k.lag) + "</td>" +
      '<td class="num">' + esc(duration(k.lag_seconds || 0)) + "</td>" +
      "<td>" + esc(since) + "</td>" +
      '<td class="error">' + esc(k.last_error || "-") + "</td>" +
      '<td class="num' + (dead ? " dead" : "") + '">' + dead + ' <button type="button" class="retry" data-sink="' +
      esc(k.name) + '"' + disabled + ">re-drive</button></td></tr>";
  }

  function card(e) {
    const result = e.result || "?";
    const css = RESULTS.includes(result) ? result : "other";
    const camera = e.camera || "?";
    const picture = e.face && /^https?:\/\//i.test(e.face)
      ? '<img class="face" src="' + esc(e.face) + '" alt="face of event ' + esc(e.id) +
        '" loading="lazy" referrerpolicy="no-referrer" width="96" height="96">'
      : '<div class="face none">no image</div>';
    return '<article class="card" data-result="' + esc(result) + '" data-camera="' + esc(camera) +
      '" data-id="' + esc(e.id) + '">' + picture + '<div class="facts">' +
      '<span class="badge r-' + css + '">' + esc(result) + "</span>" +
      '<span class="conf">' + (e.confidence === null ? "-" : e.confidence.toFixed(1)) + "</span>" +
      '<span class="camera">' + esc(camera) + "</span>" +
      '<span class="time">' + esc(clock(e.created)) + "</span>" +
      '<span class="pid">' + esc(e.pid || "-") + "</span>" +
      '<span class="id">#' + esc(e.id) + "</span></div></article>";
  }

  function renderCards() {
    $("cards").innerHTML = events.slice().reverse().map(card).join("");
    const select = $("filter-camera");
    const chosen = select.value;
    const cameras = [...new Set(events.map((e) => e.camera || "?"))].sort();
    if (chosen && !cameras.includes(chosen)) cameras.push(chosen);
    select.innerHTML = '<option value="">all</option>' +
      cameras.map((c) => '<option value="' + esc(c) + '">' + esc(c) + "</option>").join("");
    select.value = chosen;
    applyFilter();
  }

  function applyFilter() {
    const result = $("filter-result").value, camera = $("filter-camera").value;
    for (const el of $("cards").children) {
      const shown = (!result || el.dataset.result === result) &&
        (!camera || el.dataset.camera === camera);
      el.hidden = !shown;
    }
  }

  function addEvents(update) {
    if (update.reset) events = [];
    events = events.concat(update.events).slice(-MAX_CARDS);
    renderCards();
  }

  async function retry(sink) {
    const out = $("retry-result");
    out.textContent = "re-driving the dead letters of " + sink + "...";
    try {
      const answer = await fetch("/api/deadletters/retry?sink=" + encodeURIComponent(sink), {
        method: "POST", headers: { "X-NeuroIO-CSRF": csrf }, credentials: "same-origin",
      });
      if (answer.ok) {
        const body = await answer.json();
        out.textContent = body.retried + " dead letters of " + sink + " sent again";
      } else {
        out.textContent = "re-drive refused: " + answer.status + " " + (await answer.text());
      }
    } catch (err) {
      out.textContent = "re-drive failed: " + err;
    }
  }

  function connect() {
    const live = $("live");
    const source = new EventSource("/api/events");
    source.onopen = () => { live.textContent = "live"; live.className = "live-dot on"; };
    source.onerror = () => { live.textContent = "reconnecting"; live.className = "live-dot off"; };
    source.onmessage = (message) => {
      const update = JSON.parse(message.data);
      if (update.state) renderState(update.state);
      if (update.events) addEvents(update);
    };
  }

  for (const el of document.querySelectorAll(".noscript-hide")) el.hidden = true;
  $("filter-result").addEventListener("change", applyFilter);
  $("filter-camera").addEventListener("change", applyFilter);
  const table = $("sinks");
  if (table) {
    table.addEventListener("click", (ev) => {
      const button = ev.target.closest("button.retry");
      if (button && !button.disabled) retry(button.dataset.sink);
    });
  }
  connect();
})();
