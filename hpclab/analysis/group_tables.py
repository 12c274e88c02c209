"""Tables over a results group: one row per run, from the record each run's analysis leaves in
its ``figures/`` folder. Every run rebuilds the table, so it is complete after the last run of a
local sweep or a SLURM array, whatever order the runs finish in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hpclab.analysis.report import run_records, write_table


def write_group_table(
    group_dir: Path,
    record: str,
    columns: Sequence[str],
    title: str,
    note: str = "",
    table: str | None = None,
    digits: int = 5,
    sort_by: str | None = None,
) -> dict[str, str] | None:
    """``<group>/<table>.md`` and ``.csv`` (``table`` defaults to ``record``): per run folder
    holding ``figures/<record>.json`` its name and the record's ``columns``, floats rounded to
    ``digits`` decimals, in folder order or by ``sort_by``; under ``title``, the number of runs
    and ``note``. None while no run has written its record."""
    records = run_records(group_dir, f"figures/{record}.json")
    rows = [[run, *[values.get(c) for c in columns]] for run, values in records]
    if not rows:
        return None
    if sort_by in columns:
        i = 1 + list(columns).index(sort_by)
        rows.sort(key=lambda r: (r[i] is None, r[i] if isinstance(r[i], (int, float)) else str(r[i])))
    rows = [[round(v, digits) if isinstance(v, float) else v for v in r] for r in rows]
    heading = f"{title}\n\n{len(rows)} run(s)." + (f" {note}" if note else "")
    return write_table(["run", *columns], rows, group_dir / (table or record), heading, figure=False)
