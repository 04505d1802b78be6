"""Copy the results of `make demo` into docs/results/, which README.md and the site render.

    python scripts/demo_results.py demo-results --time-log LOG --commit SHA

reads demo-results/summary.csv and zhang_evans.csv (every cell copied as the run wrote it) and
the figures the pages show, and records in docs/results/provenance.csv which command, machine and
commit made them (LOG: the demo's output, ending with the report of ``/usr/bin/time -v``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from comparison_2025 import RESULTS, add_provenance, read_csv, write_csv

TABLES = (("summary.csv", "demo.csv"), ("zhang_evans.csv", "demo_zhang_evans.csv"))
FIGURES = (("curves_digits_3.png", "demo_curves_digits_3.png"),
           ("cost_digits_3to5x10_8x4.png", "demo_cost_digits_graded.png"),
           ("r1_vs_r2_digits_3to5x10_8x4.png", "demo_r1_vs_r2_digits_graded.png"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the demo's --out directory")
    parser.add_argument("--time-log", type=Path, required=True,
                        help="the demo's output, ending with the report of /usr/bin/time -v")
    parser.add_argument("--commit", required=True, help="the commit the demo ran at")
    args = parser.parse_args(argv)
    for source, _ in (*TABLES, *FIGURES):
        if not (args.run / source).is_file():
            parser.error(f"{args.run / source} does not exist")
    for source, target in TABLES:
        rows = read_csv(args.run / source)
        write_csv(RESULTS / target, rows, list(rows[0]))
        add_provenance(args.time_log, args.commit, f"make demo ({source})", RESULTS / target)
    for source, target in FIGURES:
        shutil.copyfile(args.run / source, RESULTS / target)
    print(f"wrote {len(TABLES)} tables and {len(FIGURES)} figures to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
