"""The tensor data pipeline: whole splits as uint8 tensors on the run's device, batched
augmentation, and a cache of the decoded splits under the data root.

A split is decoded once into ``images`` (N, C, H, W) uint8 and ``labels`` (N,) int64 and cached
in ``ROOT/.locbench-cache/<dataset>-<split>.pt`` with a checksum; a cache that disagrees with
its source files, its checksum or the dataset's checks is rebuilt (see :func:`cached_split`).
Each training pass
draws, from one generator seeded with the run seed, a permutation and per image a crop offset
and a flip bit with exactly the distribution of the dataset's torchvision transforms
(:func:`augment_of` reads them off those transforms), then crops, flips, pads, converts and
normalises the whole batch with tensor ops on the device.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from locbench.errors import UserError
from locbench.outputs import write_atomic

CACHE_DIR = ".locbench-cache"
# Bump when the cached layout or the decoding changes: old caches are then rebuilt.
CACHE_FORMAT = 2  # 2: a checksum of the contents
PADDING_MODES = ("constant", "edge", "reflect", "symmetric")

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Augment:
    """Pad by ``pad`` pixels on every side, crop ``size`` (H, W) at a uniformly drawn offset,
    then flip horizontally with probability ``flip``: torchvision's ``RandomCrop(size, padding,
    padding_mode=..., fill=...)`` followed by ``RandomHorizontalFlip(flip)``."""

    size: tuple[int, int]
    pad: int = 0
    padding_mode: str = "constant"
    fill: int = 0
    flip: float = 0.0

    def __post_init__(self) -> None:
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding mode {self.padding_mode!r} is not one of {PADDING_MODES}")


def augment_of(steps: Sequence[Callable]) -> Augment:
    """The :class:`Augment` equal to a list of torchvision transforms: one ``RandomCrop`` with
    a single padding for all sides, optionally followed by ``RandomHorizontalFlip``. Reading the
    torchvision objects keeps the two loaders' augmentation one declaration."""
    from torchvision import transforms

    crop, *rest = steps
    if not isinstance(crop, transforms.RandomCrop) or crop.pad_if_needed:
        raise ValueError(f"the tensor pipeline cannot apply {crop!r}")
    padding = crop.padding or 0
    if not isinstance(padding, int):  # a sequence: torchvision allows 1, 2 or 4 values
        if len(set(padding)) != 1:
            raise ValueError(f"the tensor pipeline pads all sides alike, not {padding}")
        padding = padding[0]
    if not isinstance(crop.fill, int):
        raise ValueError(f"the tensor pipeline fills with one integer, not {crop.fill!r}")
    flip = 0.0
    for step in rest:
        if not isinstance(step, transforms.RandomHorizontalFlip) or flip:
            raise ValueError(f"the tensor pipeline cannot apply {step!r}")
        flip = float(step.p)
    size = (int(crop.size[0]), int(crop.size[1]))
    return Augment(size, int(padding), crop.padding_mode, crop.fill, flip)


def _source(start: torch.Tensor, k: torch.Tensor, length: int, aug: Augment) -> torch.Tensor:
    """Source coordinates (B, t) of output positions ``k`` for crops starting at ``start`` (B,)
    in the padded image; -1 where the padding's fill shows."""
    p = start[:, None] + k - aug.pad  # coordinates in the unpadded image, may fall outside
    if aug.padding_mode == "constant":
        return torch.where((p >= 0) & (p < length), p, -1)
    if aug.padding_mode == "edge":
        return p.clamp(0, length - 1)
    if aug.padding_mode == "reflect":  # the edge pixel is not repeated
        p = p.abs()
        return torch.where(p >= length, 2 * (length - 1) - p, p)
    p = torch.where(p < 0, -p - 1, p)  # symmetric: the edge pixel is repeated
    return torch.where(p >= length, 2 * length - 1 - p, p)


def crop_flip(
    images: torch.Tensor,
    index: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    aug: Augment,
) -> torch.Tensor:
    """Crops (B, C, h, w) of ``images[index]`` (N, C, H, W) padded by ``aug.pad``, at offsets
    ``top``/``left`` (B,) in the padded images, mirrored where ``flip`` (B,) is set.

    Padding, crop and flip are one choice of source row per output row and source column per
    output column, so the batch takes two gathers whose index tensors are broadcast views."""
    _, c, h, w = images.shape
    th, tw = aug.size
    device = images.device
    rows = _source(top, torch.arange(th, device=device), h, aug)
    k = torch.arange(tw, device=device)
    # The flip mirrors the crop, so output column k reads crop column tw - 1 - k.
    cols = _source(left, torch.where(flip[:, None], tw - 1 - k, k), w, aug)
    b, words = len(index), as_words(images)
    spread = rows.clamp(min=0)[:, None, :, None].expand(b, c, th, words.shape[-1])
    out = words[index].gather(2, spread)
    out = out.view(torch.uint8).gather(3, cols.clamp(min=0)[:, None, None, :].expand(b, c, th, tw))
    if aug.padding_mode == "constant":
        out.masked_fill_((rows < 0)[:, None, :, None] | (cols < 0)[:, None, None, :], aug.fill)
    return out


