"""The ``csrs`` command line: thin wrappers that parse flags and call the library.

User errors (bad flags, files, specs) end in one line on stderr and exit status 2, without a
traceback; everything already written (result rows, checkpoints) stays on disk.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every option's default where its text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.required
                or action.default is argparse.SUPPRESS):
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the command and the problem."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(_fail(f"{self.prog}: {message} (see '{self.prog} --help')"))


class _Given(argparse._StoreAction):
    """Stores the value and notes that the option was given on the command line (so that a mode
    can refuse an option it would ignore, whatever its default)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        namespace.given = {*getattr(namespace, "given", set()), self.dest}


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _number_type(convert: Callable[[str], Any], accept: Callable[[Any], bool],
                 expected: str) -> Callable[[str], Any]:
    """Return an argparse type: ``convert(text)``, refused unless ``accept``-ed."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


_positive_int = _number_type(int, lambda value: value >= 1, "a positive integer")
_positive_float = _number_type(float, lambda value: 0 < value < math.inf, "a positive number")
_nonnegative_float = _number_type(float, lambda value: 0 <= value < math.inf, "a number >= 0")


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


# -- certify ----------------------------------------------------------------------------------
def _eps_list(text: str) -> tuple[float, ...]:
    """``0.25,0.5,1`` as radii: finite, >= 0, increasing."""
    values = []
    for part in text.split(","):
        value = _nonnegative_float(part.strip())
        values.append(value)
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise argparse.ArgumentTypeError(f"expected increasing radii like '0.25,0.5,1', got "
                                         f"'{text}'")
    return tuple(values)


# The certification modes each flag applies to (fixed n, --adaptive, --convex); a flag given to
# another mode is refused rather than silently ignored.
_MODE_FLAGS = {
    "n0": ("fixed", "adaptive"), "n": ("fixed", "adaptive"), "alpha": ("fixed", "adaptive"),
    "bounds": ("fixed",), "seed": ("fixed", "adaptive"), "sigma": ("fixed", "adaptive"),
    "amp": ("fixed", "adaptive"), "channels_last": ("fixed", "adaptive"),
    "compile": ("fixed", "adaptive"), "eps": ("adaptive", "convex"), "max_cost": ("adaptive",),
    "sequential": ("adaptive",),
}
_MODE_NAMES = {"fixed": "fixed-n certification", "adaptive": "--adaptive",
               "convex": "--convex"}
# Options with a real default, whose use is known from the command line alone (_Given).
_TRACKED = frozenset({"n0", "n", "alpha", "bounds", "seed", "sequential"})


def _add_certify(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "certify", help="certify a dataset with a trained checkpoint",
        description="Certify every example of a dataset split with the smoothed classifier of a "
                    "checkpoint. Fixed n (default): Cohen's standard certificate, Algorithm 1's "
                    "cost-sensitive one and the certified cost at every radius, from the same "
                    "samples. --adaptive: sequential tests that decide each radius of --eps and "
                    "stop as soon as the answers are known. --convex: Zhang & Evans's "
                    "deterministic certificate. Writes one TSV row per example and resumes an "
                    "interrupted run when --out already exists.")
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by 'csrs train' or "
                        "'csrs import'")
    parser.add_argument("--out", type=Path, required=True,
                        help="results TSV (resumed if present); its settings go to OUT.json")
    parser.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    parser.add_argument("--data-dir", help="directory of the dataset files (default: the "
                        "checkpoint's)")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="which split of the dataset to certify")
    parser.add_argument("--cost", help="cost spec, e.g. '3', '3->5,8' or with real costs "
                        "'3->5:10,8:2', or a .csv/.json/.npy matrix (default: the checkpoint's)")
    parser.add_argument("--sigma", type=_positive_float,
                        help="noise level (default: the checkpoint's training sigma)")
    parser.add_argument("--n0", type=_positive_int, default=100, action=_Given,
                        help="selection samples per example")
    parser.add_argument("--n", type=_positive_int, default=100_000, action=_Given,
                        help="estimation samples per example; with --adaptive the most a test "
                             "may draw")
    parser.add_argument("--alpha", type=_probability, default=0.001, action=_Given,
                        help="failure probability of each certificate")
    parser.add_argument("--bounds", choices=("sound", "paper"), default="sound", action=_Given,
                        help="fixed n: 'sound': max(R1, R2) holds with probability 1 - alpha; "
                             "'paper': Algorithm 1 exactly as printed, whose max(R1, R2) only "
                             "holds with probability 1 - 1.5*alpha")
    parser.add_argument("--batch", type=_positive_int, default=1000,
                        help="noisy samples per forward pass (--convex: examples, at most 256)")
    parser.add_argument("--skip", type=_positive_int, default=1,
                        help="certify every K-th example")
    parser.add_argument("--max", type=_positive_int, default=None,
                        help="certify at most K examples (default: all)")
    parser.add_argument("--seed", type=int, default=0, action=_Given, help="noise seed")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last memory format for image models (GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model's forward pass (GPU; the first batches "
                             "pay for compilation)")
    parser.add_argument("--adaptive", action="store_true",
                        help="decide 'certified at eps?' for each radius of --eps with one "
                             "sequential test per example, which stops as soon as the answers "
                             "are known (--n is then the most samples per example); guarantee "
                             "at the same alpha for the whole grid: no listed eps at or above "
                             "the true radius is certified, with probability >= 1 - alpha, "
                             "whatever the stopping time")
    parser.add_argument("--eps", type=_eps_list, default=None,
                        help="--adaptive: the radii to decide, e.g. 0.25,0.5,0.75,1.0; "
                             "--convex: the one radius to certify (default: none; fixed n "
                             "certifies every radius at once)")
    parser.add_argument("--max-cost", type=_nonnegative_float, default=None,
                        help="--adaptive: decide 'certified cost at eps <= T' for a real-valued "
                             "cost matrix, i.e. no class costing more than T can be reached "
                             "(default: no costly class at all)")
    parser.add_argument("--sequential", choices=("looks", "mixture"), default="looks",
                        action=_Given,
                        help="--adaptive: the sequential test, Clopper-Pearson at geometric "
                             "looks or a Beta-mixture confidence sequence")
    parser.add_argument("--convex", action="store_true",
                        help="Zhang & Evans's deterministic certificate at --eps from convex "
                             "(dual network) bounds instead of randomized smoothing; no alpha")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=_run_certify)


def _check_mode(args: argparse.Namespace) -> str:
    """The certification mode of ``args``; refuses flags that the mode would ignore, and fills
    in the defaults of those it takes."""
    if args.adaptive and args.convex:
        raise ValueError("--adaptive and --convex are two ways to certify; choose one")
    mode = "adaptive" if args.adaptive else "convex" if args.convex else "fixed"
    given = getattr(args, "given", set())
    for name, modes in _MODE_FLAGS.items():
        value = getattr(args, name)
        stated = name in given if name in _TRACKED else value not in (None, False)
        if stated and mode not in modes:
            where = " or ".join(_MODE_NAMES[m] for m in modes)
            raise ValueError(f"--{name.replace('_', '-')} applies to {where} only, not to "
                             f"{_MODE_NAMES[mode]}")
    if mode != "fixed" and args.eps is None:
        raise ValueError(f"{_MODE_NAMES[mode]} needs --eps, the l2 radius "
                         f"{'(or radii) ' if mode == 'adaptive' else ''}to decide at")
    if mode == "convex" and len(args.eps) != 1:
        raise ValueError(f"--convex certifies one radius; got --eps "
                         f"{','.join(f'{e:g}' for e in args.eps)}")
    return mode


def _run_certify(args: argparse.Namespace) -> int:
    from csrs.distributed import process_group

    mode = _check_mode(args)
    # Under torchrun every process runs this; they share the examples, rank 0 writes and prints.
    with process_group(args.device) as context:
        return _certify(args, mode, context)


def _certify(args: argparse.Namespace, mode: str, context) -> int:
    from csrs.certify import (
        CertifySettings,
        SequentialSettings,
        certify_dataset,
        decisions_of,
        model_fingerprint,
        select_indices,
    )
    from csrs.checkpoint import load_checkpoint
    from csrs.costs import CostMatrix
    from csrs.data import load_dataset
    from csrs.metrics import summarize
    from csrs.smoothing import SmoothedClassifier

    checkpoint = load_checkpoint(args.checkpoint)
    meta = checkpoint.meta
    cost = (CostMatrix.parse(args.cost, checkpoint.num_classes, checkpoint.class_names)
            if args.cost else checkpoint.cost_matrix())
    splits = load_dataset(args.dataset or meta["dataset"], args.data_dir or meta.get("data_dir"),
                          seed=int(meta.get("data_seed", 0)),
                          **dict(meta.get("data_options") or {}))
    if splits.num_classes != checkpoint.num_classes:
        return _fail(f"dataset '{splits.name}' has {splits.num_classes} classes; the "
                     f"checkpoint's model has {checkpoint.num_classes}")
    dataset = splits.test if args.split == "test" else splits.train
    indices = select_indices(len(dataset), skip=args.skip, max_examples=args.max)
    if mode == "convex":
        if context.distributed:
            return _fail("--convex certifies in one process only; launch it without torchrun")
        return _certify_convex(args, checkpoint, dataset, cost, indices)
    sigma = args.sigma or checkpoint.sigma
    if sigma != checkpoint.sigma and context.is_main:
        print(f"warning: certifying at sigma {sigma:g}; the model was trained at sigma "
              f"{checkpoint.sigma:g}", file=sys.stderr)
    smoothed = SmoothedClassifier(checkpoint.build_model(context.device), checkpoint.num_classes,
                                  sigma, device=context.device, seed=args.seed, amp=args.amp,
                                  channels_last=args.channels_last, compile=args.compile)
    if mode == "adaptive":
        settings = SequentialSettings(eps=args.eps, alpha=args.alpha, n0=args.n0,
                                      n_max=args.n, method=args.sequential,
                                      max_cost=args.max_cost)
    else:
        settings = CertifySettings(n0=args.n0, n=args.n, alpha=args.alpha, bounds=args.bounds)
    rows = certify_dataset(smoothed, dataset, cost, settings=settings, indices=indices,
                           batch_size=args.batch, out=args.out, progress=not args.quiet,
                           fingerprint=model_fingerprint(checkpoint.model_state),
                           checkpoint=args.checkpoint)
    if not context.is_main:
        return 0
    if mode == "adaptive":
        decisions = decisions_of(rows, cost, settings)
        at = [summarize(decisions, eps) for eps in settings.eps]
        robust = ", ".join(f"{s['rob_cs']:.3f} at {s['eps']:g}" for s in at)
        print(f"decided {at[0]['examples']} examples ({at[0]['sensitive']} sensitive) at eps "
              f"{', '.join(f'{e:g}' for e in settings.eps)} with {at[0]['mean_samples']:.0f} "
              f"samples on average -> {args.out}; Acc {at[0]['acc']:.3f}, Rob_cs {robust}. "
              f"Next: csrs report {args.out}")
        return 0
    summary = summarize(rows, 0.0)
    costs = "" if cost.is_binary else f", clean cost {summary['clean_cost']:.3f}"
    print(f"certified {summary['examples']} examples ({summary['sensitive']} sensitive) "
          f"-> {args.out}; Acc {summary['acc']:.3f}{costs}. Next: csrs report {args.out}")
    return 0


def _certify_convex(args: argparse.Namespace, checkpoint, dataset, cost, indices) -> int:
    from csrs.convex import certify_dataset_convex, check_convex_supported
    from csrs.metrics import DecisionArrays, summarize_decisions

    (eps,) = args.eps
    model = checkpoint.build_model(args.device)
    check_convex_supported(model, tuple(checkpoint.meta["input_shape"]))
    rows = certify_dataset_convex(model, dataset, cost, eps=eps,
                                  batch_size=min(args.batch, 256), indices=indices, out=args.out,
                                  progress=not args.quiet)
    summary = summarize_decisions(DecisionArrays.from_convex(rows, {}))
    print(f"certified {summary['examples']} examples at eps {eps:g} (convex bounds) -> "
          f"{args.out}; clean Acc {summary['acc']:.3f}, Rob_cs {summary['rob_cs']:.3f}. "
          f"Next: csrs report {args.out}")
    return 0


# -- report -----------------------------------------------------------------------------------
def _add_report_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("results", type=Path, nargs="+",
                        help="results TSVs of 'csrs certify' (any mode) or logs of Cohen et "
                             "al.'s certify.py")
    parser.add_argument("--eps", type=_eps_list, default=None,
                        help="l2 radii at which robustness is counted, e.g. 0.5 or 0.25,0.5 "
                             "(default: the radii the sequential files decided, else 0.5)")
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    parser.add_argument("--cost", default=None,
                        help="cost spec for Cohen's logs, which hold none: Rob_cs from their "
                             "radius as R1 (a lower bound) and the certified cost from it "
                             "(default: none; files of csrs carry their own)")
    parser.add_argument("--classes", type=_positive_int, default=None,
                        help="number of classes of the task, with --cost (default: the largest "
                             "class in the logs + 1)")


def _add_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report", help="metrics, table and plots from result files",
        description="Acc, Rob_cs, Rob_cs^(std) and Rob_non^(std) at each --eps for each results "
                    "file (each by its own kind: radii, sequential decisions, convex decisions, "
                    "Cohen's logs), with the clean cost and the certified cost Cost_cert(eps) "
                    "(and, for two-class tasks, the costly seed class's recall and precision), "
                    "printed as a table; writes report.md (with the settings each file was "
                    "certified with), summary.csv, per_class.csv, the curves and the certified "
                    "cost curves (PNG) to --out.")
    _add_report_arguments(parser, "directory for the report (default: beside the first "
                                  "results file, <name>-report/)")
    parser.set_defaults(run=_run_report, compare=False)


def _add_compare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare", help="several result files side by side (table and curves)",
        description="Put several results files side by side: the metrics table at each --eps "
                    "and the Rob_cs and certified-cost curves over eps in one plot each.")
    _add_report_arguments(parser, "directory for the report (default: compare/)")
    parser.set_defaults(run=_run_report, compare=True)


def _run_report(args: argparse.Namespace) -> int:
    from csrs.costs import CostMatrix
    from csrs.report import write_report
    from csrs.results import load_results

    files = {}
    for path in args.results:
        name = path.stem if path.stem not in files else str(path)
        files[name] = load_results(path)
    cost = None
    if args.classes is not None and args.cost is None:
        return _fail("--classes goes with --cost (the cost matrix of Cohen's logs)")
    if args.cost is not None:
        labels = [int(row[key]) for f in files.values() for row in f.rows
                  for key in ("label", "predict")]
        classes = args.classes or max(labels) + 1
        cost = CostMatrix.parse(args.cost, classes)
    default = Path("compare") if args.compare else \
        args.results[0].with_name(args.results[0].stem + "-report")
    text, written = write_report(files, args.out or default, eps=args.eps, cost=cost,
                                 compare=args.compare)
    print(text)
    print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


# -- train ------------------------------------------------------------------------------------
# Method flags: (flag, hyperparameter name, type, help with the paper's symbol).
_METHOD_FLAGS = [
    ("--weight", "weight", float, "alpha_w, weight of sensitive examples (cohen-r; default 1.2)"),
    ("--weighting", "weighting", str, "how cohen-r weights: 'example' (each sensitive example's "
                                      "loss x alpha_w; default), 'group' (mean loss of the "
                                      "normal examples + alpha_w x that of the sensitive ones) "
                                      "or 'batch' (the authors' code: batch mean + (alpha_w - 1) "
                                      "x the sensitive mean)"),
    ("--num-noise", "num_noise", int, "k, noise draws per example (macer, csrs, margin-cs; "
                                      "default 16); m_train (smoothadv, smoothadv-cs; default 4)"),
    ("--beta", "beta", float, "beta, inverse temperature of the soft smoothed classifier "
                              "(macer, csrs, margin-cs; default 16)"),
    ("--gamma", "gamma", float, "gamma, hinge threshold on the PhiInv gap (macer; default 8)"),
    ("--gamma1", "gamma1", float, "gamma_1, hinge threshold of normal examples (csrs: I2 over all "
                                  "examples; margin-cs; default 4)"),
    ("--gamma2", "gamma2", float, "gamma_2, hinge threshold of sensitive examples (csrs: I3; "
                                  "margin-cs; default 16)"),
    ("--lam", "lam", float, "lambda, weight of the robustness terms (macer, csrs; default 12)"),
    ("--lam1", "lam1", float, "lambda_1, weight of the normal examples' hinge (margin-cs; "
                              "default 3)"),
    ("--lam2", "lam2", float, "lambda_2, weight of the sensitive examples' cost-weighted hinges "
                              "(margin-cs; default 3)"),
    ("--ce", "ce", str, "classification loss of margin-cs: 'per-draw' (Cohen's cross-entropy on "
                        "each noisy draw; default) or 'smoothed' (MACER's NLL of the soft "
                        "smoothed classifier)"),
    ("--window", "window", str, "gap window of margin-cs's sensitive hinge: 'nonnegative' "
                                "[0, gamma_2] (default) or 'signed' [-gamma_2, gamma_2]"),
    ("--pair-gap", "pair_gap", str, "the class margin-cs's pairwise gaps start from: 'label' "
                                    "(PhiInv(p_y) - PhiInv(p_j): trains the right class to win; "
                                    "default) or 'top' (PhiInv(max_k p_k) - PhiInv(p_j), the "
                                    "pairwise radius certification uses; a constant, "
                                    "gradient-free hinge where the costly class j is on top)"),
    ("--variant", "variant", str, "how smoothadv-cs uses the costs: 'attack' (PGD towards the "
                                  "cost-weighted mass of the costly classes; default, the only "
                                  "one that puts the costs into the attack) or 'reweight' "
                                  "(SmoothAdv's attack unchanged, each example's loss x "
                                  "1 + (--weight - 1) x its row's largest cost, Cohen-R's "
                                  "weighting; --weight default 1.2)"),
    ("--steps", "steps", int, "T, PGD steps of the attack (smoothadv, smoothadv-cs; default 4)"),
    ("--eps", "eps", float, "eps, l2 radius of training (smoothadv, smoothadv-cs: the attack's, "
                            "default 0.5; zhang-evans: the convex robust loss's, default 0.25)"),
    ("--kappa", "kappa", float, "kappa, weight of the robust loss (zhang-evans; default 1)"),
    ("--eps-warmup", "eps_warmup", int, "epochs over which eps grows linearly to --eps "
                                        "(smoothadv, smoothadv-cs: default 10; zhang-evans: 5)"),
]


def _kind_type(kind: Any) -> Callable[[str], Any]:
    """Return an argparse type that reads a :class:`csrs.schema.Kind` from a word."""
    def parse(text: str) -> Any:
        try:
            return kind.from_text(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def _default_text(default: Any) -> str:
    if default is False:
        return "off"
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)


def _add_train(commands: argparse._SubParsersAction) -> None:
    from dataclasses import MISSING

    from csrs.schema import BOOL
    from csrs.training_config import train_options

    parser = commands.add_parser(
        "train", help="train a base classifier for a smoothed classifier",
        description="Train a base classifier under Gaussian noise with one of the methods "
                    "cohen, cohen-r, macer, csrs (the paper's Eq. 2), margin-cs (the 2025 "
                    "version's objective), smoothadv or smoothadv-cs (adversarial training of "
                    "the smoothed classifier), or zhang-evans (convex bounds, no noise). "
                    "Defaults follow MACER's published CIFAR-10 schedule; zhang-evans follows "
                    "Wong & Kolter. The checkpoint carries everything 'csrs certify' needs. "
                    "Re-running the same command resumes from the checkpoint at --out (a "
                    "finished one is left as it is); --restart trains from scratch over it.")
    for name, option, default in train_options():
        flag = "--" + name.replace("_", "-")
        if option.kind is BOOL:
            parser.add_argument(flag, action="store_true",
                                help=f"{option.help} (default: {_default_text(default)})")
            continue
        shown = option.default_text or ("required" if default is MISSING
                                        else f"default: {_default_text(default)}")
        parser.add_argument(flag, type=_kind_type(option.kind), required=default is MISSING,
                            default=None if default is MISSING else default,
                            metavar=name.upper(), help=f"{option.help} ({shown})")
    parser.add_argument("--resume", action="store_true",
                        help="accepted for old scripts: re-running resumes anyway (default: "
                             "resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    group = parser.add_argument_group("method hyperparameters (paper symbol, default)")
    for flag, _, kind, text in _METHOD_FLAGS:
        group.add_argument(flag, type=kind, default=None, help=text)
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from csrs.distributed import process_group
    from csrs.training import TrainConfig, train
    from csrs.training_config import train_options

    if args.resume and args.restart:
        return _fail("csrs train: --resume and --restart contradict each other (re-running "
                     "resumes by default; --restart alone trains from scratch)")
    hparams = {name: getattr(args, name) for _, name, _, _ in _METHOD_FLAGS
               if getattr(args, name) is not None}
    settings = {name: getattr(args, name) for name, _, _ in train_options()}
    # Under torchrun every process runs this (DistributedDataParallel); rank 0 saves and prints.
    with process_group(args.device) as context:
        config = TrainConfig(**{**settings, "device": context.device}, hparams=hparams)
        result = train(config, progress=not args.quiet)
        if not context.is_main:
            return 0
    if result.start_epoch == result.epochs:
        print(f"'{result.path}' is already trained: epoch {result.epochs} of {result.epochs}; "
              f"nothing to do (--restart trains it again from scratch). "
              f"Next: csrs certify {result.path} --out results.tsv")
        return 0
    last = result.history[-1] if result.history else {}
    kind = "clean" if args.method == "zhang-evans" else "noisy"
    resumed = f" (resumed from epoch {result.start_epoch})" if result.start_epoch else ""
    print(f"trained {args.method} on {args.dataset} for {result.epochs} epochs{resumed} -> "
          f"{result.path}" + (f"; {kind} train accuracy {last['acc']:.3f}" if "acc" in last else "")
          + f". Next: csrs certify {result.path} --out results.tsv")
    return 0


# -- experiments ------------------------------------------------------------------------------
def _print_summary(summary: list[dict]) -> None:
    from csrs.experiment.verdict import method_label
    from csrs.report import markdown_table, metric_columns

    groups: dict[tuple[str, str], list[dict]] = {}
    for row in summary:
        groups.setdefault((row["dataset"], row["cost"]), []).append(row)
    for (dataset, cost), rows in groups.items():
        shown = [{**row, "method": method_label(row["method"])}
                 for row in rows]
        seeds = max(int(row["seeds"]) for row in rows)
        print(f"\n{dataset}, cost '{cost}'" + (f" (mean over {seeds} seeds)" if seeds > 1
                                               else ""))
        metrics = metric_columns(rows)
        print(markdown_table(shown, ["method", *metrics],
                             bold_best=[m for m in metrics if m not in ("recall", "precision")]))


def _add_experiment(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "experiment", help="train and certify every combination of a TOML config",
        description="Train and certify every data set x cost x method x seed of an experiment "
                    "config (see experiments/*.toml), tune on a validation split, and write "
                    "summary.csv, report.md and plots. Re-running continues where it stopped.")
    parser.add_argument("config", type=Path, help="experiment TOML file")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: results/<config file name>)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress output (default: off)")
    parser.set_defaults(run=_run_experiment)


def _run_experiment(args: argparse.Namespace) -> int:
    from csrs.experiment import load_config, run_experiment

    config = load_config(args.config)
    out = args.out or Path("results") / args.config.stem
    summary = run_experiment(config, out, quiet=args.quiet)
    _print_summary(summary)
    print(f"\nreport: {out / 'report.md'}")
    return 0


def _add_demo(commands: argparse._SubParsersAction) -> None:
    from csrs.experiment import demo_summary

    parser = commands.add_parser(
        "demo", help="the embedded default experiment on bundled data",
        description=demo_summary())
    parser.add_argument("--out", type=Path, default=Path("demo-results"),
                        help="output directory (default: demo-results/)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny budget (1 epoch, few samples and examples): checks the "
                             "pipeline in seconds; its numbers mean nothing (default: off)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress output (default: off)")
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from csrs.experiment import demo_config, run_experiment

    started = time.perf_counter()
    summary = run_experiment(demo_config(quick=args.quick), args.out, quiet=args.quiet)
    _print_summary(summary)
    print(f"\nreport: {args.out / 'report.md'} ({time.perf_counter() - started:.0f} s)")
    return 0


# -- import -----------------------------------------------------------------------------------
def _add_import(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "import", help="turn a published smoothed model into a csrs checkpoint",
        description="Convert a checkpoint of Cohen et al.'s code (also SmoothAdv, Consistency, "
                    "SmoothMix: --from cohen) or of MACER's (--from macer) into a csrs "
                    "checkpoint whose model gives the same logits on [0, 1] inputs, for 'csrs "
                    "certify'. The file is read with torch.load(weights_only=True).")
    parser.add_argument("source", type=Path, help="the published checkpoint file")
    parser.add_argument("--from", dest="source_format", required=True,
                        help="its format: cohen or macer")
    parser.add_argument("--sigma", type=_positive_float, required=True,
                        help="the noise level it was trained at (the files do not record it; "
                             "Cohen's keep it in the folder name, e.g. noise_0.25)")
    parser.add_argument("--out", type=Path, required=True, help="csrs checkpoint to write")
    parser.add_argument("--dataset", help="cifar10 or imagenet (default: the architecture's)")
    parser.add_argument("--arch", help="the source's architecture where the file does not "
                        "record it (macer: resnet110, the default)")
    parser.add_argument("--data-dir", help="directory of the dataset files, kept for certify "
                        "(default: none; certify --data-dir can give it later)")
    parser.add_argument("--cost", help="cost spec kept for certify (default: the dataset's)")
    parser.set_defaults(run=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from csrs.checkpoint import load_checkpoint
    from csrs.published import import_published

    path = import_published(args.source, args.out, source=args.source_format, sigma=args.sigma,
                            dataset=args.dataset, arch=args.arch, data_dir=args.data_dir,
                            cost=args.cost)
    meta = load_checkpoint(path).meta
    print(f"imported {args.source_format}'s {meta['source']['arch']} ({meta['dataset']}, "
          f"trained at sigma {meta['sigma']:g}) as {meta['arch']} -> {path}. "
          f"Next: csrs certify {path} --out results.tsv")
    return 0


# -- entry point ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from csrs import __version__

    parser = _Parser(prog="csrs", description="Provably robust cost-sensitive learning with "
                     "randomized smoothing: train, certify and report.")
    parser.add_argument("--version", action="version", version=f"csrs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=_Parser)
    commands.required = True
    for add in _COMMANDS:
        add(commands)
    return parser


_COMMANDS = [_add_demo, _add_train, _add_certify, _add_report, _add_compare,
             _add_experiment, _add_import]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``csrs`` command line; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.run(args) or 0)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else _fail(str(exit_.code))
    except KeyboardInterrupt:
        return _fail("interrupted; rows and checkpoints written so far are kept "
                     "(re-run the same command to resume)")
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return _fail(message)


if __name__ == "__main__":
    sys.exit(main())
