"""The demo report as one self-contained HTML page: inline CSS and SVG charts, no script, no
file or network fetched, so it opens anywhere (and a browser logs nothing about it)."""

from collections import Counter
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clients.demo import DemoReport

WIDTH = 640
BAR = 22
COLOURS = {"resolved": "#2f855a", "waiting": "#c05621", "failed": "#c53030"}

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1a202c; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.muted { color: #4a5568; } .cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { border: 1px solid #e2e8f0; border-radius: 8px; padding: .7rem 1rem; min-width: 9rem; }
.card b { display: block; font-size: 1.5rem; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #e2e8f0; padding: .35rem .4rem; text-align: left;
         vertical-align: top; }
th { background: #f7fafc; } .charts { display: flex; gap: 2rem; flex-wrap: wrap; }
svg text { font: 12px system-ui, sans-serif; fill: #2d3748; }
.run-resolved { color: #2f855a; } .run-waiting { color: #c05621; } .run-failed { color: #c53030; }
code { font-size: 12px; }
"""


def _bars(title: str, counts: dict[str, int], colour: str = "#3182ce") -> str:
    """A horizontal bar chart of ``counts``."""
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = max([1, *counts.values()])
    height = len(rows) * (BAR + 6) + 30
    parts = [f'<svg role="img" aria-label="{escape(title)}" width="{WIDTH // 2 + 80}" '
             f'height="{height}" viewBox="0 0 {WIDTH // 2 + 80} {height}">']  # fmt: skip
    for i, (label, count) in enumerate(rows):
        y = 10 + i * (BAR + 6)
        width = max(2, int(count / top * (WIDTH // 2 - 150)))
        parts.append(f'<text x="0" y="{y + 15}">{escape(label)}</text>')
        parts.append(f'<rect x="140" y="{y}" width="{width}" height="{BAR}" fill="{colour}"/>')
        parts.append(f'<text x="{146 + width}" y="{y + 15}">{count}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}</figure>"


def _histogram(title: str, seconds: list[float], bins: int = 8) -> str:
    """A histogram of ``seconds``."""
    longest = max([1.0, *seconds])
    step = longest / bins
    counts = Counter(min(bins - 1, int(s / step)) for s in seconds)
    top = max([1, *counts.values()])
    width, height = WIDTH // 2 + 60, 200
    column = (width - 40) // bins
    parts = [f'<svg role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']  # fmt: skip
    for i in range(bins):
        tall = int(counts.get(i, 0) / top * 140)
        x = 30 + i * column
        parts.append(
            f'<rect x="{x}" y="{160 - tall}" width="{column - 4}" height="{tall}" fill="#805ad5"/>'
        )
        if counts.get(i):
            parts.append(f'<text x="{x + 4}" y="{155 - tall}">{counts[i]}</text>')
        parts.append(f'<text x="{x}" y="178">{i * step:.{0 if step >= 2 else 1}f}</text>')
    parts.append('<text x="30" y="196">seconds from submission to the end of the run</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}</figure>"


def _timeline(report: "DemoReport") -> str:
    """Each run from its submission to its end (a waiting run up to the report's end), and the
    approval decided, with the moment of its decision."""
    end = max([1.0, report.seconds])
    scale = (WIDTH - 340) / end  # room after the longest bar for its label
    height = len(report.tickets) * (BAR + 4) + 40
    parts = [f'<svg role="img" aria-label="Runs and approvals" width="{WIDTH + 60}" '
             f'height="{height}" viewBox="0 0 {WIDTH + 60} {height}">']  # fmt: skip
    decision = report.decision
    for i, t in enumerate(report.tickets):
        y = 10 + i * (BAR + 4)
        approved = decision is not None and t.ticket_id == decision.ticket_id
        ran_until = end if t.run == "waiting" else t.seconds
        colour = COLOURS["waiting"] if approved else COLOURS.get(t.run, "#718096")
        parts.append(f'<text x="0" y="{y + 15}">#{t.ticket_id} {escape(t.intent or "")}</text>')
        parts.append(
            f'<rect x="180" y="{y}" width="{max(2, ran_until * scale):.0f}" height="{BAR}" '
            f'fill="{colour}" opacity="{0.45 if t.run == "waiting" or approved else 0.9}"/>'
        )
        if approved and decision is not None:
            # waited from its interrupt to the decision, then ran to its end
            decided = (decision.decided_at - report.started_at).total_seconds()
            start, length = 180 + decided * scale, decision.resumed_seconds * scale
            parts.append(
                f'<rect x="{180 + t.seconds * scale:.0f}" y="{y + 8}" '
                f'width="{max(1, (decided - t.seconds) * scale):.0f}" height="6" '
                f'fill="{COLOURS["waiting"]}"/>'
            )
            parts.append(
                f'<rect x="{start:.0f}" y="{y}" width="{max(2, length):.0f}" height="{BAR}" '
                f'fill="{COLOURS["resolved"]}" opacity="0.9"/>'
            )
            parts.append(
                f'<line x1="{start:.0f}" x2="{start:.0f}" y1="{y - 2}" y2="{y + BAR + 2}" '
                'stroke="#1a202c" stroke-width="3"/>'
            )
            parts.append(
                f'<text x="{start + length + 6:.0f}" y="{y + 15}">approved, then resolved</text>'
            )
    parts.append(
        f'<text x="180" y="{height - 8}">0 s</text>'
        f'<text x="{180 + end * scale - 30:.0f}" y="{height - 8}">{end:.0f} s</text></svg>'
    )
    legend = " ".join(
        f'<span class="run-{run}">■ {run}</span>' for run in ("resolved", "waiting", "failed")
    )
    return (
        "<figure><figcaption>Runs and approvals: submission to end (waiting runs still open)"
        f"</figcaption>{''.join(parts)}<div>{legend}</div></figure>"
    )


def _cards(report: "DemoReport") -> str:
    d = report.dashboard
    cards = [
        ("tickets", len(report.tickets)),
        ("resolved", report.count("resolved")),
        ("waiting for approval", report.count("waiting")),
        ("first response p50", f"{d.first_response.p50_seconds or 0:.1f} s"),
        ("resolution p50", f"{d.resolution.p50_seconds or 0:.1f} s"),
        ("SLA breaches", sum(d.sla_breaches.values())),
        ("messages sent", d.events_by_topic.get("notifications.outbound", 0)),
    ]
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{escape(str(v))}</b>{escape(k)}</div>' for k, v in cards)
        + "</div>"
    )


def _tickets(report: "DemoReport") -> str:
    rows = []
    for t in report.tickets:
        excerpt = " ".join(t.reply.split("\n\n")[1:3])[:240]
        cited = ", ".join(f"<code>{escape(c)}</code>" for c in t.citations)
        rows.append(
            f"<tr><td>{t.ticket_id}</td><td>{escape(t.subject)}<br><span class=muted>"
            f"{escape(t.channel)}</span></td><td>{escape(t.intent or '')}</td>"
            f"<td>{escape(t.action or '')}</td><td>{escape(t.approval or '')}</td>"
            f'<td class="run-{escape(t.run)}">{escape(t.run)}</td><td>{t.seconds:.1f} s</td>'
            f"<td>{escape(t.first_response_sla)} / {escape(t.resolution_sla)}</td>"
            f"<td>{escape(excerpt)}{'<br>cites ' + cited if cited else ''}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "ticket", "intent", "action", "approval", "run", "time", "SLA", "reply")
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render(report: "DemoReport") -> str:
    """The page."""
    d = report.dashboard
    intents = Counter(t.intent or "unknown" for t in report.tickets)
    topics = dict(d.events_by_topic)
    decision = ""
    if report.decision:
        x = report.decision
        decision = (
            f"<p>{escape(x.decided_by)} approved <code>{escape(x.approval_id)}</code> for ticket "
            f"{x.ticket_id} through the approvals server's <code>decide_approval</code> tool; the "
            f"orchestrator resumed the run and resolved it {x.resumed_seconds:.1f} s later.</p>"
        )
    servers = "".join(
        f"<li>{escape(name)}: <code>{escape(url)}</code></li>"
        for name, url in report.servers.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SupportMesh demo report</title><style>{STYLE}</style></head>
<body>
<h1>SupportMesh demo report</h1>
<p class="muted">{report.started_at:%Y-%m-%d %H:%M} UTC, {report.seconds:.0f} s:
{len(report.tickets)} tickets of the {escape(report.data_set)} demo set through the orchestrator
service, every capability reached over MCP.</p>
{_cards(report)}
{decision}
<h2>Charts</h2>
<div class="charts">
{_bars("Tickets by intent", dict(intents))}
{_histogram("Handling time", [t.seconds for t in report.tickets])}
</div>
{_timeline(report)}
<h2>Tickets</h2>
{_tickets(report)}
<h2>Analytics (last 24 hours)</h2>
<div class="charts">
{_bars("Events per topic", topics, "#2b6cb0")}
{_bars("Writes by tool", dict(d.writes_by_tool), "#2c7a7b")}
</div>
<p>Approvals: {d.approvals.requested} requested, {d.approvals.approved} approved,
{d.approvals.rejected} rejected, {d.approvals.expired} expired, {d.approvals_pending} pending.
First response p50 {d.first_response.p50_seconds} s, p90 {d.first_response.p90_seconds} s;
resolution p50 {d.resolution.p50_seconds} s, p90 {d.resolution.p90_seconds} s.</p>
<h2>The mesh</h2>
<ul>{servers}<li>orchestrator service: <code>{escape(report.orchestrator)}</code></li></ul>
</body></html>
"""
