"""Loading real datasets through HF ``datasets``: a hub id, or local files the user has.

``load("cifar10", "train")`` reads the card's hub id (``uoft-cs/cifar10``); with
``path="/data/cifar10"`` or ``load("/data/my_images", "train")`` it reads local data instead:
a ``save_to_disk`` folder, parquet or arrow files (split from the file or folder name), or an
``imagefolder`` tree (``<split>/<class>/<image>``). Images are decoded lazily by us, not by
``datasets``, so a corrupt file is skipped and counted (``bitkit.data.corrupt``), not fatal.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from bitkit.data.base import ImageDataset, SubsetDataset
from bitkit.data.cards import DataCard, PaperResults, Source
from bitkit.data.corrupt import (
    MAX_CONSECUTIVE,
    CorruptFlags,
    CorruptReport,
    decode,
    readable_items,
)

_ID_COLUMNS = ("id", "image_id", "file_name", "filename", "__key__")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "cls", "target")


class HFImageDataset(ImageDataset):
    """A split of an HF ``datasets.Dataset`` with an image column and a label column."""

    def __init__(self, hf: Any, card: DataCard, split: str):
        import datasets

        self.card, self.split = card, split
        self.image_column = card.source.image_column or _find_column(hf, datasets.Image, "image")
        self.label_column = card.source.label_column or _label_column(hf, card.num_classes)
        for col in (self.image_column, self.label_column):
            if col not in hf.column_names:
                raise ValueError(f"{card.name}: column {col!r} not in the data (columns: "
                                 f"{hf.column_names}); fix source.image_column/label_column")
        feature = hf.features[self.label_column]
        self.multi_label = isinstance(feature, (datasets.Sequence, list)) or card.multi_label
        inner = getattr(feature, "feature", feature[0] if isinstance(feature, list) else feature)
        names = getattr(inner, "names", None)
        if isinstance(hf.features[self.image_column], datasets.Image):
            hf = hf.cast_column(self.image_column, datasets.Image(decode=False))
        self.hf = hf
        raw = hf.data.column(self.label_column).to_pylist()
        if names and card.num_classes and len(names) != card.num_classes:
            raise ValueError(
                f"{card.name}:{split}: the data's {self.label_column!r} column has "
                f"{len(names)} classes, but the card says num_classes: {card.num_classes}. Is "
                f"this the right dataset (path= or source.hub_id), or the right label column "
                f"(source.label_column)?")
        self.num_classes = len(names) if names else card.num_classes
        _check_label_range(raw, self.num_classes, self.multi_label,
                           f"{card.name}:{split} (column {self.label_column!r})")
        if self.multi_label:
            self._labels = np.zeros((len(raw), self.num_classes), bool)
            for i, row in enumerate(raw):
                self._labels[i, row] = True
        else:
            self._labels = np.asarray(raw, dtype=np.int64)
        self.class_names = list(names or card.class_names or map(str, range(self.num_classes)))
        id_col = next((c for c in _ID_COLUMNS if c in hf.column_names), None)
        self._ids = hf.data.column(id_col).to_pylist() if id_col else None
        self.corrupt = CorruptFlags(len(self._labels))

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._labels[np.asarray(indices, dtype=np.int64)]

    def example_id(self, index: int) -> str:
        i = self._check_index(index)
        return f"{self.card.name}:{self.split}:{self._ids[i] if self._ids else i}"

    def _image(self, index: int) -> Image.Image | None:
        return decode(self.hf[index][self.image_column])

    def __getitem__(self, index: int) -> tuple[Image.Image, Any]:
        """The image and label; an unreadable image is flagged and the next readable example is
        returned in its place (see ``bitkit.data.corrupt`` for why)."""
        i = self._check_index(index)
        for step in range(min(MAX_CONSECUTIVE, len(self))):
            j = (i + step) % len(self)
            img = self._image(j)
            if img is not None:
                return img, self._target(self._labels[j])
            self.corrupt.mark(j)
        raise RuntimeError(
            f"{self.card.name}:{self.split}: {MAX_CONSECUTIVE} consecutive unreadable images from "
            f"{self.example_id(i)}: the data is probably not images or the path is wrong."
        )

    def readable(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode these examples (flagging the unreadable ones); already flagged ones are not
        decoded again. Used by k-shot selection, which must not pick an example whose
        substitute would carry another label."""
        idx = np.asarray(indices, dtype=np.int64)
        ok = ~self.corrupt.flags.numpy()[idx]
        for n, i in enumerate(idx):
            if ok[n] and self._image(int(i)) is None:
                self.corrupt.mark(int(i))
                ok[n] = False
        return ok

    def scan(self, progress: bool = True) -> CorruptReport:
        """Decode every image once and flag the unreadable ones (before evaluation)."""
        for i in tqdm(range(len(self)), desc=f"scan {self.card.name}:{self.split}",
                      disable=not progress):
            if self._image(i) is None:
                self.corrupt.mark(i)
        return self.corrupt_report()

    def without_corrupt(self) -> SubsetDataset:
        """The examples not flagged unreadable (after :meth:`scan`, all readable ones)."""
        bad = self.corrupt.flags.numpy()
        return SubsetDataset(self, np.nonzero(~bad)[0], tag="readable")

    def corrupt_report(self, limit: int = 20) -> CorruptReport:
        idx = self.corrupt.indices()[:limit].tolist()
        return CorruptReport(self.corrupt.count(), [self.example_id(i) for i in idx], len(self))


