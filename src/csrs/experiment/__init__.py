"""Experiments: train, tune and certify every (setting, seed, method, hyperparameters) of a
config, as the paper's tables do, and report the results.

A config (TOML, see ``experiments/*.toml``) names data sets with cost matrices, sigma and eps,
the methods with their hyperparameters (a list is a tuning grid), seeds, the training schedule
and the certification budget. :func:`run_experiment` turns it into a plan of runs with their
files (:mod:`~csrs.experiment.plan`) and goes through idempotent stages
(:mod:`~csrs.experiment.stages`): train all, score on the validation split, choose
(:mod:`~csrs.experiment.choose`), certify the chosen on the test split, aggregate over seeds
(:mod:`~csrs.experiment.aggregate`), report (:mod:`~csrs.experiment.report`). Run again after a
crash, it continues where it stopped.

A method may appear several times as variants, ``[methods."csrs@lam3"]``: each is trained as
its base method (the part before "@") with its own hyperparameters and reported under its own
name. Cost-blind methods (cohen, macer, smoothadv) are trained once per data set and seed, and
certified for each cost matrix. With ``launcher = "torchrun ..."`` training and the test split's
certification run under that launcher (:mod:`~csrs.experiment.launch`).
"""

from csrs.experiment.config import (
    COST_BLIND,
    KNOWN_METHODS,
    ExperimentConfig,
    Setting,
    base_method,
    demo_config,
    demo_summary,
    load_config,
    parse_config,
)
from csrs.experiment.stages import run_experiment

__all__ = ["COST_BLIND", "KNOWN_METHODS", "ExperimentConfig", "Setting", "base_method",
           "demo_config", "demo_summary", "load_config", "parse_config", "run_experiment"]
