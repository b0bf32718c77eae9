"""The self-contained HTML report: summary tables and four charts as inline SVG.

Charts are drawn with matplotlib (the optional ``report`` extra: ``pip install
'smsc[report]'``) on its non-interactive Agg backend and embedded as SVG text, so the file
needs no network, no script and no other file to be read.
"""

from __future__ import annotations

import html
import io
from typing import Any

_COLORS = {
    "submitted": "#4c72b0",
    "accepted": "#55a868",
    "rejected": "#c44e52",
    "throttled": "#dd8452",
    "receipts": "#8172b3",
    "errors": "#937860",
}
_STATE_COLORS = {
    "DELIVRD": "#55a868",
    "ACCEPTD": "#64b5cd",
    "ENROUTE": "#8c8c8c",
    "UNDELIV": "#c44e52",
    "EXPIRED": "#dd8452",
    "REJECTD": "#937860",
    "DELETED": "#da8bc3",
    "UNKNOWN": "#ccb974",
}


def missing_dependency() -> str | None:
    """None when charts can be drawn, else what to install."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "the HTML report needs matplotlib: pip install 'smsc[report]'"
    return None


def _figure(width: float = 9.0, height: float = 3.4) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def chart_throughput(ax: Any, report: dict[str, Any]) -> None:
    series = report["series"]
    t = [p["t"] + p["seconds"] for p in series]
    for key in ("submitted", "accepted", "rejected", "throttled", "receipts"):
        values = [p.get(key + "_per_s", 0) for p in series]
        if any(values):
            ax.plot(t, values, label=key, color=_COLORS[key], linewidth=1.4)
    rate = report["summary"].get("target_rate")
    if rate:
        ax.axhline(rate, color="#999999", linestyle="--", linewidth=1, label="target rate")
    ax.set_title("Throughput")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("per second")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)


def chart_latency_over_time(ax: Any, report: dict[str, Any]) -> None:
    series = [p for p in report["series"] if "p50_ms" in p]
    t = [p["t"] + p["seconds"] for p in series]
    styles = (("p50", "#4c72b0"), ("p90", "#55a868"), ("p99", "#dd8452"), ("p999", "#c44e52"))
    for key, color in styles:
        ax.plot(t, [p[key + "_ms"] for p in series], label=key.replace("p999", "p99.9"),
                color=color, linewidth=1.4)  # fmt: skip
    ax.plot(t, [p["max_ms"] for p in series], label="max", color="#555555", linewidth=0.8,
            linestyle=":")  # fmt: skip
    if any(p.get("max_ms", 0) > 0 for p in series):
        ax.set_yscale("log")
    ax.set_title("submit_sm → submit_sm_resp latency over time")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("ms")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=8)


def _rebin(dist: list[list[float]], per_decade: int = 20) -> list[tuple[float, float, int]]:
    """The histogram's buckets regrouped into equal widths on a log scale (readable bars)."""
    import math

    bins: dict[int, int] = {}
    for low, high, count in dist:
        middle = max((low + high) / 2, 0.001)
        key = math.floor(math.log10(middle) * per_decade)
        bins[key] = bins.get(key, 0) + int(count)
    return [
        (10 ** (k / per_decade), 10 ** ((k + 1) / per_decade), n) for k, n in sorted(bins.items())
    ]


def chart_distribution(ax: Any, report: dict[str, Any]) -> None:
    dist = _rebin(report["distribution"])
    total = sum(row[2] for row in dist) or 1
    if dist:
        ax.bar([row[0] for row in dist], [row[2] / total * 100 for row in dist],
               width=[row[1] - row[0] for row in dist], align="edge", color="#4c72b0",
               edgecolor="white", linewidth=0.3)  # fmt: skip
        ax.set_xscale("log")
        lat = report["summary"]["latency"]
        for key, label, color in (("p50", "p50", "#55a868"), ("p99", "p99", "#dd8452"),
                                  ("p999", "p99.9", "#c44e52")):  # fmt: skip
            if key + "_ms" in lat and lat[key + "_ms"] > 0:
                ax.axvline(lat[key + "_ms"], color=color, linestyle="--", linewidth=1,
                           label=f"{label} {lat[key + '_ms']:g} ms")  # fmt: skip
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Latency distribution (submit → response)")
    ax.set_xlabel("ms (log)")
    ax.set_ylabel("% of responses")
    ax.grid(alpha=0.3)