def _check_label_range(raw: list[Any], num_classes: int, multi: bool, where: str) -> None:
    """Every label a class id in ``[0, num_classes)``: a bad one would otherwise surface as an
    index error deep inside the loss, hours into a run."""
    values = np.asarray([v for row in raw for v in row] if multi else raw, dtype=np.int64)
    bad = (values < 0) | (values >= num_classes)
    if not bad.any():
        return
    shown = sorted(set(values[bad].tolist()))[:5]
    hint = (" -1 means unlabelled: this split has no public labels; evaluate on the card's "
            "eval_split instead." if -1 in shown else
            " Are the labels 1-based, or is num_classes (card) wrong?")
    raise ValueError(f"{where}: {int(bad.sum())} label(s) outside 0..{num_classes - 1}, e.g. "
                     f"{shown}.{hint}")


def _find_column(hf: Any, feature_type: type, what: str) -> str:
    for name, feat in hf.features.items():
        if isinstance(feat, feature_type):
            return name
    raise ValueError(f"no {what} column found (columns: {hf.column_names}); set "
                     f"source.image_column in the card")


def _label_column(hf: Any, num_classes: int | None = None) -> str:
    """The label column: a ClassLabel one (with ``num_classes`` classes when several are, e.g.
    Pets' breed and species), else a conventionally named one."""
    import datasets

    class_labels = {}
    for name, feat in hf.features.items():
        inner = getattr(feat, "feature", None)
        label = feat if isinstance(feat, datasets.ClassLabel) else inner
        if isinstance(label, datasets.ClassLabel):
            class_labels[name] = label.num_classes
    if class_labels:
        return next((n for n, c in class_labels.items() if c == num_classes),
                    next((n for n in _LABEL_COLUMNS if n in class_labels), next(iter(class_labels))))
    for name in _LABEL_COLUMNS:
        if name in hf.column_names:
            return name
    raise ValueError(f"no label column found (columns: {hf.column_names}); set "
                     f"source.label_column in the card")


