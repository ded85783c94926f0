"""The incident page: one self-contained HTML file that on-call opens on a laptop with no network.

`render(page)` turns the gathered incident (a plain dict) into HTML: no script, no external URL,
thumbnails inlined as PNG data URLs, plots as inline SVG. Labels, subgroup values, profile names,
ids, flags and trace values come from clients or operators, so every string of `page` is escaped,
and an id becomes an `id=`/`href=` only when it is a well-formed lookup id.
"""

from __future__ import annotations

import base64
import html
import json
import math
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from core.ids import is_lookup_id

# Sent as a header by the HTTP route too; the meta copy protects the file once it is saved.
CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                           "base-uri 'none'; form-action 'none'")
MAX_SERIES = 8  # flag lines in the plot; more are summed into "other" so the plot stays legible
PALETTE = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#2ca02c")
OTHER_COLOUR = "#7f7f7f"
GAP_POINTS = 5.0  # estimated vs realized accuracy further apart than this is highlighted
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1f2328;margin:0;background:#fff}
main{max-width:1200px;margin:0 auto;padding:12px 16px 40px}
h1{font-size:20px;margin:4px 0}h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #d0d7de}
h3{font-size:13px;margin:12px 0 4px}
.meta{display:flex;flex-wrap:wrap;gap:4px 18px;margin:0;color:#57606a}.meta b{color:#1f2328}
.muted{color:#6e7781}code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:2px 6px;text-align:right;vertical-align:middle}
th{background:#f6f8fa}td.l,th.l{text-align:left}td.gap{background:#ffd8d3;font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;list-style:none;padding:0;margin:2px 0}
.sw{display:inline-block;width:12px;height:8px;margin-right:4px}
.sheet{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:150px;border:1px solid #d0d7de;border-radius:4px;padding:4px;overflow-wrap:anywhere}
figure img{width:64px;height:64px;image-rendering:pixelated;display:block;border:1px solid #eee}
figcaption{font-size:11px;line-height:1.3}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.cm td{width:34px;min-width:34px;text-align:center}.cm td.diag{outline:2px solid #1a7f37;outline-offset:-2px}
details{margin:2px 0}details:target{outline:2px solid #0969da}
/* a link to a trace shows it (no script to set `open`); older browsers still open it by a click */
details:target::details-content{content-visibility:visible;display:block}
pre{background:#f6f8fa;padding:6px;overflow:auto;max-height:400px;margin:4px 0}
"""


def _e(value: Any) -> str:
    # "=" too: then no client text reads as `name=value` in the file, and a plain search of the
    # source for event-handler attributes (onerror=...) finds only real ones; browsers show "="
    return html.escape(str(value), quote=True).replace("=", "&#61;")


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{float(share) * 100:.1f}%"


def _count(n: int | None) -> str:
    return "-" if n is None else f"{int(n):,}"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _none(text: str = "none") -> str:
    return f'<p class="muted">{_e(text)}</p>'


def _header(page: Mapping[str, Any]) -> str:
    since, until = page.get("since"), page.get("until")
    minutes = f" ({(float(until) - float(since)) / 60:.0f} min)" if since is not None and until is not None else ""
    runbooks = (page.get("links") or {}).get("runbooks")
    items = [("service", page.get("service")), ("window", f"{_utc(since)} to {_utc(until)}{minutes}"),
             ("generated", _utc(page.get("generated_at"))), ("log mode", page.get("log_mode")),
             ("capture policy", page.get("capture_policy"))]
    # shown as text, never a link: the page must not point anywhere off the laptop
    items += [("runbooks", runbooks)] if runbooks else []
    meta = "".join(f"<span>{_e(k)}: <b>{_e('-' if v is None else v)}</b></span>" for k, v in items)
    return f"<header><h1>{_e(page.get('title') or 'incident')}</h1><p class=\"meta\">{meta}</p></header>"


def _alarms_now(alarms: Sequence[Mapping[str, Any]]) -> str:
    if not alarms:
        return _section("Alarms now", _none())
    items = "".join(f"<li><b>{_e(a.get('monitor'))}</b> {_e(a.get('statistic'))} "
                    f"<span class=\"muted\">{_e(a.get('where'))}</span></li>" for a in alarms)
    return _section("Alarms now", f"<ul>{items}</ul>")


def _top_series(series: Mapping[str, Sequence[int]], n: int) -> list[tuple[str, list[int]]]:
    """The busiest flags, each padded to n buckets; beyond MAX_SERIES the rest summed as "other"."""
    padded = sorted(((str(k), (list(v) + [0] * n)[:n]) for k, v in series.items()), key=lambda kv: (-sum(kv[1]), kv[0]))
    if len(padded) <= MAX_SERIES:
        return padded
    rest = padded[MAX_SERIES - 1:]
    return padded[:MAX_SERIES - 1] + [(f"other ({len(rest)} flags)", [sum(col) for col in zip(*(v for _, v in rest))])]


def _tick_minutes(span_minutes: float) -> float:
    return next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 240, 360, 720) if span_minutes / s <= 8), 1440)


def _round_up(top: float) -> float:
    """The y axis' top: a round count (1-6 or 8 times a power of ten), so its half reads well too."""
    scale = 10 ** math.floor(math.log10(top))
    return next(m * scale for m in (1, 2, 3, 4, 5, 6, 8, 10) if m * scale >= top)


def _timeline(page: Mapping[str, Any]) -> str:
    timeline = page.get("timeline") or {}
    answers = [int(a) for a in timeline.get("answers") or []]
    if not answers:
        return _section("Alarms over the window", _none("none: no answers in the window"))
    n, start, step = len(answers), float(timeline["start"]), float(timeline["bucket_seconds"])
    since = float(page.get("since") if page.get("since") is not None else start)
    lines = _top_series(timeline.get("series") or {}, n)
    top = _round_up(max([1, *answers, *(v for _, values in lines for v in values)]))
    w, h, left, right, upper, lower = 1160, 200, 44, 10, 8, 30
    x = lambda t: left + (w - left - right) * (t - start) / (n * step)  # noqa: E731
    y = lambda v: upper + (h - upper - lower) * (1 - v / top)  # noqa: E731
    centres, end = [start + (i + 0.5) * step for i in range(n)], start + n * step

    def points(values: Iterable[int]) -> str:
        return " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(centres, values))

    parts = [f'<svg width="100%" viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="answers and flagged answers per bucket" font-size="11" fill="#57606a">']
    for v in (0, top / 2, top):  # horizontal grid with its counts
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eaeef2"/>'
                     f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:,g}</text>')
    tick = _tick_minutes(n * step / 60)
    m = math.ceil((start - since) / (tick * 60)) * tick  # the first tick at or after the plot's start
    while since + m * 60 <= end:
        parts.append(f'<line x1="{x(since + m * 60):.1f}" x2="{x(since + m * 60):.1f}" y1="{h - lower}" '
                     f'y2="{h - lower + 4}" stroke="#57606a"/><text x="{x(since + m * 60):.1f}" '
                     f'y="{h - lower + 15}" text-anchor="middle">{m:g}</text>')
        m += tick
    parts.append(f'<text x="{w - right}" y="{h - 2}" text-anchor="end">minutes since {_e(_utc(since))}</text>')
    # the area runs edge to edge at the first and last buckets' heights: no ramp the data lacks
    parts.append(f'<polygon points="{x(start):.1f},{y(0):.1f} {x(start):.1f},{y(answers[0]):.1f} {points(answers)} '
                 f'{x(end):.1f},{y(answers[-1]):.1f} {x(end):.1f},{y(0):.1f}" fill="#c9daf0" stroke="#9ab6de">'
                 f'<title>answers</title></polygon>')
    summed = len(timeline.get("series") or {}) > MAX_SERIES
    colours = [OTHER_COLOUR if summed and i == MAX_SERIES - 1 else PALETTE[i] for i in range(len(lines))]
    for (name, values), colour in zip(lines, colours):
        parts.append(f'<polyline points="{points(values)}" fill="none" stroke="{colour}" stroke-width="1.6">'
                     f'<title>{_e(name)}</title></polyline>')
    parts.append("</svg>")
    legend = [("#c9daf0", "answers", sum(answers))] + [(c, name, sum(v)) for (name, v), c in zip(lines, colours)]
    items = "".join(f'<li><span class="sw" style="background:{c}"></span>{_e(name)} '
                    f'<span class="muted">({total:,})</span></li>' for c, name, total in legend)
    note = "" if lines else _none("no flagged answers")
    return _section("Alarms over the window", "".join(parts) + f'<ul class="legend">{items}</ul>{note}')


def _share_bars(live: float | None, training: float | None) -> str:
    width = lambda s: 0 if s is None else max(0.0, min(1.0, float(s))) * 100  # noqa: E731
    return (f'<svg width="100" height="14" role="img" aria-label="live {_e(_pct(live))}, training '
            f'{_e(_pct(training))}"><rect width="100" height="14" fill="#f6f8fa"/>'
            f'<rect y="1" height="5" width="{width(live):.1f}" fill="#0969da"/>'
            f'<rect y="8" height="5" width="{width(training):.1f}" fill="#8c959f"/></svg>')


def _groups(title: str, rows: Sequence[Mapping[str, Any]], score: bool = False) -> str:
    if not rows:
        return _section(title, _none())
    head = ("<tr><th class=l>name</th><th>answers</th><th>live share</th><th>training share</th>"
            "<th class=l>live / training</th><th>estimated acc.</th><th>realized acc.</th>"
            "<th>est. - real.</th><th>labelled</th>" + ("<th>score</th>" if score else "") + "</tr>")
    body = []
    for r in rows:
        est, real = r.get("estimated_accuracy"), r.get("realized_accuracy")
        gap = None if est is None or real is None else (float(est) - float(real)) * 100
        gap_cell = ("<td>-</td>" if gap is None else
                    f'<td{" class=gap" if abs(gap) > GAP_POINTS else ""}>{gap:+.1f} pts</td>')
        extra = f"<td>{'-' if r.get('score') is None else format(float(r['score']), '.3g')}</td>" if score else ""
        body.append(f"<tr><td class=l><code>{_e(r.get('name'))}</code></td><td>{_count(r.get('answers'))}</td>"
                    f"<td>{_pct(r.get('live_share'))}</td><td>{_pct(r.get('training_share'))}</td>"
                    f"<td class=l>{_share_bars(r.get('live_share'), r.get('training_share'))}</td>"
                    f"<td>{_pct(est)}</td><td>{_pct(real)}</td>{gap_cell}"
                    f"<td>{_count(r.get('labelled'))}</td>{extra}</tr>")
    key = ('<p class="muted"><span class="sw" style="background:#0969da"></span>live '
           '<span class="sw" style="background:#8c959f"></span>training; highlighted: estimated and '
           f'realized accuracy more than {GAP_POINTS:g} points apart</p>')
    return _section(title, f"<table>{head}{''.join(body)}</table>{key}")


def _request_id(request_id: str, traces: Mapping[str, Any]) -> str:
    if is_lookup_id(request_id) and request_id in traces:
        return f'<a href="#trace-{_e(request_id)}"><code>{_e(request_id)}</code></a>'
    return f"<code>{_e(request_id)}</code>"


def _figure(item: Mapping[str, Any], traces: Mapping[str, Any]) -> str:
    thumbnail, request_id = item.get("thumbnail"), str(item.get("request_id"))
    if isinstance(thumbnail, (bytes, bytearray)) and bytes(thumbnail).startswith(PNG_SIGNATURE):
        src = "data:image/png;base64," + base64.b64encode(bytes(thumbnail)).decode("ascii")
        image = f'<img src="{src}" alt="{_e(request_id)}" width="64" height="64">'
    else:
        image = '<p class="muted">no thumbnail</p>'
    predicted, truth = item.get("predicted"), item.get("truth")
    answer = '<span class="muted">abstained</span>' if predicted is None else f"<b>{_e(predicted)}</b>"
    if truth is None:
        label = '<span class="muted">no label yet</span>'
    else:
        verdict = "" if predicted is None else (' class="ok"' if truth == predicted else ' class="bad"')
        label = f"<span{verdict}>{_e(truth)}</span>"
    flags = ", ".join(_e(f) for f in item.get("flags") or []) or "no flags"
    return (f"<figure>{image}<figcaption>answer {answer}<br>truth {label}<br>{_request_id(request_id, traces)}"
            f'<br><span class="muted">{_e(item.get("model"))} · {_e(item.get("subgroup"))} · '
            f'region {_e(item.get("region") or "-")}<br>{flags}</span></figcaption></figure>')


def _sheets(sheets: Sequence[Mapping[str, Any]], traces: Mapping[str, Any]) -> str:
    if not sheets:
        return _section("Captured inputs", _none())
    body = "".join(f"<h3>{_e(s.get('title'))} <span class=\"muted\">({len(s.get('inputs') or [])})</span></h3>"
                   f'<div class="sheet">{"".join(_figure(i, traces) for i in s.get("inputs") or []) or _none()}</div>'
                   for s in sheets)
    return _section("Captured inputs", body)


def _confusion(confusion: Mapping[str, Any] | None) -> str:
    if not confusion or not confusion.get("counts"):
        return _section("Confusion matrix", _none())
    labels = [str(label) for label in confusion.get("labels") or []]
    cells = {(str(t), str(a)): int(n) for t, a, n in confusion["counts"]}
    # answers outside the label set (say "abstained") still get a row or column, after the labels
    rows = labels + sorted({t for t, _ in cells} - set(labels))
    cols = labels + sorted({a for _, a in cells} - set(labels))
    top = max(cells.values()) or 1
    body = []
    for t in rows:
        tds = []
        for a in cols:
            n, hue = cells.get((t, a), 0), "26,127,55" if t == a else "207,34,46"
            alpha = n / top
            text = "#fff" if alpha > 0.55 else "#1f2328"
            tds.append(f'<td{" class=diag" if t == a else ""} style="background:rgba({hue},{alpha:.2f});'
                       f'color:{text}" title="truth {_e(t)}, answered {_e(a)}: {n}">{n or ""}</td>')
        body.append(f"<tr><th class=l>{_e(t)}</th>{''.join(tds)}</tr>")
    head = "".join(f"<th>{_e(a)}</th>" for a in cols)
    note = ('<p class="muted">rows: true label; columns: answered; green diagonal: right answers, '
            'red: mistakes; darker is more</p>')
    return _section(f"Confusion matrix ({confusion.get('model') or '-'})",
                    f'<table class="cm"><tr><th class=l>truth \\ answered</th>{head}</tr>{"".join(body)}</table>{note}')


def _guardrails(history: Sequence[Mapping[str, Any]]) -> str:
    if not history:
        return _section("Guardrail history", _none())
    rows = "".join(f"<tr><td class=l>{_utc(g.get('ts'))}</td><td class=l>{_e(g.get('profile'))}</td>"
                   f"<td class=l><code>{_e(g.get('hash'))}</code></td><td class=l>{_e(g.get('source'))}</td>"
                   f"<td class=l>{_e(g.get('replica'))}</td></tr>" for g in history)
    head = "<tr><th class=l>time (UTC)</th><th class=l>profile</th><th class=l>hash</th><th class=l>source</th>" \
           "<th class=l>replica</th></tr>"
    return _section("Guardrail history", f"<table>{head}{rows}</table>")


def _traces(traces: Mapping[str, Any]) -> str:
    if not traces:
        return _section("Traces", _none())
    parts = []
    for request_id, trace in traces.items():
        anchor = f' id="trace-{_e(request_id)}"' if is_lookup_id(request_id) else ""
        text = json.dumps(trace, indent=2, sort_keys=True, default=str)
        parts.append(f"<details{anchor}><summary><code>{_e(request_id)}</code></summary>"
                     f"<pre>{_e(text)}</pre></details>")
    return _section("Traces", "".join(parts))


def render(page: Mapping[str, Any]) -> str:
    """The incident page as one HTML document (see the module docstring)."""
    traces = page.get("traces") or {}
    body = "".join((
        _header(page), _alarms_now(page.get("alarms_now") or []), _timeline(page),
        _groups("Subgroups", page.get("subgroups") or []), _groups("Regions", page.get("regions") or [], score=True),
        _sheets(page.get("sheets") or [], traces), _confusion(page.get("confusion")),
        _guardrails(page.get("guardrails") or []), _traces(traces)))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta http-equiv="Content-Security-Policy" '
            f'content="{_e(CONTENT_SECURITY_POLICY)}"><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(page.get('title') or 'incident')}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")
