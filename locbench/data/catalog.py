"""Every built-in dataset, registered, and loading one by name. A new dataset is one module
with one :func:`~locbench.data.base.register_dataset` call, and its import here. Look datasets up
here, not in :mod:`locbench.data.base`, whose registry is empty until this module is imported."""

from locbench.data import imagenet, torchvision_sets, toy  # noqa: F401  (they register)
from locbench.data.base import DATASETS, DataBundle, DataRequest, Dataset
from locbench.settings.run_config import BY_NAME
from locbench.settings.schema import check

__all__ = ["DATASETS", "Dataset", "load_dataset"]


def load_dataset(name: str, request: DataRequest) -> DataBundle:
    """Dataset ``name`` loaded for ``request``."""
    check(BY_NAME["batch_size"], request.batch_size, "--batch-size")  # the run setting's rule
    check(BY_NAME["loader"], request.loader, "--loader")
    return DATASETS.get(name).load(request)
