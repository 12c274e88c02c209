"""Sweep summaries: a table (CSV and Markdown) of the swept keys vs final metrics, and a plot."""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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
            out.update(
                {f"{split[len('final_') :]}/{k}": v for k, v in record.items() if k not in ("step", "epoch", "split")}
            )
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
    return next((part[len(prefix) :] for part in row["run"].split("__") if part.startswith(prefix)), None)


def table(rows: list[dict[str, Any]], keys: list[str], metrics: list[str]) -> tuple[list[str], list[list[Any]]]:
    header = ["run", *keys, *metrics, "parameters", "epochs", "wall_time_s"]
    body = []
    for row in rows:
        s = row["summary"]
        body.append(
            [
                row["run"],
                *[axis_value(row, k) for k in keys],
                *[_number(metric_of(s, m)) for m in metrics],
                sum(s.get("parameters", {}).values()),
                s.get("epochs"),
                s.get("wall_time_s"),
            ]
        )
    return header, body


def seed_means(rows: list[dict[str, Any]], keys: list[str], metrics: list[str]) -> tuple[list[str], list[list[Any]]]:
    """One row per setting of the sweep's other axes: how many seeds ran, and each metric's mean
    over them with its range (``0.8123 (0.8101-0.8150)``), in the order the settings first appear."""
    settings = [k for k in keys if k != SEED_AXIS]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(axis_value(row, k) for k in settings), []).append(row["summary"])
    header = [*settings, "seeds", *(f"{m} mean (min-max)" for m in metrics)]
    body = []
    for setting, summaries in groups.items():
        cells = []
        for metric in metrics:
            values = [v for v in (metric_of(s, metric) for s in summaries) if isinstance(v, (int, float))]
            mean = sum(values) / len(values) if values else None
            cells.append(f"{mean:.4f} ({min(values):.4f}-{max(values):.4f})" if values else None)
        body.append([*setting, len(summaries), *cells])
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


def write_table(
    header: list[str], body: list[list[Any]], base: Path, title: str = "", figure: bool = True
) -> dict[str, str]:
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


def write_report(
    group_dir: Path | str, report: Mapping[str, Any] | None = None, name: str = "summary"
) -> dict[str, Path]:
    """Rebuild ``summary.csv``, ``summary.md`` and ``summary.png`` of a sweep folder (``name``:
    another view of the same runs beside them, e.g. fewer metrics, leaving the summary alone)."""
    group_dir = Path(group_dir)
    rows, damaged = collect(group_dir)
    rows, others = sweep_rows(rows)
    if not rows:
        raise FileNotFoundError(
            f"no finished runs (summary.json with status completed) under {group_dir}"
            + (f"; damaged: {'; '.join(damaged)}" if damaged else "")
        )
    recorded = dict(select(rows[0]["cfg"], "sweep.report") or {})  # what the runs themselves recorded
    report = {**recorded, **dict(report or {})}
    grid_keys = list(select(rows[0]["cfg"], "sweep.grid") or {})
    x = report.get("x") or (grid_keys[0] if grid_keys else None)
    keys = list(dict.fromkeys(([x] if x else []) + grid_keys))
    metrics = list(report.get("metrics") or sorted(rows[0]["summary"]["metrics"]))
    baselines = baselines_of(report, metrics)
    columns = list(dict.fromkeys(metrics + [b for anchored in baselines.values() for b in anchored]))
    rows.sort(key=lambda r: (_sortable(axis_value(r, x)) if x else (0, 0), _run_order(r["run"])))
    header, body = table(rows, keys, columns)
    out = {"csv": group_dir / f"{name}.csv", "md": group_dir / f"{name}.md"}
    atomic_write_text(out["csv"], to_csv(header, body))
    title = (
        f"# {group_dir.name}\n\n{len(rows)} finished run(s); metrics on the final split(s) with the best weights.\n\n"
    )
    notes = "".join(f"\nSkipped, damaged records: {line}\n" for line in damaged)
    if others:
        notes += (
            f"\nLeft out, not runs of the sweep (e.g. single runs of the experiment in this folder): "
            f"{', '.join(others)}\n"
        )
    if SEED_AXIS in grid_keys and len({axis_value(r, SEED_AXIS) for r in rows}) > 1:
        notes += "\nMean over the seeds of each setting, with their range:\n\n" + to_markdown(
            *seed_means(rows, keys, columns)
        )
    atomic_write_text(out["md"], title + to_markdown(header, body) + notes)
    numeric_x = x and all(isinstance(axis_value(r, x), (int, float)) for r in rows)
    if numeric_x and len(rows) > 1:
        series = [k for k in grid_keys if k not in (x, SEED_AXIS)]
        panels = summary_panels(rows, x, metrics, baselines, bool(report.get("logx")), series)
        from hpclab.analysis.figures import plot_panels

        out["png"] = plot_panels(panels, group_dir / f"{name}.png", title=group_dir.name)
    else:  # a plot of earlier runs would no longer match the table
        (group_dir / f"{name}.png").unlink(missing_ok=True)
    log.info("sweep summary: %s", ", ".join(str(p) for p in out.values()))
    return out


