"""Write the figures of the last ``make bench`` into docs/benchmarks.md and draw docs/cancel_latency.png.

Only the part of docs/benchmarks.md between the ``figures`` markers is rewritten; the findings around
it are prose kept by hand.

    .venv-bench/bin/python bench/report.py
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display here: draw straight to a PNG
import matplotlib.pyplot as plt
from _common import RESULTS, percentiles

DOCS = Path(__file__).parent.parent / "docs"
PAGE = DOCS / "benchmarks.md"
CHART = DOCS / "cancel_latency.png"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
STATES = ("mid-stream", "mid-stall", "in-tool")


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def streaming(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    figures = data["figures"]
    bare = figures["bare"]
    lines = [
        f"### 1. Streaming: one run of {data['chunks']:,} chunks",
        "",
        "| | chunks/s | × bare | client CPU µs/chunk | × bare (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in figures.items():
        lines.append(
            f"| {name} | {row['rate']:,.0f} | {row['rate'] / bare['rate']:.2f} | "
            f"{row['cpu_per_chunk'] * 1e6:.2f} | {bare['cpu_per_chunk'] / row['cpu_per_chunk']:.2f} |"
        )
    ratio = figures["tether"]["rate"] / bare["rate"]
    targets = [f"| Streaming ≥ 0.85× the bare limit | {ratio:.2f}× | {verdict(ratio >= 0.85)} |"]
    return lines, targets


def cancels(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    lines = [
        "### 2. Cancel latency: `cancel_run` returns → terminal event at the consumer "
        f"({data['trials']} trials)",
        "",
        "| state | tether p50 ms | tether p99 ms | Agno p50 ms | Agno p99 ms | Agno / tether (p50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for state in STATES:
        ours, theirs = data[state]["tether"], data[state]["agno"]
        p50, p99 = percentiles(ours)
        worst = max(worst, p99)
        if theirs:
            a50, a99 = percentiles(theirs)
            lines.append(f"| {state} | {p50:.3f} | {p99:.3f} | {a50:,.1f} | {a99:,.1f} | {a50 / p50:,.0f}× |")
        else:
            lines.append(f"| {state} | {p50:.3f} | {p99:.3f} | – | – | – |")
    lines += ["", f"![cancel latency distributions]({CHART.name})", ""]
    lines += [
        "### 3. Upstream close: `cancel_run` → the model server sees the disconnect",
        "",
        "| state | tether p50 ms | tether p99 ms |",
        "|---|---:|---:|",
    ]
    for state in ("mid-stream", "mid-stall"):
        p50, p99 = percentiles(data[state]["close"])
        lines.append(f"| {state} | {p50:.3f} | {p99:.3f} |")
    agno = [c for c in data.get("agno_close") or [] if c is not None]
    if data.get("agno_close"):
        lines += [
            "",
            f"Agno, mid-stream: {len(agno)} of {len(data['agno_close'])} streams closed within 2 s"
            + (f", p50 {percentiles(agno)[0]:.0f} ms (at its next chunk)." if agno else "."),
        ]
    targets = [
        f"| Cancel → terminal ≤ 2 ms p99, every state | worst p99 {worst:.3f} ms | {verdict(worst <= 2)} |"
    ]
    return lines, targets


def live(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    lines = [
        "### 4. Live streaming runs over HTTP",
        "",
        "A chunk a second per run (every 10 s at 10,000 runs: one core's worth of paced chunks), runs started"
        f" in waves of {data.get('wave', 100)} (each once the one before is live), each runtime in a fresh"
        " process; tether through one plain `OpenAIChat`, which spreads its streams over clients of 100"
        " connections.",
        "",
        "| runs | runtime | RSS per live run | cancel them all |",
        "|---:|---|---:|---:|",
    ]
    targets = []
    for key, row in data.items():
        if key in ("machine", "wave"):
            continue
        who, n = key.split()
        lines.append(
            f"| {int(n):,} | {who} | {row['rss_per_run'] / 1024:.1f} KB | {row['cancel_all']:.3f} s |"
        )
        if who == "tether" and n == "10000":
            targets.append(
                f"| 10,000 live runs cancelled ≤ 2 s | {row['cancel_all']:.2f} s | "
                f"{verdict(row['cancel_all'] <= 2)} |"
            )
    ours = [row["rss_per_run"] / 1024 for key, row in data.items() if key.startswith("tether")]
    if ours:  # the worst of the run counts measured
        kb = max(ours)
        targets.append(f"| ≤ 40 KB RSS per live run | {kb:.1f} KB (worst) | {verdict(kb <= 40)} |")
    return lines, targets


def server(load_data: dict[str, Any] | None, cross: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    lines = ["### 5. Server", ""]
    targets = []
    if load_data:
        sse = load_data["sse"]
        lines += [
            f"SSE with {load_data['clients']} concurrent streaming clients (one `tether serve` worker;"
            " `direct`: the same clients reading the model server's stream with no tether in between,"
            " the machine's limit for this shape; `bench/server_load.py` prints each process's CPU):",
            "",
            "| path | chunks/s |",
            "|---|---:|",
            *[f"| {name} | {rate:,.0f} |" for name, rate in sse.items()],
            "",
            "Cancel endpoint, `POST …/cancel?wait=0` (ms):",
            "",
            "| | POST p50 | POST p99 | POST → RunCancelled p50 | p99 |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in ("no load", "under load"):
            row = load_data[name]
            lines.append(
                f"| {name} | {row['post p50']:.2f} | {row['post p99']:.2f} | "
                f"{row['ended p50']:.2f} | {row['ended p99']:.2f} |"
            )
        load = load_data["load"]
        lines += [
            "",
            f"Load: {load['offered']:,.0f} chunks/s offered, {load['delivered']:,.0f} delivered.",
            "",
        ]
    if cross:
        (l50, l99), (r50, r99) = percentiles(cross["in-process"]), percentiles(cross["cross-worker"])
        lines += [
            f"Cancel over HTTP through two `tether serve` processes sharing Redis ({len(cross['in-process'])}"
            " trials, POST sent → RunCancelled on the stream):",
            "",
            "| path | p50 ms | p99 ms |",
            "|---|---:|---:|",
            f"| same worker | {l50:.2f} | {l99:.2f} |",
            f"| other worker, through Redis | {r50:.2f} | {r99:.2f} |",
        ]
        targets.append(f"| Cross-worker cancel ≤ 20 ms p99 | {r99:.2f} ms | {verdict(r99 <= 20)} |")
    return lines, targets


def resumes(data: dict[str, Any]) -> list[str]:
    """Resume latency (bench/resume_latency.py): median of the passes' p50/p99, with the spread."""
    lines = [
        "### 6. Resume",
        "",
        f"A client reconnects to a live run with `Last-Event-ID` ({len(data['passes'])} passes of"
        f" {len(data['passes'][0]['resume'])} trials; request sent → first event read, ms; spread: the"
        " passes' p50s). Baseline: a new streaming run's first event, same server and connection:",
        "",
        "| | p50 | p99 | spread |",
        "|---|---:|---:|---|",
    ]
    for name in ("resume", "new run"):
        pairs = [percentiles(one[name]) for one in data["passes"]]
        p50s = [a for a, _ in pairs]
        p99 = statistics.median(b for _, b in pairs)
        lines.append(
            f"| {name} | {statistics.median(p50s):.2f} | {p99:.2f} | {min(p50s):.2f}–{max(p50s):.2f} |"
        )
    return lines


