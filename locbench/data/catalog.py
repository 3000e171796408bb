"""Every built-in dataset, registered: import this module to fill
:data:`locbench.data.base.DATASETS`. A new dataset is one module with one
:func:`~locbench.data.base.register_dataset` call, and its import here."""

from locbench.data import imagenet, torchvision_sets, toy  # noqa: F401  (they register)
from locbench.data.base import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "load_dataset"]