def as_words(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``images`` (..., W) viewed as (..., W / k) words of the widest k in 8, 4, 2 that
    divides W: copying whole rows, a gather or an index then moves k pixels per element (CPU
    kernels copy element by element: 3-5x faster for CIFAR's rows of 32 bytes)."""
    for size, dtype in ((8, torch.int64), (4, torch.int32), (2, torch.int16)):
        aligned = images.shape[-1] % size == 0 and images.storage_offset() % size == 0
        if aligned and images.is_contiguous():
            return images.view(dtype)
    return images


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) to float32 ``(x / 255 - mean) / std``, with the operations of
    torchvision's ``ToTensor`` + ``Normalize`` in their order, so the values are equal to the
    bit on the CPU; in place on one new tensor."""
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


class ImageLoader:
    """Batches of a uint8 split held on its device, normalised to float32 there.

    ``shuffle``: a new permutation each pass from a generator seeded with ``seed`` (on the CPU,
    so one seed gives the same batches on any device); ``augment``: per image a crop offset and
    a flip bit from the same generator."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        shuffle: bool,
        seed: int = 0,
        augment: Augment | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            shape = tuple(images.shape)
            raise ValueError(f"images must be uint8 (N, C, H, W), not {images.dtype} {shape}")
        self.images, self.labels = images.contiguous(), labels.to(images.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        device = images.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n, device, aug = len(self.images), self.images.device, self.augment
        g = self.generator
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order.to(device)
        if aug is not None:
            # A whole pass's draws at once: three small transfers instead of three per batch.
            _, _, h, w = self.images.shape
            top = torch.randint(0, h + 2 * aug.pad - aug.size[0] + 1, (n,), generator=g)
            left = torch.randint(0, w + 2 * aug.pad - aug.size[1] + 1, (n,), generator=g)
            flip = torch.rand(n, generator=g) < aug.flip
            top, left, flip = top.to(device), left.to(device), flip.to(device)
        for i in range(len(self)):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            index = order[part]
            if aug is not None:
                x = crop_flip(self.images, index, top[part], left[part], flip[part], aug)
            elif self.shuffle:
                x = as_words(self.images)[index].view(torch.uint8)
            else:
                x = self.images[part]
            yield normalise(x, self.mean, self.std), self.labels[index]


def cache_path(root: Path, name: str, split: str) -> Path:
    return Path(root) / CACHE_DIR / f"{name}-{split}.pt"


def source_key(root: Path, files: Sequence[Path]) -> list[list]:
    """What a cached split was decoded from: each file's path under ``root``, size and
    modification time (ns). Raises FileNotFoundError for a missing file."""
    key = []
    for f in files:
        st = Path(f).stat()
        key.append([Path(f).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return key


def cached_split(
    root: Path,
    name: str,
    split: str,
    files: Sequence[Path],
    decode: Callable[[], Batch],
    check: Callable[[torch.Tensor, torch.Tensor], None],
) -> Batch:
    """``(images, labels)`` of one split: from the cache file when its key matches ``files``
    (their names, sizes and mtimes), its contents match the checksum written with them and
    pass ``check`` (which raises :class:`~locbench.errors.UserError` for a split the dataset
    must refuse); else from ``decode()`` (which checks what it decodes), then cached.

    A cache is never trusted over its source: one that fails any of these is rebuilt. It is
    written to a temporary file beside it and renamed, so a reader never sees a partial file; a
    folder that cannot be written is warned about and the split is used uncached."""
    path = cache_path(root, name, split)
    try:
        key = {"format": CACHE_FORMAT, "files": source_key(root, files)}
    except FileNotFoundError:
        key = None  # a download is due: decode() fetches the files
    if key is not None and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a truncated or foreign cache is rebuilt, not fatal
            blob = None
        if _valid(blob, key, check):
            return blob["images"], blob["labels"]
    images, labels = decode()
    images, labels = images.contiguous(), labels.to(torch.int64)
    blob = {
        "key": {"format": CACHE_FORMAT, "files": source_key(root, files)},
        "images": images,
        "labels": labels,
        "checksum": checksum(images, labels),
    }
    try:
        write_atomic(path, lambda f: torch.save(blob, f))
    except UserError as e:  # no cache is slower, not wrong: the split is decoded
        warnings.warn(f"could not cache {name} {split}: {e}", stacklevel=2)
    return images, labels


def checksum(images: torch.Tensor, labels: torch.Tensor) -> int:
    """CRC-32 of the pixels and labels as decoded from the source (CIFAR-10's training split:
    about 40 ms), so a cache altered after it was written is told from the decoded split."""
    crc = 0
    for t in (images, labels):
        crc = zlib.crc32(t.detach().cpu().contiguous().numpy(), crc)
    return crc


def _valid(blob: object, key: dict, check: Callable[[torch.Tensor, torch.Tensor], None]) -> bool:
    if not isinstance(blob, dict) or blob.get("key") != key:
        return False
    images, labels = blob.get("images"), blob.get("labels")
    if not (
        isinstance(images, torch.Tensor)
        and isinstance(labels, torch.Tensor)
        and labels.dtype == torch.int64
    ):
        return False
    try:
        check(images, labels)
    except UserError:
        return False
    return blob.get("checksum") == checksum(images, labels)