# ---------------------------------------------------------------------------- local files
def open_local(path: str | os.PathLike, split: str) -> Any:
    """An HF ``datasets.Dataset`` for ``split`` from local data at ``path``.

    Recognised: a ``save_to_disk`` folder (DatasetDict or Dataset), parquet or arrow files
    (a file, or a folder whose files or sub-folders are named by split), or an imagefolder.
    """
    import datasets

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"No dataset at {str(p)!r}: the path does not exist.{_near_paths(p)} Give a folder "
            "of images (imagefolder: <split>/<class>/<image>), parquet or arrow files, or a "
            "folder written by datasets' save_to_disk."
        )
    names = split_names(split)
    if (p / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(p))
        found = next((n for n in names if n in dd), None)
        if found is None:
            raise ValueError(f"{p} has splits {list(dd)}, not {split!r}")
        return dd[found]
    if (p / "state.json").is_file():
        return datasets.load_from_disk(str(p))
    for ext, builder in (("parquet", "parquet"), ("arrow", "arrow")):
        files = [p] if p.is_file() and p.suffix == f".{ext}" else sorted(p.rglob(f"*.{ext}"))
        if files:
            chosen = files if p.is_file() else next(
                (f for f in (_split_files(files, p, n) for n in names) if f), [])
            if not chosen:
                raise ValueError(f"no {ext} files for split {split!r} under {p} (files: "
                                 f"{[str(f.relative_to(p)) for f in files[:5]]}); name them "
                                 f"{split}-*.{ext} or put them in a {split}/ folder")
            return datasets.load_dataset(builder, data_files=[str(f) for f in chosen],
                                         split="train")
    try:  # imagefolder names a split by its folder's keyword group: val/ is "validation"
        return datasets.load_dataset("imagefolder", data_dir=str(p),
                                     split=_imagefolder_split(split))
    except ValueError as e:
        raise ValueError(f"could not read {p} as an image folder for split {split!r}: {e}") \
            from None


#: Names that mean the same split, by the name an imagefolder gives it (the keyword groups
#: ``datasets`` uses for data files and folders).
_SPLIT_GROUPS = {"train": ("train", "training"),
                 "validation": ("validation", "val", "valid", "dev"),
                 "test": ("test", "testing", "eval", "evaluation")}


def split_names(split: str) -> tuple[str, ...]:
    """``split`` and the other names of the same split, ``split`` first (a card's ``val``
    role finds ``validation-*.parquet``, a ``dev/`` folder or a ``validation`` DatasetDict)."""
    group = next((g for g in _SPLIT_GROUPS.values() if split in g), ())
    return (split, *(n for n in group if n != split))


def _imagefolder_split(split: str) -> str:
    return next((name for name, g in _SPLIT_GROUPS.items() if split in g), split)


def _near_paths(p: Path) -> str:
    """" Did you mean ...?" from the entries of the closest existing parent folder (a misspelt
    path gets the same help as a misspelt dataset name)."""
    parent = p.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    if parent != p.parent:
        return f" (not even {str(p.parent)!r} exists; the nearest folder that does is " \
               f"{str(parent)!r})"
    try:
        names = sorted(e.name for e in parent.iterdir() if not e.name.startswith("."))
    except OSError:
        return ""
    close = difflib.get_close_matches(p.name, names, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(str(parent / c)) for c in close)}?" if close else ""


def _split_files(files: list[Path], root: Path, split: str) -> list[Path]:
    pattern = re.compile(rf"(^|[/_.-]){re.escape(split)}([/_.-]|$)")
    return [f for f in files if pattern.search(str(f.relative_to(root)))]


def local_card(path: str | os.PathLike, hf: Any, split: str) -> DataCard:
    """A card for data the user points at without one: facts measured from the data."""
    import datasets

    name = re.sub(r"[^a-z0-9-]+", "-", Path(path).expanduser().resolve().name.lower()) or "local"
    label_col = _label_column(hf)
    feat = hf.features[label_col]
    multi = _is_sequence(feat)  # a list of labels per example: multi-label
    inner = (feat[0] if isinstance(feat, list) else getattr(feat, "feature", None)) if multi \
        else feat
    names = getattr(inner, "names", None)
    if names:  # a ClassLabel knows every class, also those missing from this split
        num_classes = len(names)
    else:  # plain integers: the largest label of every split we can find, + 1
        num_classes = 1 + max(_max_label(h[label_col], multi)
                              for h in [hf, *_other_splits(path, split, label_col)])
    img_col = _find_column(hf, datasets.Image, "image")
    first = decode(hf.cast_column(img_col, datasets.Image(decode=False))[0][img_col]) \
        if len(hf) else None
    return DataCard(
        name=name, title=name, description=f"local data at {path}", group="standard",
        source=Source(kind="local", local_pattern=str(path), image_column=img_col,
                      label_column=label_col),
        splits={split: split}, eval_split=split,
        num_classes=num_classes,
        train_size=len(hf), image_size=(first.height, first.width) if first else (1, 1),
        multi_label=multi, flip=True, crop=True, license="unknown (local data)",
        citation="unknown (local data)", paper=PaperResults(),
        class_names=tuple(names) if names else None, path=str(path),
    )


