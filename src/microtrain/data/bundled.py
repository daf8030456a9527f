"""Real data sets that need no download: scikit-learn ships them inside its package."""

from typing import Any

import numpy as np

BUNDLED = {
    # name: (loader in sklearn.datasets, task)
    "diabetes": ("load_diabetes", "regression"),
    "digits": ("load_digits", "classification"),
    "iris": ("load_iris", "classification"),
    "wine": ("load_wine", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
}


def load_bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(x, y as one column, feature names, task) of a scikit-learn data set."""
    from sklearn import datasets  # deferred: only runs that pick a bundled set pay for the import

    loader, task = BUNDLED[name]
    bunch: Any = getattr(datasets, loader)()
    names = [str(n) for n in getattr(bunch, "feature_names", [])] or [f"x{i}" for i in range(bunch.data.shape[1])]
    return bunch.data.astype(np.float64), bunch.target.reshape(-1, 1).astype(np.float64), names, task
