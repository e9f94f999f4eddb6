"""What every page of the inbox's web view shares: its style, its live-update script, and
how values, times, durations and statuses are shown."""

from __future__ import annotations

import datetime
import json
from html import escape
from typing import Any
from urllib.parse import quote

from starlette.responses import HTMLResponse

from lemma_middleware.inbox.views import NO_THREAD, TraceRow

DETAIL_CHARS = 20_000
"""The most of one value the side panel shows."""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
a { color: #0b5cad; text-decoration: none; } a:hover { text-decoration: underline; }
table { border-collapse: collapse; width: 100%; } td, th { padding: .3em .6em; text-align: left;
  border-bottom: 1px solid #eee; vertical-align: top; } th { background: #f6f6f6; }
.error { color: #b00020; font-weight: 600; } .warning { color: #a15c00; }
.violation { background: #fff1f0; border-left: 4px solid #b00020; padding: .3em .6em;
  margin: .2em 0; } .muted { color: #777; } .io { white-space: pre-wrap; max-width: 60em; }
form.filters { display: flex; gap: .6em; flex-wrap: wrap; align-items: center; margin: .5em 0; }
form.filters input[type=text] { width: 10em; } form.filters input[name=q] { width: 18em; }
.pages { margin: .8em 0; display: flex; gap: 1em; }
.summary { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; }
.summary dt { color: #777; } .summary dd { margin: 0; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; padding: .5em;
  margin: .2em 0; max-height: 30em; overflow: auto; }
.turn-card { border: 1px solid #e4e4e4; border-radius: 6px; margin: .8em 0; padding: .6em .8em; }
.turn-card.ERROR { border-color: #d93025; }
.turn-head { display: flex; gap: 1em; align-items: baseline; color: #555; }
.said { margin: .4em 0; padding: .4em .7em; border-radius: 6px; white-space: pre-wrap; }
.said.user { background: #eef4ff; } .said.agent { background: #f3f3f3; }
.said .who { font-size: 12px; color: #777; display: block; }
.layout { display: flex; gap: 1em; align-items: flex-start; }
.waterfall { flex: 1; min-width: 0; }
.wf-row { display: grid; grid-template-columns: 26em 1fr; align-items: center;
  cursor: pointer; border-bottom: 1px solid #f1f1f1; }
.wf-row:hover, .wf-row.selected { background: #f0f6ff; }
.wf-label { display: flex; gap: .5em; overflow: hidden; white-space: nowrap; padding: .1em 0; }
.wf-label .name { overflow: hidden; text-overflow: ellipsis; }
.track { position: relative; height: 1.1em; background: #f7f7f7; }
.bar { position: absolute; top: 0; bottom: 0; background: #5b8def; min-width: 2px; }
.bar.ERROR { background: #d93025; } .bar.WARNING { background: #f29900; }
.ruler { cursor: default; border-bottom: 1px solid #ccc; } .ruler .track { background: none;
  height: 1.4em; } .tick { position: absolute; top: 0; bottom: 0; border-left: 1px solid #bbb;
  font-size: 11px; color: #666; padding-left: 2px; white-space: nowrap; }
#panel { width: 34em; position: sticky; top: 1em; max-height: 90vh; overflow: auto;
  border-left: 1px solid #ddd; padding-left: 1em; }
#panel h3 { margin: .2em 0; } #panel h4 { margin: .8em 0 .2em; }
.detail { display: none; }
"""

SCRIPT = """
let seen = null;
async function poll() {
  try {
    const state = await (await fetch('/api/state')).json();
    if (seen !== null && state.version !== seen) {
      const html = await (await fetch(location.href)).text();
      const fresh = new DOMParser().parseFromString(html, 'text/html');
      const panel = document.getElementById('panel');
      const open = panel && panel.dataset.span;
      document.getElementById('content').replaceWith(fresh.getElementById('content'));
      wire();
      if (open) { show(open); }
    }
    seen = state.version;
  } catch (e) {}
  setTimeout(poll, 1000);
}
function show(spanId) {
  const detail = document.getElementById('detail-' + spanId);
  const panel = document.getElementById('panel');
  if (!detail || !panel) { return; }
  panel.innerHTML = detail.innerHTML;
  panel.dataset.span = spanId;
  document.querySelectorAll('.wf-row.selected').forEach(r => r.classList.remove('selected'));
  const row = document.querySelector('.wf-row[data-span="' + spanId + '"]');
  if (row) { row.classList.add('selected'); }
}
function wire() {
  document.querySelectorAll('.wf-row[data-span]').forEach(row => {
    row.addEventListener('click', () => show(row.dataset.span));
  });
}
wire();
poll();
"""


def html_page(title: str, content: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)} · lemma inbox</title><style>{STYLE}</style></head><body>"
        f"<p class='muted'><a href='/'>lemma-middleware inbox</a></p>"
        f"<div id='content'>{content}</div><script>{SCRIPT}</script></body></html>",
        status_code=status_code,
    )


def short(value: str | None, width: int = 200) -> str:
    text = " ".join((value or "").split())
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def pretty(value: Any, limit: int = DETAIL_CHARS) -> str:
    """A recorded value for reading: JSON text indented, other text as it is; cut at ``limit``."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            text = value
        else:
            text = (
                json.dumps(parsed, indent=2, ensure_ascii=False)
                if not isinstance(parsed, str)
                else parsed
            )
    else:
        text = json.dumps(value, indent=2, ensure_ascii=False)
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit:,} more characters)"
    return escape(text)


def when(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def duration(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def status(row: TraceRow) -> str:
    parts = [str(row.http_status)] if row.http_status is not None else []
    if row.level != "DEFAULT" or not parts:
        parts.append(row.level)
    return f"<span class='status {escape(row.level.lower())}'>{escape(' '.join(parts))}</span>"


def thread_link(thread: str) -> str:
    shown = thread or NO_THREAD
    return f"<a class='thread' href='/threads/{quote(shown, safe='')}'>{escape(shown)}</a>"
