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


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the command and the problem."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(_fail(f"{self.prog}: {message} (see '{self.prog} --help')"))


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
def _add_certify(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "certify", help="certify a dataset with a trained checkpoint",
        description="Certify every example of a dataset split with the smoothed classifier of a "
                    "checkpoint: Cohen's standard certificate and Algorithm 1's cost-sensitive "
                    "one, from the same samples. Writes one TSV row per example and resumes an "
                    "interrupted run when --out already exists.")
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by 'csrs train'")
    parser.add_argument("--out", type=Path, required=True, help="results TSV (resumed if present)")
    parser.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    parser.add_argument("--data-dir", help="directory of the dataset files (default: the "
                        "checkpoint's)")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--cost", help="cost spec, e.g. '3', '3->5,8' or with real costs "
                        "'3->5:10,8:2' (default: the checkpoint's cost matrix)")
    parser.add_argument("--sigma", type=_positive_float,
                        help="noise level (default: the checkpoint's training sigma)")
    parser.add_argument("--n0", type=_positive_int, default=100,
                        help="selection samples (default 100)")
    parser.add_argument("--n", type=_positive_int, default=100_000,
                        help="estimation samples (default 100000)")
    parser.add_argument("--alpha", type=_probability, default=0.001,
                        help="failure probability of each certificate (default 0.001)")
    parser.add_argument("--bounds", choices=("sound", "paper"), default="sound",
                        help="'sound' (default): max(R1, R2) holds with probability 1 - alpha; "
                             "'paper': Algorithm 1 exactly as printed, whose max(R1, R2) only "
                             "holds with probability 1 - 1.5*alpha")
    parser.add_argument("--batch", type=_positive_int, default=1000,
                        help="noisy samples per forward pass (default 1000)")
    parser.add_argument("--skip", type=_positive_int, default=1,
                        help="certify every K-th example (default 1)")
    parser.add_argument("--max", type=_positive_int, default=None,
                        help="certify at most K examples")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last memory format for image models (GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model's forward pass (GPU; the first batches "
                             "pay for compilation)")
    parser.add_argument("--eps", type=_nonnegative_float, default=None,
                        help="radius to decide at (with --adaptive or --convex)")
    parser.add_argument("--adaptive", action="store_true",
                        help="decide 'certified at --eps?' with a sequential test that stops as "
                             "soon as the answer is known (--n is then the most samples per "
                             "example); same guarantee: P(certified and true radius < eps) <= "
                             "alpha whatever the stopping time")
    parser.add_argument("--max-cost", type=_nonnegative_float, default=None,
                        help="with --adaptive: decide 'certified cost at --eps <= T' for a "
                             "real-valued cost matrix, i.e. no class costing more than T can be "
                             "reached (default: no costly class at all)")
    parser.add_argument("--sequential", choices=("looks", "mixture"), default="looks",
                        help="the sequential test of --adaptive: Clopper-Pearson at geometric "
                             "looks (default) or a Beta-mixture confidence sequence")
    parser.add_argument("--convex", action="store_true",
                        help="Zhang & Evans's deterministic certificate at --eps from convex "
                             "(dual network) bounds instead of randomized smoothing; no alpha")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_certify)


def _run_certify(args: argparse.Namespace) -> int:
    from csrs.distributed import process_group

    # Under torchrun every process runs this; they share the examples, rank 0 writes and prints.
    with process_group(args.device) as context:
        return _certify_smoothed(args, context)


