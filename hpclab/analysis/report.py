"""Sweep summaries: a table (CSV and Markdown) of the swept keys vs final metrics, and a plot."""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from hpclab.rundir import CONFIG, SUMMARY, is_run_folder_name, read_config, read_metrics, summary_problem
from hpclab.utils import atomic_write_text, read_json

log = logging.getLogger("hpclab")


def run_records(group_dir: Path, relative: str) -> Iterator[tuple[str, Any]]:
    """``(run name, JSON record)`` of ``<run>/<relative>`` for every run folder of a group
    that has one; a damaged record is skipped with a warning (the others still count)."""
    for path in sorted(group_dir.glob(f"*/{relative}")):
        run = path.relative_to(group_dir).parts[0]
        if not is_run_folder_name(run):
            continue
        try:
            yield run, read_json(path)
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: damaged (%s)", path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def select(cfg: Any, key: str) -> Any:
    """The value at a dotted key (``model.latent_dim``) of a plain config; None when absent."""
    value = cfg
    for part in key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _run_order(name: str) -> list[Any]:
    """Run names in natural order (seed-2 before seed-10)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def collect(group_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per finished run under ``group_dir`` (its config as plain data, and summary), and
    one line per run folder whose records are damaged (skipped, so the others are still
    summarised)."""
    rows, damaged = [], []
    for summary_path in sorted(group_dir.glob(f"*/{SUMMARY}")):
        run_dir = summary_path.parent
        if not is_run_folder_name(run_dir.name):
            continue
        try:
            summary = read_json(summary_path)
            problem = summary_problem(summary)
            if problem:
                raise ValueError(f"{SUMMARY} {problem}")
            if summary.get("status") != "completed":
                continue
            cfg = read_config(run_dir)
            if cfg is None:
                raise ValueError(f"no {CONFIG}")
        except Exception as exc:  # JSON/YAML errors of several kinds, unreadable files, wrong shapes
            damaged.append(f"{run_dir.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            log.warning("skipping %s in the summary: its records are damaged (%s)", run_dir, damaged[-1])
            continue
        rows.append({"run": run_dir.name, "cfg": cfg, "summary": summary})
    return rows, damaged


def sweep_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a sweep's runs, and the names of the others in its folder (runs started
    without the sweep, e.g. ``experiment=ae_latent`` beside ``sweep=ae_latent``, whose configs
    have no sweep name). A folder of runs none of which belongs to a sweep keeps them all."""
    swept = [r for r in rows if select(r["cfg"], "sweep.name")]
    if not swept:
        return rows, []
    return swept, [r["run"] for r in rows if not select(r["cfg"], "sweep.name")]


def metric_of(summary: dict[str, Any], name: str) -> Any:
    """A final metric (``test/mse``) or any dotted path into summary.json
    (``analyses.latent_probe.linear_test_acc``)."""
    if name in summary.get("metrics", {}):
        return summary["metrics"][name]
    value: Any = summary
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def final_metrics(run_dir: Path | str) -> dict[str, float]:
    """``{split/metric: value}`` of the engine's final evaluations (best weights) in
    metrics.jsonl, so analyses need no second pass over the data; {} before there are any."""
    out: dict[str, float] = {}
    for record in read_metrics(Path(run_dir)):
        split = record["split"]
        if split.startswith("final_"):
            out.update({f"{split[len('final_'):]}/{k}": v for k, v in record.items() if k not in ("step", "epoch", "split")})
    return out


def _number(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def axis_value(row: dict[str, Any], key: str) -> Any:
    """A sweep axis' value for one run: from its config, or, for an axis that picks a config
    group (``encoder: [scratch, ae, simclr]``, which leaves no key of that name in the config),
    the option its run name records (``encoder-ae__train_fraction-0.1``: the launcher names runs
    after their grid points)."""
    value = select(row["cfg"], key)
    if value is not None or "." in key or key in row["cfg"]:
        return value
    prefix = f"{key}-"
    return next((part[len(prefix):] for part in row["run"].split("__") if part.startswith(prefix)), None)


def table(rows: list[dict[str, Any]], keys: list[str], metrics: list[str]) -> tuple[list[str], list[list[Any]]]:
    header = ["run", *keys, *metrics, "parameters", "epochs", "wall_time_s"]
    body = []
    for row in rows:
        s = row["summary"]
        body.append([
            row["run"],
            *[axis_value(row, k) for k in keys],
            *[_number(metric_of(s, m)) for m in metrics],
            sum(s.get("parameters", {}).values()),
            s.get("epochs"),
            s.get("wall_time_s"),
        ])
    return header, body


def to_markdown(header: list[str], body: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], body: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(body)
    return buf.getvalue()


def write_table(header: list[str], body: list[list[Any]], base: Path, title: str = "",
                figure: bool = True) -> dict[str, str]:
    """One result table as ``base``.md and .csv (and .png of the table with ``figure``), atomic
    writes; floats to 6 significant digits. The one writer of the analyses' small tables."""
    body = [[float(f"{v:.6g}") if isinstance(v, float) else v for v in row] for row in body]
    files = {"md": base.with_suffix(".md"), "csv": base.with_suffix(".csv")}
    atomic_write_text(files["md"], (f"# {title}\n\n" if title else "") + to_markdown(header, body))
    atomic_write_text(files["csv"], to_csv(header, body))
    if figure:
        from hpclab.analysis.figures import plt, save_figure

        fig, ax = plt.subplots(figsize=(min(1.25 * len(header) + 1, 22), 0.36 * len(body) + 0.9))
        ax.axis("off")
        cells = [["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row] for row in body]
        table = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1, 1.3)
        if title:
            ax.set_title(title, fontsize=10)
        files["png"] = base.with_suffix(".png")
        save_figure(fig, files["png"])
    return {k: str(v) for k, v in files.items()}


def write_report(group_dir: Path | str, report: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Rebuild ``summary.csv``, ``summary.md`` and ``summary.png`` of a sweep folder."""
    group_dir = Path(group_dir)
    rows, damaged = collect(group_dir)
    rows, others = sweep_rows(rows)
    if not rows:
        raise FileNotFoundError(f"no finished runs (summary.json with status completed) under {group_dir}"
                                + (f"; damaged: {'; '.join(damaged)}" if damaged else ""))
    report = dict(report or {})
    if not report:  # fall back to what the runs themselves recorded
        report = dict(select(rows[0]["cfg"], "sweep.report") or {})
    grid_keys = list(select(rows[0]["cfg"], "sweep.grid") or {})
    x = report.get("x") or (grid_keys[0] if grid_keys else None)
    keys = list(dict.fromkeys(([x] if x else []) + grid_keys))
    metrics = list(report.get("metrics") or sorted(rows[0]["summary"]["metrics"]))
    rows.sort(key=lambda r: (_sortable(axis_value(r, x)) if x else (0, 0), _run_order(r["run"])))
    header, body = table(rows, keys, metrics)
    out = {"csv": group_dir / "summary.csv", "md": group_dir / "summary.md"}
    atomic_write_text(out["csv"], to_csv(header, body))
    title = f"# {group_dir.name}\n\n{len(rows)} finished run(s); metrics on the final split(s) with the best weights.\n\n"
    notes = "".join(f"\nSkipped, damaged records: {line}\n" for line in damaged)
    if others:
        notes += (f"\nLeft out, not runs of the sweep (e.g. single runs of the experiment in this folder): "
                  f"{', '.join(others)}\n")
    atomic_write_text(out["md"], title + to_markdown(header, body) + notes)
    numeric_x = x and all(isinstance(axis_value(r, x), (int, float)) for r in rows)
    if numeric_x and len(rows) > 1:
        series = [k for k in grid_keys if k not in (x, SEED_AXIS)]
        out["png"] = plot(rows, x, metrics, group_dir / "summary.png", bool(report.get("logx")), series)
    else:  # a plot of earlier runs would no longer match the table
        (group_dir / "summary.png").unlink(missing_ok=True)
    log.info("sweep summary: %s", ", ".join(str(p) for p in out.values()))
    return out


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


SEED_AXIS = "seed"  # repeats of one setting: averaged in the summary plot, not a line of their own


def _line(points: dict[Any, list[dict[str, Any]]], metric: str) -> tuple[list[Any], list[float], list[list[float]]]:
    """x values, the mean of ``metric`` over the runs at each, and the distance from the mean to
    their lowest and highest value (an error bar); x values without the metric are left out."""
    xs, means, low, high = [], [], [], []
    for x in sorted(points):
        values = [v for v in (metric_of(s, metric) for s in points[x]) if isinstance(v, (int, float))]
        if values:
            mean = sum(values) / len(values)
            xs.append(x)
            means.append(mean)
            low.append(mean - min(values))
            high.append(max(values) - mean)
    return xs, means, [low, high]


def plot(rows: list[dict[str, Any]], x: str, metrics: list[str], path: Path, logx: bool,
         series: Sequence[str] = ()) -> Path:
    """Each metric over ``x``: one line per combination of the ``series`` axes' values, each point
    the mean over the runs that share it (seeds), with their range as an error bar."""
    from hpclab.analysis.figures import plt, save_figure

    lines: dict[tuple, dict[Any, list[dict[str, Any]]]] = {}
    for row in rows:
        label = tuple(axis_value(row, k) for k in series)
        lines.setdefault(label, {}).setdefault(axis_value(row, x), []).append(row["summary"])
    repeated = any(len(runs) > 1 for points in lines.values() for runs in points.values())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, points in lines.items():
            xs, means, spread = _line(points, metric)
            name = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(series, label)) or None
            ax.errorbar(xs, means, yerr=spread if repeated else None, marker="o", capsize=3, label=name)
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        if logx:
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    fig.suptitle(path.parent.name)
    fig.tight_layout()
    return save_figure(fig, path)
