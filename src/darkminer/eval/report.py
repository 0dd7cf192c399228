"""The erasure report of a run directory: `report.md` and `report.html` with curves, grids and timings."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..training.checkpoint import LOG_NAME  # noqa: E402


def _read_log(run_dir: Path) -> list[dict]:
    import json

    path = run_dir / LOG_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_scores(records: list[dict], tau: float | None, path: Path) -> Path | None:
    """s(c) per loop against tau (Dark Miner's verifying step)."""
    loops = [r for r in records if "score" in r]
    if not loops:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    for concept in sorted({r["concept"] for r in loops}):
        rows = [r for r in loops if r["concept"] == concept]
        ax.plot([r["loop"] for r in rows], [r["score"] for r in rows], marker="o", label=f"s(c): {concept}")
    if tau is not None:
        ax.axhline(tau, color="red", linestyle="--", label=f"tau = {tau}")
    ax.set_xlabel("loop")
    ax.set_ylabel("s(c), Eq. 6")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_losses(records: list[dict], path: Path) -> Path | None:
    """Mining loss (Eq. 5) and circumventing losses (Eq. 7-8) per loop, or a step-wise loss curve."""
    mining = [
        (r["loop"], sum(r["mining_loss"][-20:]) / len(r["mining_loss"][-20:])) for r in records if r.get("mining_loss")
    ]
    circ = [(r["loop"], r["circumvent"]) for r in records if isinstance(r.get("circumvent"), dict)]
    steps = [r for r in records if "step" in r and "loss" in r]
    if not (mining or circ or steps):
        return None
    fig, axes = plt.subplots(1, 2 if (mining or circ) else 1, figsize=(9 if (mining or circ) else 5, 3))
    if mining or circ:
        axes[0].plot(*zip(*mining, strict=True), marker="o") if mining else None
        axes[0].set_title("mining loss (Eq. 5), last 20 steps", fontsize=8)
        axes[0].set_xlabel("loop")
        offset = 0
        for _, terms in circ:
            n = len(terms["l_c"])
            axes[1].plot(range(offset, offset + n), terms["l_c"], color="tab:red", lw=0.6)
            axes[1].plot(range(offset, offset + n), terms["l_p"], color="tab:blue", lw=0.6)
            offset += n
        axes[1].set_yscale("log")
        axes[1].set_title("circumventing: l_c (red, Eq. 7), l_p (blue, Eq. 8)", fontsize=8)
        axes[1].set_xlabel("step (all loops)")
    else:
        axes.plot([r["step"] for r in steps], [r["loss"] for r in steps])
        axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_title("loss", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        out.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1%}" if 0 <= value <= 1 else f"{value:.3f}"
    return str(value)


def write_report(
    run_dir: str | Path,
    title: str,
    sections: list[tuple[str, list[str]]],
    images: list[tuple[str, Path]],
    tau: float | None = None,
) -> Path:
    """Write `report.md` and a self-contained `report.html` (images inlined) into `run_dir`.

    Args:
        run_dir: the run directory (its `log.jsonl` gives the curves).
        title: heading.
        sections: (heading, Markdown lines) pairs, in order.
        images: (caption, PNG path inside run_dir) pairs shown after the sections.
        tau: the verifying threshold to draw, if any.
    """
    run_dir = Path(run_dir)
    records = _read_log(run_dir)
    figures = [
        ("s(c) per loop against tau", plot_scores(records, tau, run_dir / "scores.png")),
        ("losses", plot_losses(records, run_dir / "losses.png")),
    ]
    figures = [(c, p) for c, p in figures if p is not None] + images
    timing = [r for r in records if "mining_seconds" in r]
    if timing:
        rows = [
            {
                "loop": r["loop"],
                "concept": r["concept"],
                "s(c)": r["score"],
                "mining s": f"{r['mining_seconds']:.1f}",
                "verify s": f"{r['verify_seconds']:.1f}",
                "circumvent s": f"{r.get('circumvent_seconds', 0):.1f}",
                "peak RSS MB": f"{max(r.get(k, 0) for k in r if k.endswith('peak_rss_mb')):.0f}",
                **(
                    {"GPU peak MB": f"{max(r[k] for k in r if k.endswith('gpu_peak_mb')):.0f}"}
                    if any(k.endswith("gpu_peak_mb") for k in r)
                    else {}
                ),
            }
            for r in timing
        ]
        sections = [
            *sections,
            (
                "Wall time and memory per loop (peak RSS of the process, and GPU memory allocated, so far)",
                _table(rows, list(rows[0])),
            ),
        ]
    md = [f"# {title}", ""]
    for heading, lines in sections:
        md += [f"## {heading}", "", *lines, ""]
    for caption, path in figures:
        md += [f"### {caption}", "", f"![{caption}]({Path(path).name})", ""]
    (run_dir / "report.md").write_text("\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, lines in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(markdown_lines_to_html(lines))
    for caption, path in figures:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        body.append(f"<h3>{html.escape(caption)}</h3><img src='data:image/png;base64,{data}'/>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>" + "\n".join(body) + "</body></html>"
    )
    (run_dir / "report.html").write_text(page)
    return run_dir / "report.md"


def markdown_lines_to_html(lines: list[str]) -> str:
    """Tables become <table>; other lines paragraphs. Enough for the reports this package writes."""
    out, table = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        if table:
            head, *rest = table
            out.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rest)
                + "</table>"
            )
            table = []
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(out)


def table_lines(rows: list[dict], columns: list[str]) -> list[str]:
    return _table(rows, columns)