def _certify_smoothed(args: argparse.Namespace, context) -> int:
    from csrs.certify import CertifySettings, certify_dataset, model_fingerprint, select_indices
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
    if args.convex:
        if context.distributed:
            return _fail("--convex certifies in one process only; launch it without torchrun")
        return _certify_convex(args, checkpoint, dataset, cost, indices)
    if args.adaptive and args.eps is None:
        return _fail("--adaptive needs --eps, the l2 radius to decide at")
    if args.adaptive and context.distributed:
        return _fail("--adaptive certifies in one process only; launch it without torchrun")
    if args.max_cost is not None and not args.adaptive:
        return _fail("--max-cost goes with --adaptive; a fixed-n run records the certified cost "
                     "at every eps (see 'csrs report')")
    sigma = args.sigma or checkpoint.sigma
    if sigma != checkpoint.sigma and context.is_main:
        print(f"warning: certifying at sigma {sigma:g}; the model was trained at sigma "
              f"{checkpoint.sigma:g}", file=sys.stderr)
    smoothed = SmoothedClassifier(checkpoint.build_model(context.device), checkpoint.num_classes,
                                  sigma, device=context.device, seed=args.seed, amp=args.amp,
                                  channels_last=args.channels_last, compile=args.compile)
    settings = CertifySettings(n0=args.n0, n=args.n, alpha=args.alpha, bounds=args.bounds,
                               sigma=sigma, seed=args.seed, cost=cost.spec(),
                               noise_block=smoothed.noise_block)
    fingerprint = model_fingerprint(checkpoint.model_state)
    if args.adaptive:
        from csrs.adaptive import certify_dataset_adaptive
        from csrs.metrics import summarize_decisions

        rows = certify_dataset_adaptive(
            smoothed, dataset, cost, eps=args.eps, alpha=args.alpha, n0=args.n0, n_max=args.n,
            batch_size=args.batch, indices=indices, out=args.out, progress=not args.quiet,
            method=args.sequential, max_cost=args.max_cost, fingerprint=fingerprint)
        summary = summarize_decisions(rows)
        print(f"decided {summary['examples']} examples at eps {args.eps} with "
              f"{summary['mean_samples']:.0f} samples on average -> {args.out}; Acc "
              f"{summary['acc']:.3f}, Rob_cs {summary['rob_cs']:.3f}. "
              f"Next: csrs report {args.out}")
        return 0
    rows = certify_dataset(smoothed, dataset, cost, settings=settings, indices=indices,
                           batch_size=args.batch, out=args.out, progress=not args.quiet,
                           fingerprint=fingerprint)
    summary = summarize(rows, 0.0)
    if context.is_main:
        costs = "" if cost.is_binary else f", clean cost {summary['clean_cost']:.3f}"
        print(f"certified {summary['examples']} examples ({summary['sensitive']} sensitive) "
              f"-> {args.out}; Acc {summary['acc']:.3f}{costs}. Next: csrs report {args.out}")
    return 0


def _certify_convex(args: argparse.Namespace, checkpoint, dataset, cost, indices) -> int:
    from csrs.convex import certify_dataset_convex, check_convex_supported
    from csrs.metrics import summarize_decisions

    if args.eps is None:
        return _fail("--convex needs --eps, the l2 radius to certify")
    model = checkpoint.build_model(args.device)
    check_convex_supported(model, tuple(checkpoint.meta["input_shape"]))
    rows = certify_dataset_convex(model, dataset, cost, eps=args.eps,
                                  batch_size=min(args.batch, 256), indices=indices, out=args.out,
                                  progress=not args.quiet)
    summary = summarize_decisions(rows)
    print(f"certified {summary['examples']} examples at eps {args.eps} (convex bounds) -> "
          f"{args.out}; clean Acc {summary['acc']:.3f}, Rob_cs {summary['rob_cs']:.3f}. "
          f"Next: csrs report {args.out}")
    return 0


# -- report -----------------------------------------------------------------------------------
def _add_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report", help="metrics, table and plot from result files",
        description="Acc, Rob_cs, Rob_cs^(std) and Rob_non^(std) at --eps for each results "
                    "file, with the clean cost and the certified cost Cost_cert(eps) (and, "
                    "for two-class tasks, the costly seed class's recall and precision), "
                    "printed as a table; writes summary.csv, per_class.csv, a "
                    "certified-robustness curve and a certified-cost curve (PNG) to --out.")
    parser.add_argument("results", type=Path, nargs="+", help="results TSV(s) of 'csrs certify'")
    parser.add_argument("--eps", type=_nonnegative_float, default=0.5,
                        help="l2 radius at which robustness is counted (default 0.5)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for summary.csv and plots (default: beside the first "
                             "results file, <name>-report/)")
    parser.set_defaults(run=_run_report)


def _read_named(paths: Sequence[Path]) -> dict[str, list[dict]]:
    """Read results files, named by their stem (the full path where two stems clash)."""
    from csrs.results import read_results

    results = {}
    for path in paths:
        name = path.stem if path.stem not in results else str(path)
        results[name] = read_results(path)
        if not results[name]:
            raise ValueError(f"results file '{path}' has no finished rows yet")
    return results


def _tabulate(results: dict[str, list[dict]], eps: float, out: Path, *, curves: str,
              cost_curves: str, metrics: Sequence[str], title: str) -> list[Path]:
    """Print the metrics table at eps, write summary.csv and the Rob_cs and certified-cost
    curves; return what was written."""
    from csrs.report import (
        markdown_table,
        plot_cost_curves,
        plot_curves,
        results_table,
        write_csv,
    )

    rows, columns = results_table(results, eps)
    print(f"certified robustness at eps = {eps}")
    print(markdown_table(rows, columns, bold_best=columns[3:] if len(rows) > 1 else ()))
    written = [write_csv(out / "summary.csv", rows, [*columns, "eps"]),
               plot_curves(results, out / curves, metrics=metrics, title=title),
               plot_cost_curves(results, out / cost_curves)]
    return [path for path in written if path is not None]


