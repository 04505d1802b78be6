"""The documentation keeps its promises: the README's commands and Python example run, every
table matches its CSV, the CLI reference covers the parser, and nothing cites a file outside the
repository."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from csrs.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import cli_reference  # noqa: E402
import comparison_2025  # noqa: E402
import tables  # noqa: E402

README = ROOT / "README.md"


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def _tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    suffixes = {".md", ".py", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".csv", ".js", ""}
    return [ROOT / name for name in listed
            if Path(name).suffix in suffixes and (ROOT / name).is_file()]


# A citation of the specification files that live beside the repository, or of absolute paths
# of the machines it was written on: a reader of the repository cannot follow either.
OUTSIDE = re.compile(r"\bNOTES\b|NOTES\.md|paper\.md|/work/|shared/spec")
DOCS_OWNED = ("README.md", "BENCHMARKS.md", "mkdocs.yml", "docs/", "scripts/",
              "tests/test_docs.py")


def _citations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    return found


def test_readme_fits_in_ten_thousand_characters():
    assert len(README.read_text()) <= 10_000


def test_documentation_cites_nothing_outside_the_repository():
    owned = [path for path in _tracked_text_files()
             if str(path.relative_to(ROOT)).startswith(DOCS_OWNED)]
    assert owned
    assert _citations(owned) == []


def test_no_tracked_file_cites_a_file_outside_the_repository():
    assert _citations(_tracked_text_files()) == []


def test_every_committed_table_matches_its_csv():
    assert tables.main(["--check"]) == 0


@pytest.mark.slow
def test_readme_commands_and_python_example_run(tmp_path, monkeypatch):
    """The first screen's CLI lines (with a smaller budget appended: argparse keeps the last
    value) and its Python example, as written, in a fresh directory."""
    text = README.read_text()
    commands = [line.split("#")[0].strip() for block in _blocks(text, "bash")
                for line in block.splitlines() if line.startswith("csrs ")]
    smaller = {"train": ["--epochs", "2", "--quiet"], "certify": ["--n", "200", "--max", "20",
                                                                  "--quiet"]}
    names = [shlex.split(command)[1] for command in commands[:3]]
    assert names == ["train", "certify", "report"]
    monkeypatch.chdir(tmp_path)
    for command in commands[:3]:
        argv = shlex.split(command)[1:]
        assert main(argv + smaller.get(argv[0], [])) == 0, command
    example = _blocks(text, "python")[0]
    assert len(example.strip().splitlines()) <= 12
    output = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert output.returncode == 0, output.stderr
    lines = output.stdout.splitlines()
    assert len(lines) == 4 and lines[1].startswith("eps 0.25: certified worst-case cost ")


def test_cli_reference_covers_every_subcommand_and_option():
    reference = cli_reference.cli_reference()
    parser = build_parser()
    commands = cli_reference._subcommands(parser)
    assert {name for name, _, _ in commands} >= {"demo", "train", "certify", "report", "compare",
                                                 "experiment", "import"}
    for name, _, sub in commands:
        assert f"## `csrs {name}`" in reference
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in reference, (name, option)


def test_cli_reference_shows_defaults():
    reference = cli_reference.cli_reference()
    certify = reference.split("## `csrs certify`")[1].split("\n## ")[0]
    assert re.search(r"\| `--n` `N` \| `100000` \|", certify)
    assert re.search(r"\| `--alpha` `ALPHA` \| `0.001` \|", certify)
    assert re.search(r"\| `--out` `OUT` \| required \|", certify)


# -- scripts/tables.py --------------------------------------------------------------------------
CSV = "dataset,cost,method,acc,acc_sd,cert_cost\n" \
      "digits,3,cohen,0.8448,0.0100,0.0599\n" \
      'digits,"3->5:10,8:4",csrs,0.7805,0.0200,0.1951\n' \
      'digits,"3->5:10,8:4",cohen-r@group,0.8049,,0.0976\n'


def _page(tmp_path: Path, marker: str, body: str = "") -> str:
    (tmp_path / "r.csv").write_text(CSV)
    return f"before\n<!-- table: {marker} -->\n{body}<!-- end table -->\nafter\n"


def test_tables_filter_format_and_bold(tmp_path):
    page = _page(tmp_path, 'r.csv where:dataset=digits "where:cost=3->5:10,8:4" '
                           "columns=method,acc+-acc_sd,cert_cost bold=acc low=cert_cost")
    rendered, found = tables.render_text(page, tmp_path)
    assert found == [(2, "r.csv")]
    assert rendered.splitlines()[2:7] == [
        "| method | Acc ± Acc sd | Cost_cert |",
        "|---|---:|---:|",
        "| CS-RS | 0.780 ± 0.020 | 0.195 |",
        "| Cohen-R@group | **0.805** ± - | **0.098** |",
        "<!-- end table -->",
    ]
    assert rendered.startswith("before\n") and rendered.endswith("after\n")


def test_tables_say_when_a_csv_is_not_committed_yet(tmp_path):
    rendered, _ = tables.render_text(_page(tmp_path, "missing.csv columns=acc"), tmp_path)
    assert "Not run yet: `missing.csv` is not in the repository" in rendered
    assert "|" not in rendered


@pytest.mark.parametrize("marker, message", [
    ("r.csv columns=acc,rob_cs", "has no column rob_cs"),
    ("r.csv where:dataset=cifar10", "no row of r.csv matches dataset = 'cifar10'"),
    ("r.csv colour=red", "unknown key 'colour'"),
])
def test_tables_refuse_bad_markers(tmp_path, marker, message):
    with pytest.raises(tables.TableError, match=re.escape(message)):
        tables.render_text(_page(tmp_path, marker), tmp_path)


def test_tables_check_names_a_table_that_drifted(tmp_path, monkeypatch, capsys):
    stale = _page(tmp_path, "r.csv where:method=cohen columns=method,acc",
                  "| method | Acc |\n|---|---:|\n| Cohen | 0.900 |\n")
    page = tmp_path / "page.md"
    page.write_text(stale)
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    assert tables.main(["--check", str(page)]) == 1
    error = capsys.readouterr().err
    assert "page.md:2: the table from r.csv differs from what the CSV gives" in error
    assert page.read_text() == stale
    assert tables.main([str(page)]) == 0
    assert "| Cohen | 0.845 |" in page.read_text()
    assert tables.main(["--check", str(page)]) == 0


# -- scripts/comparison_2025.py -------------------------------------------------------------------
def test_comparison_verdict_is_what_its_summary_gives():
    """The committed verdict of the 2025 comparison follows from the committed summary by the
    script's rules, and its cost-blind methods are the library's."""
    from csrs.experiment.config import COST_BLIND

    assert comparison_2025.COST_BLIND == COST_BLIND
    if not comparison_2025.SUMMARY.is_file():
        pytest.skip("the comparison has not been run yet")
    summary = comparison_2025.read_csv(comparison_2025.SUMMARY)
    assert set(comparison_2025.COLUMNS) <= set(summary[0])
    expected = [{column: str(comparison_2025._cell(row.get(column, "")))
                 for column in comparison_2025.VERDICT_COLUMNS}
                for row in comparison_2025.verdict_rows(summary)]
    assert comparison_2025.read_csv(comparison_2025.VERDICT) == expected


SUMMARY_ROWS = [
    {"dataset": "d", "cost": "c", "method": method, "acc": acc, "acc_sd": "0.01", "rob_cs": rob,
     "rob_cs_sd": "0.02", "cert_cost": cost, "cert_cost_sd": "0.01"}
    for method, acc, rob, cost in [("cohen", "0.85", "0.40", "0.30"),
                                   ("smoothadv", "0.60", "0.90", "0.05"),
                                   ("macer", "0.83", "0.45", "0.28"),
                                   ("cohen-r", "0.84", "0.60", "0.20"),
                                   ("csrs", "0.80", "0.52", "0.25"),
                                   ("margin-cs", "0.84", "0.50", "0.19"),
                                   ("margin-cs@top", "0.84", "0.50", "0.10")]]


def test_comparison_verdict_rules_by_hand():
    rows = {(row["method"], row["test"]): row
            for row in comparison_2025.verdict_rows(SUMMARY_ROWS)}
    # SmoothAdv (25 points below Cohen) is the best cost-blind method, MACER the best within the
    # budget: 0.52 - 0.45 = 0.07 clears the bar 0.05 and the spread over seeds, 0.02 + 0.02.
    assert rows["csrs", "Rob_cs vs the best cost-blind method"]["against"] == "smoothadv"
    gain = rows["csrs", "Rob_cs vs the best cost-blind method within 0.03 of Cohen's Acc"]
    assert gain["against"] == "macer" and gain["beyond_spread"] == "yes"
    assert gain["outcome"] == "holds"
    assert rows["csrs", "Acc vs Cohen"]["outcome"] == "does not hold"
    # Margin-CS's rival is never its other reading: SmoothAdv among all, Cohen-R at matched Acc
    # (MACER, exactly 0.02 below Cohen, is in; CS-RS is not), 0.01 lower: within the spread.
    lowest = rows["margin-cs", "Cost_cert vs the lowest other method"]
    assert lowest["against"] == "smoothadv" and lowest["outcome"] == "does not hold"
    matched = rows["margin-cs", "Cost_cert vs the lowest other method within 0.02 of Cohen's Acc"]
    assert matched["against"] == "cohen-r" and matched["outcome"] == "holds on the means only"
    assert rows["margin-cs@top", "Acc vs Cohen"]["outcome"] == "holds"


# -- links into the documentation ----------------------------------------------------------------
def _anchors(markdown: Path) -> set[str]:
    return set(re.findall(r"\{#([\w-]+)\}", markdown.read_text()))


def test_readme_and_benchmarks_link_to_files_and_anchors_that_exist():
    for page in (README, ROOT / "BENCHMARKS.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            assert (page.parent / path).exists(), (page.name, target)
            if anchor:
                assert anchor in _anchors(page.parent / path), (page.name, target)


def test_citations_of_the_theory_page_name_sections_that_exist():
    """Docstrings cite 'docs/theory.md, section `name`' (or docs/theory.md#name); each name must
    be an anchor of the page."""
    anchors = _anchors(ROOT / "docs" / "theory.md")
    cited = re.compile(r"theory\.md(?:, section `?|#)([\w-]+)")
    missing = [f"{path.relative_to(ROOT)}: {name}" for path in _tracked_text_files()
               if path != Path(__file__).resolve()
               for name in cited.findall(path.read_text(errors="replace"))
               if name not in anchors]
    assert missing == []
