"""The layers look down only: each module of the certification stack imports (at the top or
lazily inside a function) only modules below it, and the statistics and reporting layers never
import torch, so that they can be checked on simulated counts and read without the model stack."""

import ast
from pathlib import Path

import csrs

PACKAGE = Path(csrs.__file__).parent
# Bottom to top.
STACK = ["costs", "rng", "progress", "stats", "sequential", "results", "metrics", "report",
         "sampling", "smoothing", "distributed", "certify"]
TORCH_FREE = ["costs", "progress", "stats", "sequential", "results", "metrics", "report"]


def _imports(module: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_each_layer_imports_only_the_layers_below_it():
    for position, module in enumerate(STACK):
        used = {name.split(".")[1] for name in _imports(module) if name.startswith("csrs.")}
        above = used & set(STACK[position:])
        assert not above, f"{module} imports {sorted(above)}, which lie above it or at its level"
        assert not used & {"cli", "experiment", "training", "objectives"}, module


def test_statistics_and_reports_import_no_torch():
    for module in TORCH_FREE:
        assert not {name for name in _imports(module) if name.split(".")[0] == "torch"}, module


def test_nothing_but_the_cli_imports_the_experiment_runner():
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("cli", "__init__"):
            continue
        assert not any(name.startswith("csrs.experiment") for name in _imports(path.stem)), path
