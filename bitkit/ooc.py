"""Objects out of context: the dataset builder and evaluation of supplementary F.

Supplementary F asks whether better upstream pre-training also makes a model recognise an object
when it appears in a context it would never be seen in (a zebra in a kitchen). Its dataset pastes
segmented foreground objects (OpenImages masks) onto backgrounds with one fixed rule (F.1):

- the background is cut to its **largest square, taken from the top-left corner**;
- the object is scaled so that its **longest side is 80% of the background's width**
  ("thus, the object is prominent in the image");
- every foreground is pasted on every background (81 x 41 = 3321 images there).

The paper does not say where the object goes or how edges are blended, so both are parameters
recorded with every image: ``placement`` ``"center"`` (default) or ``"random"`` (uniform over the
positions that keep the object inside, drawn from ``(seed, foreground id, background id)``), and
``blend`` ``"none"`` (hard binary mask) or ``"gaussian"`` (the mask feathered with a Gaussian of
``feather`` x the object's longest side as sigma).

Output: ``images/*.png`` plus ``metadata.jsonl`` (the layout of an HF ``imagefolder``, so
``datasets.load_dataset("imagefolder", data_dir=...)`` reads it) and the same data saved as an HF
``Dataset`` in ``hf/``; ``.bitkit-written.json`` lists those files, so that a rebuild with
``overwrite=True`` removes them and nothing else (a folder holding other files is refused).
One metadata record per image: foreground id, class and source, background id, crop box,
licenses and attributions, scale, position, blend, seed, bitkit version. Every step is
deterministic (PNG written without timestamps), so the same inputs and seed give the same bytes.

Evaluation (:func:`evaluate_ooc`): top-1 on the IID test set vs on the OOC set for one or more
models -- the numbers behind supplementary Fig. 5 (right), whose plot lives in the widgets.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

import bitkit
from bitkit.evaluate import Data, Report, predict
from bitkit.fileio import atomic_write_text, clear_written, record_written

#: Supplementary F.1: the object's longest side is 80% of the background width.
OBJECT_FRACTION = 0.8
PLACEMENTS = ("center", "random")
BLENDS = ("none", "gaussian")
#: How :func:`build` signs the files it writes in ``.bitkit-written.json`` (bitkit.fileio).
BUILD_WRITER = "bitkit.ooc.build"
_HF_FILES = ("hf/state.json", "hf/dataset_info.json")


class OOCInputError(ValueError):
    """A foreground, mask or background that cannot be used; the message names the file/id."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _as_hwc_uint8(image: Any, where: str) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    a = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:  # (3, H, W) as bitkit.data gives
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise OOCInputError(f"{where}: expected an RGB uint8 image (H, W, 3) or (3, H, W); got "
                            f"dtype {a.dtype}, shape {a.shape}")
    return np.ascontiguousarray(a)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); an unreadable file raises naming it."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise OOCInputError(f"{path}: file not found") from None
    except Exception as e:  # PIL raises several types for corrupt/unsupported files
        raise OOCInputError(f"{path}: cannot read this image ({type(e).__name__}: {e}); "
                            "re-export it as PNG or JPEG") from None