def view_name(report: Mapping[str, Any]) -> str:
    """The file name (without suffix) of a view of a sweep that differs from its summary:
    ``summary-test_mse+test_psnr``, ``summary-test_acc-by-model.latent_dim-logx``."""
    parts = []
    if report.get("metrics"):
        parts.append("+".join(m.replace("/", "_") for m in report["metrics"]))
    if report.get("x"):
        parts.append(f"by-{report['x']}")
    if report.get("logx"):
        parts.append("logx")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(["summary", *parts]))


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def baselines_of(report: Mapping[str, Any], metrics: list[str]) -> dict[str, list[str]]:
    """metric -> the baselines drawn on its axes, from the sweep's ``report.baselines``
    (``{test/mse: analyses.pca_baseline.test_mse}``, a value may be a list), for the metrics
    shown. A baseline that is also listed as a metric gets no panel of its own."""
    found: dict[str, list[str]] = {}
    for metric, anchored in dict(report.get("baselines") or {}).items():
        if metric in metrics:
            found[metric] = [anchored] if isinstance(anchored, str) else list(anchored)
    return found


# Names in words for figures (tables keep the keys, which scripts read): a key's own entry,
# else "<split> <metric>" for final metrics, else the last part of a dotted key, else the key.
DISPLAY_NAMES = {
    "model.latent_dim": "latent size l",
    "task.noise_std": "noise standard deviation",
    "data.train_fraction": "fraction of the training labels",
    "train.batch_size": "batch size",
    "train.epochs": "epochs",
    "task.factor": "upscaling factor",
    "analyses.pca_baseline.test_mse": "PCA, as many components",
    "analyses.pca_baseline.test_psnr": "PCA, as many components",
    "analyses.noisy_input.test_mse": "the noisy input itself",
    "analyses.noisy_input.test_psnr": "the noisy input itself",
    "test/bilinear_mse": "bilinear upsampling",
    "test/bilinear_psnr": "bilinear upsampling",
    "test/noisy_psnr": "the noisy input itself",
    "analyses.latent_probe.linear_test_acc": "linear probe, test accuracy",
    "analyses.latent_probe.mlp_test_acc": "MLP probe, test accuracy",
    "task.temperature": "temperature",
}
METRIC_NAMES = {
    "mse": "MSE",
    "psnr": "PSNR (dB)",
    "acc": "accuracy",
    "loss": "loss",
    "dice": "Dice",
    "iou": "IoU",
    "dice_loss": "Dice loss",
    "bce": "binary cross-entropy",
    "ssim": "SSIM",
    "pair_acc": "retrieval (pair_acc)",
}
SPLIT_NAMES = {"test": "test", "val": "validation", "train": "training"}


def display_name(key: str) -> str:
    """A metric or config key in words (``test/psnr`` -> ``test PSNR (dB)``)."""
    if key in DISPLAY_NAMES:
        return DISPLAY_NAMES[key]
    split, slash, metric = key.partition("/")
    if slash and split in SPLIT_NAMES:
        return f"{SPLIT_NAMES[split]} {METRIC_NAMES.get(metric, metric.replace('_', ' '))}"
    if "." in key and not key.startswith("analyses."):
        return key.rsplit(".", 1)[1].replace("_", " ")
    return key


SEED_AXIS = "seed"  # repeats of one setting: averaged in the summary plot, not a line of their own


def _mean_line(points: dict[Any, list[dict[str, Any]]], key: str, label: str, style: str) -> Any:
    """A Line of ``key`` over x: at each x the mean over the runs there (seeds), with their
    range as an error bar when there are repeats; x values without the value are left out."""
    from hpclab.analysis.figures import Line

    xs, means, low, high = [], [], [], []
    for x in sorted(points, key=_sortable):
        values = [v for v in (metric_of(s, key) for s in points[x]) if isinstance(v, (int, float))]
        if values:
            mean = sum(values) / len(values)
            xs.append(x)
            means.append(mean)
            low.append(mean - min(values))
            high.append(max(values) - mean)
    repeated = any(len(runs) > 1 for runs in points.values())
    return Line(xs, means, label, style, spread=[low, high] if repeated else None)


def summary_panels(
    rows: list[dict[str, Any]],
    x: str,
    metrics: list[str],
    baselines: Mapping[str, list[str]],
    logx: bool,
    series: Sequence[str] = (),
) -> list:
    """One panel per metric against ``x``: one line per combination of the ``series`` axes'
    values, each point the mean over the runs that share it (seeds) with their range, and each
    baseline drawn dashed on the axes of the metric it anchors; axes and legends in words."""
    from hpclab.analysis.figures import Panel

    groups: dict[tuple, dict[Any, list[dict[str, Any]]]] = {}
    for row in rows:
        label = tuple(axis_value(row, k) for k in series)
        groups.setdefault(label, {}).setdefault(axis_value(row, x), []).append(row["summary"])
    anchored = {b for group in baselines.values() for b in group}
    panels = []
    for metric in [m for m in metrics if m not in anchored]:
        lines = []
        for label, points in groups.items():
            name = ", ".join(f"{display_name(k)} {v}" for k, v in zip(series, label))
            lines.append(_mean_line(points, metric, name or display_name(metric), "o-"))
            lines += [
                _mean_line(points, b, f"{display_name(b)}{', ' + name if name else ''}", "s--")
                for b in baselines.get(metric, [])
            ]
        panels.append(Panel(lines, display_name(x), display_name(metric), log_x_base=2 if logx else None))
    return panels