def _run_report(args: argparse.Namespace) -> int:
    from csrs.metrics import METRICS, per_class
    from csrs.report import write_csv

    results = _read_named(args.results)
    out = args.out or args.results[0].with_name(args.results[0].stem + "-report")
    if any("certified" in rows[0] for rows in results.values()):
        return _report_decisions(results, out)
    written = _tabulate(results, args.eps, out, curves="certified_curves.png",
                        cost_curves="certified_cost.png",
                        metrics=("rob_cs", "rob_cs_std", "rob_non_std"),
                        title="certified robustness over the l2 radius")
    classes = [{"results": name, **row} for name, res in results.items()
               for row in per_class(res, args.eps)]
    written.append(write_csv(out / "per_class.csv", classes,
                             ["results", "label", "examples", "sensitive", *METRICS,
                              "clean_cost"]))
    print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


def _report_decisions(results: dict[str, list[dict]], out: Path) -> int:
    """Report files whose rows are decisions at one eps (adaptive or convex certification)."""
    from csrs.metrics import summarize_decisions
    from csrs.report import markdown_table, write_csv

    rows = [{"results": name, **summarize_decisions(res)} for name, res in results.items()]
    columns = ["results", "eps", "examples", "sensitive", "acc", "rob_cs", "rob_non_std"]
    if any(not math.isnan(row["mean_samples"]) for row in rows):
        columns += ["mean_samples", "median_samples"]
    print("decisions at the eps each file was certified for")
    print(markdown_table(rows, columns, headers={"mean_samples": "mean samples",
                                                 "median_samples": "median samples"}))
    write_csv(out / "summary.csv", rows, columns)
    print(f"wrote {out / 'summary.csv'}")
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


