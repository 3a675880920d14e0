"""The `csv-stats` example plugin, in Python: statistics of CSV text.

Built by `scripts/build-guests` (componentize-py, through the Python SDK's
`componentize` command); its tools are plain functions, unit-tested with
`python3 -m unittest` in this directory.
"""

import csv
import io
import math
from dataclasses import dataclass
from typing import Annotated, List, Literal, Optional

from airlock_sdk import InvalidInput, log, tool, workspace

#: Most rows one call reads.
MAX_ROWS = 100_000
#: Most distinct values counted per text column.
MAX_DISTINCT = 10_000


@dataclass
class ColumnStats:
    """Statistics of one column."""

    name: Annotated[str, "The column's header."]
    kind: Annotated[Literal["number", "text", "empty"], "What the column holds."]
    count: Annotated[int, "Non-empty cells."]
    missing: Annotated[int, "Empty cells."]
    distinct: Annotated[Optional[int], "Distinct values (text columns)."] = None
    min: Optional[float] = None
    max: Optional[float] = None
    mean: Optional[float] = None
    stddev: Annotated[Optional[float], "Population standard deviation."] = None


@dataclass
class Summary:
    """Statistics of a table."""

    rows: Annotated[int, "Data rows (the header excluded)."]
    columns: List[ColumnStats]


@dataclass
class Saved:
    """A table kept in the workspace."""

    name: str
    rows: int
    ref: Annotated[str, "The content-addressed blob holding the text."]


def _number(cell: str) -> Optional[float]:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read(text: str, delimiter: str) -> List[List[str]]:
    if len(delimiter) != 1:
        raise InvalidInput("`delimiter` must be one character")
    rows = []
    for row in csv.reader(io.StringIO(text), delimiter=delimiter, strict=True):
        rows.append(row)
        if len(rows) > MAX_ROWS + 1:
            raise InvalidInput(f"more than {MAX_ROWS} rows")
    if not rows:
        raise InvalidInput("the CSV is empty: it needs at least a header row")
    return rows


def _column(name: str, cells: List[str]) -> ColumnStats:
    present = [c.strip() for c in cells if c.strip()]
    missing = len(cells) - len(present)
    if not present:
        return ColumnStats(name=name, kind="empty", count=0, missing=missing)
    numbers = [_number(c) for c in present]
    if all(n is not None for n in numbers):
        values = [n for n in numbers if n is not None]
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / len(values)
        return ColumnStats(
            name=name,
            kind="number",
            count=len(values),
            missing=missing,
            min=min(values),
            max=max(values),
            mean=round(mean, 6),
            stddev=round(math.sqrt(variance), 6),
        )
    distinct = set()
    for c in present:
        distinct.add(c)
        if len(distinct) > MAX_DISTINCT:
            break
    return ColumnStats(
        name=name, kind="text", count=len(present), missing=missing, distinct=len(distinct)
    )


def _summarize(text: str, delimiter: str, columns: Optional[List[str]]) -> Summary:
    rows = _read(text, delimiter)
    header, data = rows[0], rows[1:]
    for i, row in enumerate(data, start=2):
        if len(row) != len(header):
            raise InvalidInput(f"row {i} has {len(row)} cells, the header has {len(header)}")
    wanted = list(header) if columns is None else columns
    for name in wanted:
        if name not in header:
            raise InvalidInput(f"no column `{name}` (the header has: {', '.join(header)})")
    stats = [_column(name, [row[header.index(name)] for row in data]) for name in wanted]
    log.info(f"summarized {len(data)} rows, {len(stats)} columns")
    return Summary(rows=len(data), columns=stats)


@tool
def summarize(
    csv: Annotated[Optional[str], "The CSV text, header row first."] = None,
    saved: Annotated[Optional[str], "Or: the name of a table kept with `save`."] = None,
    delimiter: Annotated[str, "The cell separator."] = ",",
    columns: Annotated[Optional[List[str]], "Only these columns (default: all)."] = None,
) -> Summary:
    """Statistics of each column of a CSV table: count, missing cells, and
    min/max/mean/standard deviation for numbers or distinct values for text."""
    if (csv is None) == (saved is None):
        raise InvalidInput("give either `csv` or `saved`")
    if saved is not None:
        text = workspace.get(_key(saved))
        if text is None:
            raise InvalidInput(f"no saved table `{saved}`")
        csv = text.decode()
    return _summarize(csv, delimiter, columns)


@tool
def save(
    name: Annotated[str, "A name for the table: 1 to 64 characters."],
    csv: Annotated[str, "The CSV text, header row first."],
) -> Saved:
    """Keep a CSV table in the plugin's workspace, to summarize later by name."""
    if not 1 <= len(name) <= 64:
        raise InvalidInput("`name` must be 1 to 64 characters")
    rows = _read(csv, ",")
    data = csv.encode()
    ref = workspace.put_blob(data)
    workspace.set(_key(name), data)
    return Saved(name=name, rows=len(rows) - 1, ref=ref)


def _key(name: str) -> str:
    return "tables/" + name
