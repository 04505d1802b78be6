"""Render the markdown tables of README.md, BENCHMARKS.md and docs/ from committed CSV files.

Every number the documentation shows comes from a results file in the repository through this
script, never by hand. A table sits between two HTML comments, which markdown does not show:

    <!-- table: docs/results/demo.csv where:dataset=digits "where:cost=3->5:10,8:4"
         columns=method,acc,rob_cs bold=acc,rob_cs low=cert_cost -->
    | method | Acc | Rob_cs | ... (generated: everything up to the end marker is replaced)
    <!-- end table -->

The opening comment holds shell-style words (quote a word that holds spaces):

- the CSV's path, relative to the repository root (first word, required);
- ``where:COLUMN=VALUE``: keep the rows whose COLUMN equals VALUE (repeatable);
- ``columns=A,B,...``: the columns to show, in order (default: all). ``A+-B`` shows "A +- B",
  a mean with its standard deviation;
- ``bold=A,B``: make the largest value of each column bold; ``low=C`` the smallest (costs);
- ``label:COLUMN=TEXT``: the header of COLUMN (defaults below: ``acc`` is "Acc", ...);
- ``digits=N``: decimals of fractional numbers (default 3); integers print as integers.

A ``method`` or ``against`` column shows the methods' names as the papers write them (``csrs``
as CS-RS).

A CSV that is not in the repository yet renders as one sentence saying so, so that a page can be
written before its experiment has run, and never shows numbers without a source.

    python scripts/tables.py           # rewrite every table in place
    python scripts/tables.py --check   # exit 1, naming each table that differs from its CSV
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from csrs.experiment.verdict import method_label

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = ("README.md", "BENCHMARKS.md", "docs/**/*.md")

BLOCK = re.compile(r"(?P<open><!--\s*table:(?P<spec>.*?)-->)(?P<body>.*?)"
                   r"(?P<close><!--\s*end table\s*-->)", re.DOTALL)

LABELS = {
    "acc": "Acc", "acc_sd": "Acc sd", "rob_cs": "Rob_cs", "rob_cs_sd": "Rob_cs sd",
    "rob_cs_std": "Rob_cs^(std)", "rob_non_std": "Rob_non^(std)", "clean_cost": "clean cost",
    "cert_cost": "Cost_cert", "cert_cost_sd": "Cost_cert sd",
    "cert_cost_sensitive": "Cost_cert (sensitive)", "recall": "seed recall",
    "precision": "seed precision", "examples": "examples", "sensitive": "sensitive",
    "seeds": "seeds", "hparams": "chosen",
}

# The columns that hold a method's registry name, shown as the reports show it ("CS-RS@lam3").
METHOD_COLUMNS = ("method", "against")


def method_name(text: str) -> str:
    return "Zhang & Evans" if text == "zhang-evans" else method_label(text)


class TableError(ValueError):
    """A marker that cannot be rendered: bad words, an unknown column, no matching row."""


@dataclass
class Spec:
    path: str
    where: list[tuple[str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    bold: list[str] = field(default_factory=list)
    low: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    digits: int = 3


def parse_spec(text: str) -> Spec:
    """Return the table spec of an opening marker's words."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise TableError(f"cannot split the marker's words: {error}") from None
    if not words:
        raise TableError("the marker names no CSV file")
    spec = Spec(path=words[0])
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise TableError(f"'{word}' is not KEY=VALUE")
        if key.startswith("where:"):
            spec.where.append((key[len("where:"):], value))
        elif key.startswith("label:"):
            spec.labels[key[len("label:"):]] = value
        elif key in ("columns", "bold", "low"):
            setattr(spec, key, [item.strip() for item in value.split(",") if item.strip()])
        elif key == "digits":
            spec.digits = int(value)
        else:
            raise TableError(f"unknown key '{key}' (expected where:, columns, bold, low, "
                             f"label:, digits)")
    return spec


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def format_cell(text: str, digits: int) -> str:
    """Integers as integers, other numbers with ``digits`` decimals, NaN and empty as '-'."""
    text = text.strip()
    value = _number(text)
    if value is None:
        return text.replace("|", "\\|") or "-"
    if math.isnan(value):
        return "-"
    if re.fullmatch(r"[+-]?\d+", text):
        return f"{int(text):,}" if abs(int(text)) >= 10_000 else text
    return f"{value:.{digits}f}"


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def render(spec: Spec, root: Path | None = None) -> str:
    """Return the markdown that belongs between the markers of ``spec`` (paths relative to
    ``root``, the repository by default)."""
    path = (root or ROOT) / spec.path
    if not path.is_file():
        return (f"*Not run yet: `{spec.path}` is not in the repository, so there is no table "
                f"here.*")
    header, rows = read_rows(path)
    columns = spec.columns or header
    parts = {column: column.split("+-") for column in columns}
    needed = {name for names in parts.values() for name in names}
    needed |= {column for column, _ in spec.where} | set(spec.bold) | set(spec.low)
    missing = sorted(needed - set(header))
    if missing:
        raise TableError(f"{spec.path} has no column {', '.join(missing)}; it has "
                         f"{', '.join(header)}")
    for column, value in spec.where:
        rows = [row for row in rows if row[column] == value]
    if not rows:
        raise TableError(f"no row of {spec.path} matches "
                         + " and ".join(f"{c} = '{v}'" for c, v in spec.where))
    best = {}
    for column, pick in [*((c, max) for c in spec.bold), *((c, min) for c in spec.low)]:
        values = [v for v in (_number(row[column]) for row in rows)
                  if v is not None and not math.isnan(v)]
        if values:
            best[column] = pick(values)

    def cell(row: dict[str, str], column: str) -> str:
        names = parts[column]
        if column in METHOD_COLUMNS:
            return method_name(row[column])
        cells = [format_cell(row[name], spec.digits) for name in names]
        if names[0] in best and _number(row[names[0]]) == best[names[0]]:
            cells[0] = f"**{cells[0]}**"
        return " ± ".join(cells)

    def label(column: str) -> str:
        if column in spec.labels:
            return spec.labels[column]
        return " ± ".join(LABELS.get(name, name) for name in parts[column])

    numeric = {column: all(_number(row[parts[column][0]]) is not None
                           or row[parts[column][0]].strip() in ("", "-") for row in rows)
               for column in columns}
    lines = ["| " + " | ".join(label(c) for c in columns) + " |",
             "|" + "|".join("---:" if numeric[c] else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_text(text: str, root: Path | None = None) -> tuple[str, list[tuple[int, str]]]:
    """Return ``text`` with every table re-rendered, and the (line, CSV) of each table."""
    tables = []

    def replace(match: re.Match[str]) -> str:
        line = text.count("\n", 0, match.start()) + 1
        try:
            spec = parse_spec(match["spec"])
            body = render(spec, root)
        except TableError as error:
            raise TableError(f"line {line}: {error}") from None
        tables.append((line, spec.path))
        return f"{match['open']}\n{body}\n{match['close']}"

    return BLOCK.sub(replace, text), tables


def markdown_files(patterns: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        files += sorted(path for path in ROOT.glob(pattern) if path.is_file())
    return files


def changed_tables(old: str, new: str) -> list[int]:
    """Return the indices of the tables whose bodies differ between two versions of a file."""
    old_bodies = [m["body"] for m in BLOCK.finditer(old)]
    new_bodies = [m["body"] for m in BLOCK.finditer(new)]
    return [i for i, (a, b) in enumerate(zip(old_bodies, new_bodies, strict=True)) if a != b]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render (or, with --check, verify) the tables "
                                     "between '<!-- table: CSV ... -->' and '<!-- end table -->'.")
    parser.add_argument("files", nargs="*", type=Path,
                        help="markdown files (default: README.md, BENCHMARKS.md, docs/**/*.md)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a committed table differs from its CSV")
    args = parser.parse_args(argv)
    files = [path.resolve() for path in args.files] or markdown_files(DEFAULT_FILES)
    stale = []
    count = 0
    for path in files:
        text = path.read_text()
        try:
            new, tables = render_text(text)
        except TableError as error:
            print(f"error: {path.relative_to(ROOT)}: {error}", file=sys.stderr)
            return 2
        count += len(tables)
        if new == text:
            continue
        name = path.relative_to(ROOT)
        if args.check:
            for index in changed_tables(text, new):
                line, source = tables[index]
                stale.append(f"{name}:{line}: the table from {source} differs from what the "
                             f"CSV gives")
        else:
            path.write_text(new)
            print(f"updated {name}")
    if stale:
        print("\n".join(stale) + "\nrun 'make tables' (python scripts/tables.py) and commit",
              file=sys.stderr)
        return 1
    print(f"{count} tables in {len(files)} files " + ("match their CSVs" if args.check
                                                      else "rendered"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