def _is_sequence(feature: Any) -> bool:
    return isinstance(feature, list) or type(feature).__name__ in ("Sequence", "List", "LargeList")


def _max_label(column: Sequence[Any], multi: bool) -> int:
    values = [v for row in column for v in row] if multi else list(column)
    return int(max(values)) if values else -1


def _other_splits(path: str | os.PathLike, split: str, label_col: str) -> list[Any]:
    """The other splits at ``path`` (label column only), to count classes over all of them:
    a class missing from one split must not shrink ``num_classes``."""
    out = []
    for other in ("train", "validation", "val", "test"):
        if other == split:
            continue
        try:
            hf = open_local(path, other)
        except (ValueError, FileNotFoundError, KeyError):  # no such split: fine
            continue
        if label_col in hf.column_names:
            out.append(hf.select_columns([label_col]))
    return out


def load_hf(card: DataCard, split: str, path: str | os.PathLike | None = None) -> HFImageDataset:
    """A card's split from the hub (``source.hub_id``) or from local data at ``path``."""
    return load_source_split(card, card.splits[split], path, name=split)


def load_source_split(card: DataCard, source_split: str, path: str | os.PathLike | None = None,
                      *, name: str | None = None) -> HFImageDataset:
    """The source's split ``source_split`` as named by the hub copy or the local files (also
    one no role names, e.g. a VTAB task's TFDS ``validation``); ``name`` is the split the
    dataset reports (its ids read ``<card>:<name>:<index>``), by default ``source_split``."""
    split = name or source_split
    if path is not None:
        return HFImageDataset(open_local(path, source_split), card, split)
    if card.source.kind != "hub":
        raise ValueError(
            f"{card.name} has no hub copy: pass path=... to local data"
            + (f" laid out like {card.source.local_pattern}" if card.source.local_pattern else "")
            + (f". {card.source.note}" if card.source.note else "")
        )
    import datasets

    try:
        hf = datasets.load_dataset(card.source.hub_id, card.source.config, split=source_split)
    except Exception as e:  # offline, gated, renamed: the user needs the fix, not the trace
        raise FileNotFoundError(
            f"could not load {card.name} from the HF hub ({card.source.hub_id}, split "
            f"{source_split!r}): {type(e).__name__}: {e}. Offline? Pass path=... to a local "
            "copy, or unset HF_HUB_OFFLINE and log in (huggingface-cli login) for gated data."
        ) from None
    return HFImageDataset(hf, card, split)



def to_hf(dataset: ImageDataset, *, batch_size: int = 256, progress: bool = True) -> Any:
    """Materialise any raw dataset (e.g. the embedded world) as an HF ``datasets.Dataset`` with
    ``image`` (PNG, lossless), ``label`` (ClassLabel, or a list of ids for multi-label) and
    ``id`` columns: the same schema :func:`load` reads back, to share or to save as parquet.
    Unreadable images are left out and named in an ``UnreadableImagesWarning``."""
    import datasets
    import torch

    from bitkit.data.transforms import to_uint8

    names = datasets.ClassLabel(names=list(dataset.class_names))
    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.Sequence(names) if dataset.multi_label else names,
        "id": datasets.Value("string"),
    })

    def rows():
        items = readable_items(dataset, range(len(dataset)), f"to_hf({dataset.card.name})",
                               batch_size)
        for i, image, target in tqdm(items, total=len(dataset), disable=not progress,
                                     desc=f"materialise {dataset.card.name}"):
            label = (torch.nonzero(target).flatten().tolist() if dataset.multi_label
                     else int(target))
            yield {"image": Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()),
                   "label": label, "id": dataset.example_id(i)}

    return datasets.Dataset.from_generator(rows, features=features)
