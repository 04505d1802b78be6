"""csrs: provably robust cost-sensitive learning with randomized smoothing.

The torch-free layers (``csrs.costs``, ``csrs.stats``, ``csrs.metrics``) load eagerly; the
torch-heavy ones are imported on first use so that ``import csrs.stats`` stays light.
"""

from importlib import import_module
from typing import Any

from csrs.costs import CostMatrix
from csrs.stats import (
    ABSTAIN,
    Certificate,
    CostCertificate,
    StandardCertificate,
    certify_cost_counts,
    certify_counts,
    cohen_certify_counts,
    cohen_predict_counts,
    true_cs_radius,
)

__version__ = "0.2.0"  # the one place the version is set (pyproject.toml reads it)

_LAZY = {
    "SmoothedClassifier": "csrs.smoothing",
    "load_checkpoint": "csrs.checkpoint",
    "save_checkpoint": "csrs.checkpoint",
    "build_model": "csrs.models",
    "load_dataset": "csrs.data",
    "certify_dataset": "csrs.certify",
    "CertifySettings": "csrs.certify",
    "SequentialSettings": "csrs.certify",
    "load_results": "csrs.results",
}

__all__ = [
    "ABSTAIN",
    "Certificate",
    "CostCertificate",
    "CostMatrix",
    "StandardCertificate",
    "__version__",
    "certify_cost_counts",
    "certify_counts",
    "cohen_certify_counts",
    "cohen_predict_counts",
    "true_cs_radius",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'csrs' has no attribute {name!r}")