def _load_mask_file(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L") if im.mode not in ("1", "L") else im)
    except FileNotFoundError:
        raise OOCInputError(f"{path}: mask file not found") from None
    except Exception as e:
        raise OOCInputError(f"{path}: cannot read this mask ({type(e).__name__}: {e})") from None


def check_mask(mask: Any, image_shape: tuple[int, ...], where: str) -> np.ndarray:
    """Validate a segmentation mask and return it as bool (H, W).

    Binary means bool, or exactly two levels {0, 1} or {0, 255}; soft alpha mattes must be
    thresholded by the caller (a silent threshold here would hide a wrong file).
    """
    m = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim == 3 and 1 in (m.shape[0], m.shape[2]):
        m = m.reshape(m.shape[0] if m.shape[2] == 1 else m.shape[1],
                      m.shape[1] if m.shape[2] == 1 else m.shape[2])
    if m.ndim != 2:
        raise OOCInputError(f"{where}: a mask must be 2-D (H, W); got shape {m.shape}")
    if m.shape != tuple(image_shape[:2]):
        raise OOCInputError(f"{where}: mask is {m.shape[1]}x{m.shape[0]} (WxH) but its image is "
                            f"{image_shape[1]}x{image_shape[0]}; masks must match their image")
    if m.dtype != bool:
        levels = np.unique(m)
        if not (set(levels.tolist()) <= {0, 1} or set(levels.tolist()) <= {0, 255}):
            shown = ", ".join(f"{v:g}" for v in levels[:6])
            raise OOCInputError(f"{where}: mask is not binary (values {shown}"
                                f"{', ...' if levels.size > 6 else ''}); expected {{0, 1}} or "
                                "{0, 255}. Threshold soft masks first, e.g. mask >= 128")
        m = m > 0
    if not m.any():
        raise OOCInputError(f"{where}: mask is empty (no foreground pixel)")
    return m


@dataclass(frozen=True)
class Foreground:
    """A segmented object: RGB uint8 (H, W, 3), bool mask (H, W), its class in the model's labels."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    label: int
    class_name: str
    source: str = ""
    license: str = ""
    attribution: str = ""

    @classmethod
    def create(cls, id: str, image: Any, mask: Any, label: int, class_name: str, *,
               source: str = "", license: str = "", attribution: str = "") -> Foreground:
        """Validate arrays/PIL images/tensors and build a foreground (errors name ``id``)."""
        img = _as_hwc_uint8(image, f"foreground {id!r}")
        return cls(id, img, check_mask(mask, img.shape, f"foreground {id!r} mask"), int(label),
                   class_name, source, license, attribution)

    @classmethod
    def from_files(cls, id: str, image_path: str | Path, mask_path: str | Path, label: int,
                   class_name: str, *, source: str = "", license: str = "",
                   attribution: str = "") -> Foreground:
        """Read an image and its mask file (errors name the file)."""
        img = load_image(image_path)
        mask = check_mask(_load_mask_file(Path(mask_path)), img.shape, str(mask_path))
        return cls(id, img, mask, int(label), class_name, source or str(image_path), license,
                   attribution)


@dataclass(frozen=True)
class Background:
    """A background photo (RGB uint8 (H, W, 3)) with what its license requires us to keep."""

    id: str
    image: np.ndarray
    name: str
    license: str = ""
    attribution: str = ""

    @classmethod
    def create(cls, id: str, image: Any, name: str, *, license: str = "",
               attribution: str = "") -> Background:
        return cls(id, _as_hwc_uint8(image, f"background {id!r}"), name, license, attribution)

    @classmethod
    def from_file(cls, id: str, path: str | Path, name: str, *, license: str = "",
                  attribution: str = "") -> Background:
        return cls(id, load_image(path), name, license, attribution)


# --------------------------------------------------------------------------------------------
# The rule of supplementary F.1
# --------------------------------------------------------------------------------------------


def square_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Largest square from the top-left corner: (left, top, right, bottom)."""
    side = min(width, height)
    return (0, 0, side, side)


def object_size(box_w: int, box_h: int, canvas: int) -> tuple[int, int]:
    """(w, h) of the object scaled so that its longest side is exactly round(0.8 * canvas)."""
    target = max(1, round(OBJECT_FRACTION * canvas))
    long = max(box_w, box_h)
    w = target if box_w == long else max(1, round(box_w * target / long))
    h = target if box_h == long else max(1, round(box_h * target / long))
    return w, h


def _gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (zero padding), plain numpy: identical bytes on every run."""
    r = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    out = a.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        win = np.lib.stride_tricks.sliding_window_view(np.pad(out, pad), 2 * r + 1, axis=axis)
        out = (win * k).sum(axis=-1)
    return out


def _placement_rng(seed: int, fg_id: str, bg_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{fg_id}\0{bg_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def compose(fg: Foreground, bg: Background, *, output_size: int | None = None,
            placement: str = "center", blend: str = "none", feather: float = 0.02,
            seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Paste ``fg`` on ``bg`` by the rule of supplementary F.1 -> (RGB uint8 image, record).

    ``output_size`` resizes the square background crop first (so 80% holds in output pixels);
    None keeps the crop's own size.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}; got {blend!r}")
    if output_size is not None and output_size < 2:
        raise ValueError(f"output_size must be >= 2 pixels; got {output_size}")
    bh, bw = bg.image.shape[:2]
    crop = square_crop_box(bw, bh)
    canvas_img = Image.fromarray(bg.image[crop[1]:crop[3], crop[0]:crop[2]])
    size = output_size or crop[2]
    if size != crop[2]:
        canvas_img = canvas_img.resize((size, size), Image.Resampling.LANCZOS)
    canvas = np.asarray(canvas_img, dtype=np.float32)

    rows, cols = np.nonzero(fg.mask.any(axis=1))[0], np.nonzero(fg.mask.any(axis=0))[0]
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # tight box of the object
    w, h = object_size(x1 - x0, y1 - y0, size)
    obj = Image.fromarray(fg.image[y0:y1, x0:x1]).resize((w, h), Image.Resampling.LANCZOS)
    soft = Image.fromarray(fg.mask[y0:y1, x0:x1].astype(np.float32)).resize(
        (w, h), Image.Resampling.BILINEAR)
    hard = np.asarray(soft) >= 0.5

    if placement == "center":
        x, y = (size - w) // 2, (size - h) // 2
    else:
        g = _placement_rng(seed, fg.id, bg.id)
        x, y = int(g.integers(0, size - w + 1)), int(g.integers(0, size - h + 1))

    alpha = np.zeros((size, size), np.float64)
    alpha[y:y + h, x:x + w] = hard
    layer = np.zeros_like(canvas)
    layer[y:y + h, x:x + w] = np.asarray(obj, dtype=np.float32)
    sigma = 0.0
    if blend == "gaussian":
        sigma = max(0.5, feather * max(w, h))
        # Feather inside the object only, so no pixels from around the object leak in.
        alpha = np.minimum(_gaussian_blur(alpha, sigma), alpha)
    a = alpha[..., None].astype(np.float32)
    out = np.clip(np.rint(canvas * (1 - a) + layer * a), 0, 255).astype(np.uint8)
    record = {
        "id": f"{fg.id}@{bg.id}", "label": fg.label, "class_name": fg.class_name,
        "fg_id": fg.id, "fg_source": fg.source, "fg_license": fg.license,
        "fg_attribution": fg.attribution, "fg_box": [int(x0), int(y0), int(x1), int(y1)],
        "bg_id": bg.id, "bg_name": bg.name, "bg_license": bg.license,
        "bg_attribution": bg.attribution, "bg_size": [int(bw), int(bh)], "crop_box": list(crop),
        "output_size": int(size), "scale": float(max(w, h) / max(x1 - x0, y1 - y0)),
        "object_box": [int(x), int(y), int(w), int(h)], "position": [int(x), int(y)],
        "placement": placement, "blend": blend, "feather_sigma": float(sigma), "seed": int(seed),
        "bitkit_version": bitkit.__version__,
    }
    return out, record


# --------------------------------------------------------------------------------------------
# Building the dataset
# --------------------------------------------------------------------------------------------


def _unique(ids: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise OOCInputError(f"two {what}s have the id {i!r}; ids must be unique")
        seen.add(i)


def build(foregrounds: Sequence[Foreground], backgrounds: Sequence[Background],
          out_dir: str | Path, *, output_size: int | None = None, placement: str = "center",
          blend: str = "none", feather: float = 0.02, seed: int = 0, hf: bool = True,
          overwrite: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Paste every foreground on every background and write the dataset to ``out_dir``.

    Writes ``images/00000.png ...`` and ``metadata.jsonl`` (HF imagefolder layout), and with
    ``hf=True`` the same rows as an HF ``Dataset`` in ``hf/`` (``datasets.load_from_disk``).
    Returns the metadata records, in file order (foreground-major).

    ``out_dir`` must be new, empty, or a dataset this function built: a folder holding anything
    else (a ``notes.txt`` of yours, another dataset) is refused with
    :class:`~bitkit.fileio.ForeignFilesError`, which names a few of those files, and nothing is
    touched. ``overwrite=True`` replaces a dataset built here before: it removes exactly the
    files that build recorded writing (``.bitkit-written.json``; for a folder built before such
    records, the files its ``metadata.jsonl`` names), never the folder or anything else.
    Without it such a folder raises ``FileExistsError``.
    """
    from tqdm.auto import tqdm

    if not foregrounds or not backgrounds:
        raise OOCInputError("need at least one foreground and one background")
    _unique([f.id for f in foregrounds], "foreground")
    _unique([b.id for b in backgrounds], "background")
    out = Path(out_dir)
    # A dataset folder must hold the dataset and nothing else: a stray file would be read as part
    # of it (imagefolder reads every image under it), and a folder of the user's is never ours to
    # empty. So foreign files are refused (before anything is removed), not worked around.
    if out.exists() and any(out.iterdir()):
        ours = clear_written(out, BUILD_WRITER, what="an OOC dataset",
                             legacy=_built_before_records, remove=False)
        if ours and not overwrite:
            raise FileExistsError(f"{out} holds an OOC dataset built before; choose a new folder "
                                  "or pass overwrite=True to replace it")
        clear_written(out, BUILD_WRITER, what="an OOC dataset", legacy=_built_before_records)
    combos = [(f, b) for f in foregrounds for b in backgrounds]
    record_written(out, BUILD_WRITER, [*(f"images/{n:05d}.png" for n in range(len(combos))),
                                       "metadata.jsonl"])
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for n, (f, b) in enumerate(tqdm(combos, desc="ooc", disable=not progress, leave=False)):
        image, rec = compose(f, b, output_size=output_size, placement=placement, blend=blend,
                             feather=feather, seed=seed)
        rec["file_name"] = f"images/{n:05d}.png"
        Image.fromarray(image).save(out / rec["file_name"], format="PNG", optimize=False)
        records.append(rec)
    # Written last and atomically: a metadata.jsonl present means every image before it is.
    atomic_write_text(out / "metadata.jsonl",
                      "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records))
    if hf:
        _save_hf(out, records, progress)
    return records


def _save_hf(out: Path, records: list[dict[str, Any]], progress: bool) -> None:
    import datasets

    columns: dict[str, list[Any]] = {k: [r[k] for r in records] for k in sorted(records[0])}
    # The PNG bytes are embedded so hf/ stands alone (paths would tie it to this folder).
    columns["image"] = [{"bytes": (out / r["file_name"]).read_bytes(),
                         "path": Path(r["file_name"]).name} for r in records]
    ds = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    # The shard count of datasets' default (500 MB shards), fixed here so that every file of
    # hf/ is known, and recorded, before it is written.
    shards = min(len(ds), int(ds.data.nbytes / 500e6) + 1)
    record_written(out, BUILD_WRITER, [*_HF_FILES, *(
        f"hf/data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards))])
    was_enabled = not datasets.utils.are_progress_bars_disabled()
    if not progress:
        datasets.utils.disable_progress_bars()
    try:
        ds.save_to_disk(str(out / "hf"), num_shards=shards)
    finally:
        if was_enabled:
            datasets.utils.enable_progress_bars()


def _built_before_records(out: Path) -> list[str]:
    """The files of a dataset :func:`build` wrote before it kept ``.bitkit-written.json``:
    ``metadata.jsonl`` whose every record is one of ours, the images it names (only
    ``images/NNNNN.png``) and datasets' files in ``hf/``. Nothing when in doubt."""
    try:
        records = read_records(out)
    except (OSError, ValueError):
        return []
    ours = {"bitkit_version", "fg_id", "bg_id", "file_name", "crop_box"}
    if not records or not all(isinstance(r, dict) and ours <= set(r) for r in records):
        return []
    images = [r["file_name"] for r in records]
    if not all(isinstance(f, str) and re.fullmatch(r"images/\d{5}\.png", f) for f in images):
        return []
    hf = [f"hf/{p.name}" for p in (out / "hf").glob("*")
          if p.name in ("state.json", "dataset_info.json")
          or re.fullmatch(r"data-\d{5}-of-\d{5}\.arrow", p.name)]
    return ["metadata.jsonl", *images, *hf]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The metadata records of a built OOC folder."""
    f = Path(path) / "metadata.jsonl"
    if not f.exists():
        raise FileNotFoundError(f"{f} not found; build the dataset with bitkit.ooc.build first")
    with open(f, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class OOCDataset(Dataset):
    """A built OOC folder as a map-style dataset of (uint8 (3, S, S) tensor, label).

    ``image_size`` resizes on load (e.g. to the model's test resolution); ``class_names`` should
    be the model's label names (the foregrounds' labels index into them).
    """

    def __init__(self, path: str | Path, *, image_size: int | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        self.root = Path(path)
        self.records = read_records(self.root)
        self.image_size = image_size
        self.class_names = list(class_names) if class_names is not None else None
        self.ids = [r["id"] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rec = self.records[i]
        img = load_image(self.root / rec["file_name"])
        if self.image_size and img.shape[0] != self.image_size:
            img = np.asarray(Image.fromarray(img).resize((self.image_size, self.image_size),
                                                         Image.Resampling.BILINEAR))
        return torch.from_numpy(img.copy()).permute(2, 0, 1), int(rec["label"])


# --------------------------------------------------------------------------------------------
# Evaluation: IID vs OOC (supplementary F, Fig. 5 right)
# --------------------------------------------------------------------------------------------


@dataclass
class OOCResult:
    """Per model: IID and OOC reports; ``rows()`` is the scatter of supplementary Fig. 5."""

    iid: dict[str, Report]
    ooc: dict[str, Report]
    info: dict[str, dict[str, Any]]

    def rows(self) -> list[dict[str, Any]]:
        """One point per model: x = IID top-1, y = OOC top-1 (fractions in [0, 1], like every
        accuracy bitkit returns; multiply by 100 for a percent axis), plus legend/size fields."""
        return [{"model": name, "iid_top1": self.iid[name].top1,
                 "ooc_top1": self.ooc[name].top1, "iid_examples": len(self.iid[name]),
                 "ooc_examples": len(self.ooc[name]), **self.info[name]} for name in self.iid]

    def by_background(self, model: str, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """OOC top-1 (fraction) per background name for one model (which contexts mislead it)."""
        rep = self.ooc[model]
        names = {r["id"]: r["bg_name"] for r in records}
        correct = rep.correct(1)
        groups: dict[str, list[bool]] = {}
        for i, ok in zip(rep.ids.tolist(), correct.tolist(), strict=True):
            groups.setdefault(names[i], []).append(ok)
        return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


def evaluate_ooc(models: Mapping[str, nn.Module], iid: Data, ooc: Data, *,
                 upstream: Mapping[str, str] | None = None, batch_size: int = 64,
                 progress: bool = True) -> OOCResult:
    """Top-1 of each model on the IID test set and on the OOC set.

    ``upstream`` names each model's pre-training data (the legend of Fig. 5); the parameter count
    is recorded for marker size ("larger markers: larger architectures").
    """
    if not models:
        raise ValueError("give at least one model")
    iid_r, ooc_r, info = {}, {}, {}
    for name, model in models.items():
        iid_r[name] = predict(model, iid, batch_size=batch_size, progress=progress)
        ooc_r[name] = predict(model, ooc, batch_size=batch_size, progress=progress,
                              class_names=iid_r[name].class_names)
        info[name] = {"upstream": (upstream or {}).get(name, ""),
                      "params": int(sum(p.numel() for p in model.parameters()))}
    return OOCResult(iid_r, ooc_r, info)
