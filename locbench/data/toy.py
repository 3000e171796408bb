"""The in-memory datasets: scikit-learn's bundled digits (real, offline) and a deterministic
synthetic set for shape and memory tests."""

from __future__ import annotations

import torch

from locbench.data.base import (
    Batch,
    DataBundle,
    DataRequest,
    fit_images,
    in_memory_bundle,
    register_dataset,
)
from locbench.settings.run_config import TrainPreset

# CPU-sized presets: the AugLocal learning rate scaled linearly with the batch
# (0.8 * 64 / 1024 = 0.05), and few epochs.
DIGITS_PRESET = TrainPreset(epochs=10, batch_size=64, lr=0.05, warmup_epochs=1)
SYNTHETIC_PRESET = TrainPreset(epochs=5, batch_size=64, lr=0.05, warmup_epochs=1)


@register_dataset("digits", num_classes=10, image_shape=(1, 8, 8), preset=DIGITS_PRESET)
def digits(request: DataRequest) -> DataBundle:
    """scikit-learn's 1,797 handwritten digits, a fixed stratified 80/20 split (1,437 / 360),
    scaled to [0, 1] and resampled to the backbone's input shape."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    i_train, i_test = train_test_split(
        list(range(len(labels))), test_size=0.2, random_state=0, stratify=data.target
    )
    images = fit_images(images, request.image_shape)
    return in_memory_bundle(
        "digits",
        images[i_train],
        labels[i_train],
        images[i_test],
        labels[i_test],
        10,
        request,
    )


@register_dataset("synthetic", num_classes=10, image_shape=None, preset=SYNTHETIC_PRESET)
def synthetic(
    request: DataRequest, n_train: int = 512, n_test: int = 256, num_classes: int = 10
) -> DataBundle:
    """Deterministic: one fixed random template per class plus Gaussian noise. The same for
    every seed, so shape and memory tests see identical data."""
    g = torch.Generator().manual_seed(1234)
    templates = torch.rand(num_classes, *request.image_shape, generator=g)

    def draw(n: int) -> Batch:
        y = torch.arange(n) % num_classes
        return templates[y] + 0.5 * torch.randn(n, *request.image_shape, generator=g), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return in_memory_bundle("synthetic", x_train, y_train, x_test, y_test, num_classes, request)