def _milestones(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like '200,400', got '{text}'") from None
    if any(value < 0 for value in values):
        raise argparse.ArgumentTypeError(f"milestones must be >= 0, got '{text}'")
    return values


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="train a base classifier for a smoothed classifier",
        description="Train a base classifier under Gaussian noise with one of the methods "
                    "cohen, cohen-r, macer, csrs (the paper's Eq. 2), margin-cs (the 2025 "
                    "version's objective), smoothadv or smoothadv-cs (adversarial training of "
                    "the smoothed classifier), or zhang-evans (convex bounds, no noise). "
                    "Defaults follow MACER's published CIFAR-10 schedule (SGD lr 0.01, "
                    "momentum 0.9, weight decay 5e-4, batch 64, lr x0.1 at 200/440 and 400/440 "
                    "of the epochs); zhang-evans follows Wong & Kolter (Adam lr 1e-3, batch 50, "
                    "lr halved every 10 epochs after the eps warm-up). The checkpoint carries "
                    "everything 'csrs certify' needs.")
    parser.add_argument("--dataset", required=True, help="digits, breast-cancer, cifar10, "
                        "imagenette, ham10000, folder or npz")
    parser.add_argument("--method", required=True,
                        help="cohen, cohen-r, macer, csrs, margin-cs, smoothadv, smoothadv-cs "
                             "or zhang-evans")
    parser.add_argument("--sigma", type=_positive_float, default=None,
                        help="noise level (required, except for zhang-evans, which adds no "
                             "noise; there it only sets the sigma of a later smoothed "
                             "certification, default 0.5)")
    parser.add_argument("--epochs", type=_positive_int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    parser.add_argument("--cost", help="cost spec, e.g. '3', '3->5,8', 'malignant->benign' "
                        "(default: the dataset's)")
    parser.add_argument("--arch", help="architecture (default: the dataset's)")
    parser.add_argument("--data-dir", help="directory of the dataset files")
    parser.add_argument("--image-size", type=_positive_int,
                        help="image side for imagenette, ham10000 and folder data")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="global batch (default 64; zhang-evans 50); under torchrun each of "
                             "the N processes takes batch-size / N examples of it")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                        help="default sgd; adam for zhang-evans")
    parser.add_argument("--lr", type=_positive_float, default=None,
                        help="learning rate (default: sgd 0.01, adam 1e-3)")
    parser.add_argument("--momentum", type=_nonnegative_float, default=0.9,
                        help="SGD momentum (default 0.9)")
    parser.add_argument("--weight-decay", type=_nonnegative_float, default=None,
                        help="default: sgd 5e-4, adam 0")
    parser.add_argument("--milestones", type=_milestones, default=None,
                        help="epochs at which the lr is multiplied by --lr-decay, e.g. '200,400' "
                             "(default: 200/440 and 400/440 of the epochs; zhang-evans every 10 "
                             "epochs after the eps warm-up)")
    parser.add_argument("--lr-decay", type=_positive_float, default=None,
                        help="default 0.1; zhang-evans 0.5")
    parser.add_argument("--warmup-epochs", type=int, default=0,
                        help="train the first epochs with the robustness weights lambda at 0 "
                             "(macer, csrs, margin-cs; default 0)")
    parser.add_argument("--val-fraction", type=_nonnegative_float, default=0.0,
                        help="hold out this stratified fraction of the training split")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seed of the train/test and validation splits (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run whose checkpoint is at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    group = parser.add_argument_group("method hyperparameters (paper symbol, default)")
    for flag, _, kind, text in _METHOD_FLAGS:
        group.add_argument(flag, type=kind, default=None, help=text)
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from csrs.distributed import process_group
    from csrs.training import TrainConfig, train

    hparams = {name: getattr(args, name) for _, name, _, _ in _METHOD_FLAGS
               if getattr(args, name) is not None}
    if args.sigma is None and args.method != "zhang-evans":
        return _fail(f"csrs train: --sigma is required for method '{args.method}'")
    data_options = {"image_size": args.image_size} if args.image_size else {}
    # Under torchrun every process runs this (DistributedDataParallel); rank 0 saves and prints.
    with process_group(args.device) as context:
        config = TrainConfig(
            dataset=args.dataset, method=args.method, sigma=args.sigma or 0.5,
            epochs=args.epochs, out=args.out, cost=args.cost, arch=args.arch,
            data_dir=args.data_dir, batch_size=args.batch_size, lr=args.lr,
            momentum=args.momentum, weight_decay=args.weight_decay, milestones=args.milestones,
            lr_decay=args.lr_decay, seed=args.seed, device=context.device, amp=args.amp,
            resume=args.resume, hparams=hparams, val_fraction=args.val_fraction,
            data_options=data_options, data_seed=args.data_seed,
            warmup_epochs=args.warmup_epochs, optimizer=args.optimizer)
        result = train(config, progress=not args.quiet)
        if not context.is_main:
            return 0
    last = result.history[-1] if result.history else {}
    kind = "clean" if args.method == "zhang-evans" else "noisy"
    print(f"trained {args.method} on {args.dataset} for {result.epochs} epochs -> {result.path}"
          + (f"; {kind} train accuracy {last['acc']:.3f}" if "acc" in last else "")
          + f". Next: csrs certify {result.path} --out results.tsv")
    return 0


# -- experiments ------------------------------------------------------------------------------
def _print_summary(summary: list[dict]) -> None:
    from csrs.report import METHOD_LABELS, markdown_table, metric_columns

    groups: dict[tuple[str, str], list[dict]] = {}
    for row in summary:
        groups.setdefault((row["dataset"], row["cost"]), []).append(row)
    for (dataset, cost), rows in groups.items():
        shown = [{**row, "method": METHOD_LABELS.get(row["method"], row["method"])}
                 for row in rows]
        print(f"\n{dataset}, cost '{cost}'")
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
                        help="output directory (default: results/<config name>)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
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
    parser = commands.add_parser(
        "demo", help="the embedded default: all four methods on bundled data",
        description="Train Cohen, Cohen-R, MACER and CS-RS on the bundled digits (costs '3' and "
                    "'3->5,8') and breast cancer ('malignant->benign') data, certify the test "
                    "splits at sigma = eps = 0.5, and write summary.csv, report.md and plots.")
    parser.add_argument("--out", type=Path, default=Path("demo-results"),
                        help="output directory (default demo-results/)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny budget (1 epoch, few samples and examples): checks the "
                             "pipeline in seconds; its numbers mean nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from csrs.experiment import demo_config, run_experiment

    started = time.perf_counter()
    summary = run_experiment(demo_config(quick=args.quick), args.out, quiet=args.quiet)
    _print_summary(summary)
    print(f"\nreport: {args.out / 'report.md'} ({time.perf_counter() - started:.0f} s)")
    return 0


def _add_compare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare", help="several result files side by side (table and curves)",
        description="Put several results files side by side: the metrics table at --eps and "
                    "the Rob_cs curves over eps in one plot.")
    parser.add_argument("results", type=Path, nargs="+", help="results TSVs")
    parser.add_argument("--eps", type=_nonnegative_float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("compare"),
                        help="directory for summary.csv and compare.png (default compare/)")
    parser.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    written = _tabulate(_read_named(args.results), args.eps, args.out, curves="compare.png",
                        cost_curves="compare_cost.png", metrics=("rob_cs",),
                        title="Rob_cs over eps")
    print(f"wrote {', '.join(str(path) for path in written)}")
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
    parser.add_argument("--data-dir", help="directory of the dataset files, kept for certify")
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