def chart_receipts(ax: Any, report: dict[str, Any]) -> None:
    receipts = report["summary"]["receipts"]
    labels = list(receipts["by_state"])
    values = [receipts["by_state"][k] for k in labels]
    for key, label in (("missing", "missing"), ("unmatched", "unmatched"),
                       ("pending_at_stop", "pending")):  # fmt: skip
        if receipts.get(key):
            labels.append(label)
            values.append(receipts[key])
    colors = [_STATE_COLORS.get(k, "#bbbbbb") for k in labels]
    if values:
        bars = ax.barh(labels, values, color=colors)
        total = sum(values)
        ax.bar_label(bars, labels=[f"{v:,} ({v / total:.1%})" for v in values], fontsize=8,
                     padding=3)  # fmt: skip
        ax.invert_yaxis()
        ax.set_xlim(right=max(values) * 1.25)
    else:
        ax.text(0.5, 0.5, "no receipts", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Receipt final states")
    ax.set_xlabel("receipts")
    ax.grid(alpha=0.3, axis="x")


CHARTS = (
    ("throughput", chart_throughput, 3.4),
    ("latency-over-time", chart_latency_over_time, 3.4),
    ("latency-distribution", chart_distribution, 3.4),
    ("receipt-states", chart_receipts, 2.8),
)


def chart_svg(draw: Any, report: dict[str, Any], height: float) -> str:
    fig = _figure(9.0, height)
    draw(fig.add_subplot(), report)
    return _svg(fig)


def save_png(report: dict[str, Any], path: str) -> None:
    """All four charts stacked in one PNG (for a README or a ticket)."""
    fig = _figure(10.0, sum(h for _, _, h in CHARTS))
    axes = fig.subplots(len(CHARTS), 1, height_ratios=[h for _, _, h in CHARTS])
    for ax, (_, draw, _) in zip(axes, CHARTS, strict=True):
        draw(ax, report)
    s = report["summary"]
    lat = s["latency"]
    head = (
        f"smsc load → {s['target']}: {s['mode']}, {s['binds']} {s['bind_type']} × window"
        f" {s['window']}, {s['sending_s']:.0f} s — {s['msgs_per_s']:,.0f} msg/s,"
        f" {s['accepted']:,} accepted, {s['rejected']:,} rejected"
    )
    if lat.get("count"):
        head += f"\nsubmit→resp p50 {lat['p50_ms']:g} ms, p99 {lat['p99_ms']:g} ms"
    r = s["receipts"]
    if r["requested"]:
        head += f"; receipts {r['received']:,} (missing {r['missing']:,})"
    fig.suptitle(head, fontsize=10)
    fig.savefig(path, format="png")


def _row(cells: list[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".")
    if v is None:
        return "—"
    return html.escape(str(v))


def _latency_table(title: str, figures: dict[str, Any]) -> str:
    if not figures.get("count"):
        return f"<p>{html.escape(title)}: none recorded.</p>"
    keys = ["min", "mean", "p50", "p90", "p99", "p999", "max"]
    heads = ["min", "mean", "p50", "p90", "p99", "p99.9", "max"]
    return (
        f"<table><caption>{html.escape(title)} (ms; {figures['count']:,} values)</caption>"
        + _row(heads, header=True)
        + _row([_num(figures.get(k + "_ms")) for k in keys])
        + "</table>"
    )


def _kv_table(title: str, items: list[tuple[str, Any]]) -> str:
    rows = "".join(_row([html.escape(k), _num(v)]) for k, v in items)
    return f"<table><caption>{html.escape(title)}</caption>{rows}</table>"


def render(report: dict[str, Any]) -> str:
    """The whole HTML document."""
    s = report["summary"]
    p = report["params"]
    title = p.get("report", {}).get("title") or f"smsc load — {s['target']}"
    charts = []
    for name, draw, height in CHARTS:
        charts.append(f'<figure id="{name}">{chart_svg(draw, report, height)}</figure>')
    status = "INTERRUPTED — partial report" if s["interrupted"] else "complete"
    if s.get("error"):
        status = "FAILED: " + html.escape(s["error"])
    mode = s["mode"] + (f" at {s['target_rate']:g} msg/s" if s["target_rate"] else "")
    overview = _kv_table(
        "Run",
        [
            ("target", s["target"]),
            ("mode", mode),
            ("binds", f"{s['binds']} {s['bind_type']}, window {s['window']}"),
            ("workers", s["workers"]),
            ("sending (s)", s["sending_s"]),
            ("status", status),
        ],
    )
    counts = _kv_table(
        "Submits",
        [
            ("messages", s["messages"]),
            ("messages/s", s["msgs_per_s"]),
            ("submit_sm sent", s["submitted"]),
            ("resubmitted after throttling", s["resubmitted"]),
            ("accepted", s["accepted"]),
            ("accepted/s (peak second)", s["peak_accepted_per_s"]),
            ("rejected", s["rejected"]),
            *[(f"  {k}", v) for k, v in s["rejected_by_status"].items()],
            ("ESME_RTHROTTLED answers", s["throttled"]),
            ("ESME_RMSGQFUL answers", s["queue_full"]),
            ("timeouts", s["timeouts"]),
            ("lost with a dropped bind", s["lost"]),
            ("abandoned at the end", s["abandoned"]),
            ("due but not sent (open loop)", s["unsent"]),
        ],
    )
    r = s["receipts"]
    receipts = _kv_table(
        "Receipts",
        [
            ("requested", r["requested"]),
            ("received (final)", r["received"]),
            *[(f"  {k}", v) for k, v in r["by_state"].items()],
            ("intermediate", r["intermediate"]),
            (f"missing after {r['grace_s']:g} s", r["missing"]),
            ("late (after missing)", r["late"]),
            ("matching no message id", r["unmatched"]),
            ("pending when stopped", r["pending_at_stop"]),
            ("MO received", s["mo"]),
        ],
    )
    c = s["connections"]
    conns = _kv_table("Connections", [(k.replace("_", " "), v) for k, v in c.items()])
    latency = _latency_table("submit_sm → submit_sm_resp latency", s["latency"])
    if "service_time" in s:
        latency += _latency_table("service time (from the actual send)", s["service_time"])
        latency += _latency_table("generator lag (actual − intended send)", s["send_lag"])
    latency += _latency_table("submit → receipt latency", r["latency"])
    params = html.escape(_yamlish(p))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1000px;
  color: #222; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; }}
table {{ border-collapse: collapse; margin: 8px 16px 16px 0; display: inline-table;
  vertical-align: top; }}
caption {{ text-align: left; font-weight: 600; padding: 4px 0; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
td:first-child {{ text-align: left; }}
figure {{ margin: 8px 0; }} figure svg {{ max-width: 100%; height: auto; }}
pre {{ background: #f6f6f6; padding: 8px; overflow: auto; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{status}</p>
<h2>Summary</h2>
{overview}{counts}{receipts}{conns}
<h2>Latency</h2>
{latency}
<h2>Charts</h2>
{"".join(charts)}
<h2>Parameters</h2>
<pre>{params}</pre>
</body></html>
"""


def _yamlish(data: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(data, dict):
        lines = []
        for k, v in data.items():
            if k == "password":
                v = "***"
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{k}:\n{_yamlish(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {v}")
        return "\n".join(lines)
    if isinstance(data, list):
        return "\n".join(f"{pad}- {_yamlish(v, indent + 1).strip()}" for v in data)
    return f"{pad}{data}"
