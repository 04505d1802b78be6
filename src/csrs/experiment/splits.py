"""The data of an experiment: every setting's splits, loaded once per (data set, files, image
size), its cost matrix and its validation split. Loading everything before the first stage makes
a missing file or a bad cost spec fail before anything is trained."""

from __future__ import annotations

from typing import Any

from csrs.costs import CostMatrix
from csrs.experiment.config import ExperimentConfig, Setting

__all__ = ["ExperimentData"]


class ExperimentData:
    """Splits, cost matrices and validation splits of every setting of a config."""

    def __init__(self, config: ExperimentConfig) -> None:
        self._config = config
        self._splits: dict[tuple, Any] = {}
        self._costs = {setting: CostMatrix.parse(setting.cost, self.splits(setting).num_classes,
                                                 self.splits(setting).class_names)
                       for setting in config.settings}

    def splits(self, setting: Setting) -> Any:
        """The setting's :class:`csrs.data.DatasetSplits`."""
        from csrs.data import load_dataset

        key = (setting.dataset, setting.data_dir, setting.image_size)
        if key not in self._splits:
            options = {"image_size": setting.image_size} if setting.image_size else {}
            self._splits[key] = load_dataset(setting.dataset, setting.data_dir,
                                             seed=self._config.data_seed, **options)
        return self._splits[key]

    def cost(self, setting: Setting) -> CostMatrix:
        return self._costs[setting]

    def validation(self, setting: Setting) -> Any:
        """The part of the training split that training held out (``tuning.val_fraction``)."""
        from csrs.data import validation_split

        fraction = self._config.tuning["val_fraction"]
        return validation_split(self.splits(setting).train, None, fraction,
                                self._config.data_seed)[1]
