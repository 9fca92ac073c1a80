"""The inspector's page: one self-contained HTML document (no external assets).

It reads only the inspector's JSON API (relay/agent/inspector.py) and puts every
captured value into the page as text, never as markup: bodies and headers are whatever
a client sent.
"""

from typing import Final

__all__ = ["PAGE"]

PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>relay agent · inspector</title>
<style>
  body { font: 13px/1.4 system-ui, sans-serif; margin: 0; display: flex; height: 100vh; }
  #list { width: 46%; overflow: auto; border-right: 1px solid #ccc; }
  #detail { flex: 1; overflow: auto; padding: 8px 14px; }
  table { border-collapse: collapse; width: 100%; }
  td, th { padding: 3px 6px; text-align: left; white-space: nowrap; }
  th { position: sticky; top: 0; background: #f3f3f3; }
  tr.row { cursor: pointer; }
  tr.row:hover { background: #eef4ff; }
  tr.row.selected { background: #dbe8ff; }
  td.path { max-width: 22em; overflow: hidden; text-overflow: ellipsis; }
  .s2 { color: #11772b; } .s3 { color: #0b6e8a; } .s4 { color: #9a6700; } .s5 { color: #b3261e; }
  pre { background: #f7f7f7; padding: 6px; white-space: pre-wrap; word-break: break-all;
        max-height: 22em; overflow: auto; }
  .flag { color: #b3261e; font-weight: bold; }
  h2 { font-size: 15px; margin: 6px 0; } h3 { font-size: 13px; margin: 12px 0 4px; }
  button { font-size: 13px; padding: 3px 12px; }
  .muted { color: #777; }
</style>
</head>
<body>
<div id="list">
  <table>
    <thead><tr><th>time</th><th>tunnel</th><th>method</th><th>path</th><th>status</th>
    <th>ms</th><th>bytes</th></tr></thead>
    <tbody id="rows"></tbody>
  </table>
  <p id="empty" class="muted" style="padding: 8px">No requests yet.</p>
</div>
<div id="detail"><p class="muted">Select a request.</p></div>
<script>
"use strict";
let selected = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function statusClass(status) { return status ? "s" + String(status)[0] : ""; }

function bodyBlock(title, body, id) {
  const parts = [el("h3", {}, title, " ",
    el("span", {class: "muted"}, body.size + " bytes" +
      (body.encoding === "base64" ? ", binary (base64)" : "")))];
  if (body.truncated) {
    parts.push(el("div", {class: "flag", "data-flag": "truncated"},
      "truncated: only the first 64 KiB are kept"));
  }
  parts.push(el("pre", {id: id}, body.data));
  return parts;
}

function headerBlock(title, headers) {
  const text = headers.map(([k, v]) => k + ": " + v).join("\\n");
  return [el("h3", {}, title), el("pre", {}, text)];
}

async function refresh() {
  let data;
  try {
    const r = await fetch("/api/requests");
    data = await r.json();
  } catch (e) { return; }
  const rows = document.getElementById("rows");
  rows.replaceChildren();
  document.getElementById("empty").hidden = data.requests.length > 0;
  for (const q of data.requests) {
    const when = new Date(q.at * 1000).toLocaleTimeString();
    const status = q.finished ? (q.status || "—") : "…";
    const tr = el("tr", {class: "row" + (q.id === selected ? " selected" : ""),
                         "data-id": q.id},
      el("td", {}, when), el("td", {}, q.tunnel), el("td", {}, q.method),
      el("td", {class: "path", title: q.path}, q.path),
      el("td", {class: statusClass(q.status)}, status),
      el("td", {}, q.finished ? q.duration_ms.toFixed(1) : ""), el("td", {}, q.bytes));
    tr.addEventListener("click", () => show(q.id));
    rows.append(tr);
  }
}

async function show(id) {
  selected = id;
  const detail = document.getElementById("detail");
  const r = await fetch("/api/requests/" + id);
  if (!r.ok) {
    detail.replaceChildren(el("p", {class: "muted"}, "This request is no longer kept."));
    return;
  }
  const q = await r.json();
  const replay = el("button", {id: "replay"}, "Replay");
  replay.addEventListener("click", () => doReplay(id));
  detail.replaceChildren(
    el("h2", {id: "title"}, q.method + " " + q.path),
    el("div", {}, el("span", {id: "status", class: statusClass(q.status)},
      q.status ? String(q.status) : (q.error || "no answer yet")),
      " · " + q.duration_ms.toFixed(1) + " ms · " + q.bytes + " bytes · tunnel " + q.tunnel +
      " → " + q.upstream + (q.error ? " · " + q.error : "")),
    el("p", {}, replay, " ", el("span", {class: "muted"},
      "sends this request again to the local service (not through the relay)")),
    el("div", {id: "replay-result"}),
    ...headerBlock("Request headers", q.request_headers),
    ...bodyBlock("Request body", q.request_body, "request-body"),
    ...headerBlock("Response headers", q.response_headers),
    ...bodyBlock("Response body", q.response_body, "response-body"));
  refresh();
}

async function doReplay(id) {
  const out = document.getElementById("replay-result");
  out.replaceChildren(el("p", {class: "muted"}, "Replaying…"));
  const r = await fetch("/api/requests/" + id + "/replay", {method: "POST"});
  const a = await r.json();
  if (!r.ok) {
    out.replaceChildren(el("p", {class: "flag", id: "replay-error"}, a.error.message));
    return;
  }
  out.replaceChildren(
    el("h3", {}, "Replay answer: ",
      el("span", {id: "replay-status", class: statusClass(a.status)}, String(a.status)),
      el("span", {class: "muted"}, " · " + a.duration_ms.toFixed(1) + " ms")),
    ...headerBlock("Replay response headers", a.headers),
    ...bodyBlock("Replay response body", a.body, "replay-body"));
}

refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