def chart(data: dict[str, Any]) -> None:
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for axis, state in zip(axes, STATES, strict=True):
        for who, colour in (("tether", "tab:blue"), ("agno", "tab:orange")):
            samples = data[state][who]
            if not samples:
                continue
            values = sorted(s * 1e3 for s in samples)
            shares = [(i + 1) / len(values) for i in range(len(values))]
            axis.step(values, shares, where="post", color=colour, label=who)
        axis.set_xscale("log")
        axis.set_title(state)
        axis.set_xlabel("cancel → terminal event (ms, log)")
        axis.axvline(2, color="grey", linestyle=":", linewidth=1)
        axis.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("share of trials")
    axes[0].legend(loc="lower right")
    figure.suptitle(f"Cancel latency, {data['trials']} trials per state (dotted: the 2 ms target)")
    figure.tight_layout()
    figure.savefig(CHART, dpi=110)


def main() -> None:
    sections, targets = [], []
    throughput, cancel = load("stream_throughput"), load("cancel_latency")
    runs, load_data, cross = load("live_runs"), load("server_load"), load("cross_worker_cancel")
    machine = next((d["machine"] for d in (throughput, cancel, runs, cross) if d), "unknown machine")
    for data, build in ((throughput, streaming), (cancel, cancels), (runs, live)):
        if data:
            lines, met = build(data)
            sections += lines + [""]
            targets += met
    lines, met = server(load_data, cross)
    sections += lines
    targets += met
    resume = load("resume_latency")
    if resume:
        sections += ["", *resumes(resume)]
    if cancel:
        chart(cancel)
    block = [START, "", f"Measured on {machine}.", "", "| target | measured | |", "|---|---:|---|"]
    block += targets + ["", *sections, "", END]
    page = PAGE.read_text()
    page = re.sub(f"{re.escape(START)}.*{re.escape(END)}", lambda _: "\n".join(block), page, flags=re.S)
    PAGE.write_text(page)
    print(f"wrote {PAGE} and {CHART}")


if __name__ == "__main__":
    main()
