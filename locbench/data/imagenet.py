"""ImageNet (ILSVRC-2012) in torchvision's ImageFolder layout under ``--data-root``:
``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG``.

Always read through a torchvision DataLoader with ``--num-workers`` processes, whatever
``--loader`` says: 1.28 M full-size JPEGs do not fit the tensor pipeline's in-memory uint8
cache, and RandomResizedCrop needs each image at its own size. Batches stay on the CPU (pinned when
the run is on CUDA) and the trainer moves them to the run's device, as on the torchvision path of
:mod:`locbench.data.torchvision_sets`.

The folders are checked before training (at least 2 classes, the same in train/ and val/); each
image only when the DataLoader first reads it (:func:`read_image`), since decoding them all up
front would take hours: one that cannot be decoded stops the run as
:class:`~locbench.errors.BadDataFile`, one line naming it.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision import datasets, transforms

from locbench.data.base import DataBundle, DataInfo, DataRequest, register_dataset
from locbench.data.torchvision_sets import seeded_loader
from locbench.errors import BadDataFile, UserError
from locbench.settings.run_config import TrainPreset

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SHAPE = (3, 224, 224)
SPLITS = ("train", "val")


def train_transform(augment: bool) -> transforms.Compose:
    """The standard ImageNet training transform: a random-resized 224 crop and a flip; without
    augmentation the evaluation transform (images differ in size, so some crop is needed)."""
    if not augment:
        return eval_transform()
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(IMAGE_SHAPE[1]),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def eval_transform() -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(IMAGE_SHAPE[1]),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def read_image(path: str) -> Image.Image:
    """ImageFolder's loader (the file as RGB), a file that cannot be decoded reported as one
    line naming it. Each image is checked when a DataLoader first reads it: decoding 1.28 M
    JPEGs before training would take longer than many runs."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        if isinstance(e, UnidentifiedImageError):  # its own message shows a file object
            reason = "not an image format PIL knows"
        else:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadDataFile(
            f"imagenet: cannot decode {path} ({reason}); accepted: image files PIL can read "
            "(replace or remove it)"
        ) from None


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def check_root(request: DataRequest) -> Path:
    """The data root, after checking that train and val hold the same class folders."""
    if request.data_root is None:
        raise UserError("--data-root is required for imagenet: a folder holding train/ and val/")
    root = Path(request.data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-root {root} does not exist")
    if request.download:
        # ImageNet's licence forbids an automatic download; say so rather than ignore the flag.
        raise UserError("imagenet cannot be downloaded; put train/ and val/ under --data-root")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise UserError(f"imagenet not found under {root}: missing folder {root / split}")
    train, val = (_class_folders(root / split) for split in SPLITS)
    if len(train) < 2:
        # One class trains a classifier that cannot be wrong: the accuracy means nothing.
        held = f"only {train[0]}" if train else "none"
        raise UserError(
            f"imagenet: {root / 'train'} holds {len(train)} class folders ({held}); accepted: "
            "at least 2, one per class"
        )
    if train != val:
        only = sorted(set(train) ^ set(val))
        shown = ", ".join(only[:3]) + (", ..." if len(only) > 3 else "")
        raise UserError(
            f"imagenet: train/ and val/ under {root} hold different class folders ({len(train)} "
            f"vs {len(val)}; only in one: {shown})"
        )
    return root


# The AugLocal authors' ImageNet run.sh: 200 epochs, global batch 1024, lr 0.4, cosine without
# warm-up (SGD, Nesterov 0.9, weight decay 1e-4 are the run defaults). They step the cosine once
# per epoch; we step it every iteration, a slightly smoother schedule.
PRESET = TrainPreset(epochs=200, batch_size=1024, lr=0.4, warmup_epochs=0)


# 1,000 classes: ILSVRC-2012's; a run counts the class folders it is given.
@register_dataset("imagenet", num_classes=1000, image_shape=IMAGE_SHAPE, preset=PRESET)
def imagenet(request: DataRequest) -> DataBundle:
    """ImageNet from ``ROOT/{train,val}/<class>/*.JPEG`` (1,281,167 / 50,000 images in 1,000
    classes for ILSVRC-2012; the class count is the number of class folders). Train:
    RandomResizedCrop(224) + flip; val: Resize(256) + CenterCrop(224). Always the DataLoader
    path with ``--num-workers`` processes: ``--loader tensor`` is accepted and means it too."""
    if request.image_shape[0] != IMAGE_SHAPE[0]:
        raise UserError(
            f"the network expects {request.image_shape[0]}-channel input of shape "
            f"{tuple(request.image_shape)} but imagenet gives {IMAGE_SHAPE}"
        )
    root = check_root(request)
    try:
        train_set = datasets.ImageFolder(
            root / "train", train_transform(request.augment), loader=read_image
        )
        val_set = datasets.ImageFolder(root / "val", eval_transform(), loader=read_image)
    except Exception as e:  # e.g. a class folder without a single image file
        raise UserError(f"could not load imagenet from {root}: {type(e).__name__}: {e}") from None
    info = DataInfo("imagenet", len(train_set.classes), IMAGE_SHAPE, MEAN, STD)
    train, val = seeded_loader(train_set, request, True), seeded_loader(val_set, request, False)
    return DataBundle(info, train, val, len(train_set))
