"""Released BiT weights and interop: the ``.npz`` layout, safetensors, timm state dicts.

The released checkpoints (``BiT-M-R50x1.npz`` and friends) are TensorFlow variables saved with
NumPy: names like ``resnet/block1/unit01/a/standardized_conv2d/kernel`` and HWIO conv kernels.
Every format is first turned into *our* parameter names, lazily, then one function
(:func:`_assign`) checks the architecture, every key and every shape and copies the tensors. So a
mismatch gets the same clear message whichever format it came from.

Loading is BiT transfer by default: the body comes from the file and the head (weight and bias)
starts at zero whatever the class counts, as the paper (3.3, 4.1) and Google's code do;
``keep_head=True`` restores the file's head exactly, for evaluating or converting a file.

Released files are not downloaded unless asked: :func:`fetch` (``bitkit weights fetch NAME``)
gets one into ``$BITKIT_WEIGHTS`` (``~/.cache/bitkit/weights``) from the Hugging Face Hub, where
timm publishes BiT-M, or from Google's bucket ``https://storage.googleapis.com/bit_models``,
with resume and an md5 check. Offline, its error says how to download the file by hand; any
path works as ``weights=``.

This module builds on the architecture (:mod:`bitkit.resnetv2`) and never imports
:mod:`bitkit.models`, whose ``create(name, weights=path)`` calls :func:`load`.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import importlib
import inspect
import logging
import os
import pickle
import re
import shlex
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitkit.fileio import atomic_write
from bitkit.inputs import did_you_mean
from bitkit.resnetv2 import CONFIGS, RELEASED_SIZES, ResNetV2

log = logging.getLogger(__name__)

RELEASE_URL = "https://storage.googleapis.com/bit_models"
NPZ_PREFIX = "resnet/"

# ---------------------------------------------------------------------------------------------
# Names: ours <-> released TF names <-> timm's
# ---------------------------------------------------------------------------------------------

# Inside a unit: a = first 1x1 (norm1/conv1, and the projection), b = 3x3, c = last 1x1.
_UNIT_TF = {
    "conv1.weight": "a/standardized_conv2d/kernel",
    "conv2.weight": "b/standardized_conv2d/kernel",
    "conv3.weight": "c/standardized_conv2d/kernel",
    "norm1.weight": "a/group_norm/gamma",
    "norm1.bias": "a/group_norm/beta",
    "norm2.weight": "b/group_norm/gamma",
    "norm2.bias": "b/group_norm/beta",
    "norm3.weight": "c/group_norm/gamma",
    "norm3.bias": "c/group_norm/beta",
    "proj.weight": "a/proj/standardized_conv2d/kernel",
}
_TOP_TF = {
    "stem.conv.weight": "root_block/standardized_conv2d/kernel",
    "norm.weight": "group_norm/gamma",
    "norm.bias": "group_norm/beta",
    "head.weight": "head/conv2d/kernel",
    "head.bias": "head/conv2d/bias",
}
_TF_UNIT = {v: k for k, v in _UNIT_TF.items()}
_TF_TOP = {v: k for k, v in _TOP_TF.items()}
_OUR_UNIT_RE = re.compile(r"stages\.(\d+)\.units\.(\d+)\.(.+)")
_TF_UNIT_RE = re.compile(r"block(\d+)/unit(\d+)/(.+)")
# Some released files number their convs (standardized_conv2d_1, ...): one name per scope.
_NUMBERED_CONV_RE = re.compile(r"standardized_conv2d_\d+")


def tf_name(name: str, prefix: str = NPZ_PREFIX) -> str:
    """Our parameter name -> the released checkpoint's variable name."""
    if name in _TOP_TF:
        return prefix + _TOP_TF[name]
    m = _OUR_UNIT_RE.fullmatch(name)
    if m and m.group(3) in _UNIT_TF:
        s, u, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        return f"{prefix}block{s + 1}/unit{u + 1:02d}/{_UNIT_TF[rest]}"
    raise KeyError(f"{name!r} has no place in the released .npz layout")


def our_name(key: str, prefix: str = NPZ_PREFIX) -> str | None:
    """Released variable name -> our parameter name (None if it is not a BiT parameter)."""
    if not key.startswith(prefix):
        return None
    key = _NUMBERED_CONV_RE.sub("standardized_conv2d", key[len(prefix):])
    if key in _TF_TOP:
        return _TF_TOP[key]
    m = _TF_UNIT_RE.fullmatch(key)
    if m and m.group(3) in _TF_UNIT:
        return f"stages.{int(m.group(1)) - 1}.units.{int(m.group(2)) - 1}.{_TF_UNIT[m.group(3)]}"
    return None


def to_timm_name(name: str) -> str:
    """Our name -> timm ``ResNetV2`` name (``resnetv2_*_bit``)."""
    name = re.sub(r"^stages\.(\d+)\.units\.", r"stages.\1.blocks.", name)
    name = name.replace(".proj.weight", ".downsample.conv.weight")
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", name)


def from_timm_name(name: str) -> str:
    """timm ``ResNetV2`` name -> ours."""
    name = re.sub(r"^stages\.(\d+)\.blocks\.", r"stages.\1.units.", name)
    name = name.replace(".downsample.conv.weight", ".proj.weight")
    return re.sub(r"^head\.fc\.(weight|bias)$", r"head.\1", name)


def _hwio_to_oihw(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.reshape(-1)


def _oihw_to_hwio(t: torch.Tensor) -> np.ndarray:
    a = t.detach().cpu().float().numpy() if t.dtype == torch.bfloat16 else t.detach().cpu().numpy()
    return np.ascontiguousarray(a.transpose(2, 3, 1, 0)) if a.ndim == 4 else a


# ---------------------------------------------------------------------------------------------
# Sources: lazy name -> tensor mappings in our naming
# ---------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """A checkpoint seen through our parameter names, loaded one tensor at a time.

    Lazy so that a 3.7 GB R152x4 file never sits in memory twice.
    """

    path: str
    fmt: str
    loaders: dict[str, Callable[[], torch.Tensor]]  # our name -> tensor
    file_keys: dict[str, str]  # our name -> the name in the file (for messages)
    unexpected: list[str]
    metadata: dict[str, str]

    def get(self, name: str) -> torch.Tensor:
        # Tensors are read lazily, so a truncated file can fail here, long after opening.
        try:
            return self.loaders[name]()
        except _DAMAGE_ERRORS as e:
            raise DamagedFile(self.path, e) from e


class DamagedFile(ValueError):
    """A weights file that cannot be read back: truncated, or not what its suffix says.

    The usual cause is an interrupted download (released BiT files are 100 MB to 3.7 GB), and
    the fix is to download it again, so the message says that instead of the zip or
    safetensors library's own error.
    """

    def __init__(self, path: str | os.PathLike, cause: BaseException | str) -> None:
        why = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(
            f"{path}: the file is damaged or incomplete (e.g. an interrupted download): "
            f"download it again ({why})")


def _damage_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [zipfile.BadZipFile, OSError, EOFError, zlib.error,
                                         pickle.UnpicklingError, RuntimeError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return tuple(errors)


#: What reading a truncated or garbled file raises (zip, zlib, numpy, torch, safetensors).
_DAMAGE_ERRORS = _damage_errors()
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive (or an empty one)
_NPY_MAGIC = b"\x93NUMPY"


def _npz_source(path: str, prefix: str = NPZ_PREFIX) -> _Source:
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith(_ZIP_MAGIC) and magic != _NPY_MAGIC:
        # Not a zip: numpy would fall back to unpickling and blame "pickled data".
        raise DamagedFile(path, f"it does not start like an .npz (zip) archive: {magic!r}")
    try:
        npz = np.load(path, allow_pickle=False)
    except _DAMAGE_ERRORS as e:
        raise DamagedFile(path, e) from e
    except ValueError as e:  # object arrays need pickle: refuse, never unpickle a download
        raise ValueError(f"{path}: not a plain-array .npz ({e}). Released BiT files are.") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected an .npz archive of named arrays, found a single array")
    loaders, file_keys, unexpected = {}, {}, []
    for key in npz.files:
        name = our_name(key, prefix)
        if name is None:
            unexpected.append(key)
            continue
        if name in loaders:
            raise ValueError(
                f"{path}: both {file_keys[name]!r} and {key!r} map to {name!r}; the file holds "
                "two variables for one parameter, so it is not a single BiT model."
            )
        file_keys[name] = key
        loaders[name] = lambda key=key: _npz_tensor(npz, key, path)
    return _Source(path, "npz", loaders, file_keys, unexpected, {})


def _npz_tensor(npz: np.lib.npyio.NpzFile, key: str, path: str) -> torch.Tensor:
    try:
        array = npz[key]
    except ValueError as e:
        if "pickle" not in str(e):  # numpy's "EOF: reading array data": a truncated member
            raise DamagedFile(path, e) from e
        # an object array: loading it would unpickle
        raise ValueError(f"{path}: {key!r} is not a plain numeric array ({e}).") from e
    return torch.from_numpy(np.ascontiguousarray(_hwio_to_oihw(array)))


def _state_dict_source(path: str, tensors: Mapping[str, Callable[[], torch.Tensor]],
                       fmt: str, metadata: dict[str, str] | None = None) -> _Source:
    """A state dict in our naming or timm's (detected by its ``stages.N.blocks.`` keys)."""
    keys = list(tensors)
    timm_style = any(re.match(r"stages\.\d+\.blocks\.", k) for k in keys) or "head.fc.weight" in keys
    rename = from_timm_name if timm_style else (lambda k: k)
    loaders = {rename(k): tensors[k] for k in keys}
    return _Source(path, f"{fmt} ({'timm' if timm_style else 'bitkit'} names)", loaders,
                   {rename(k): k for k in keys}, [], metadata or {})


def _open(path: str | os.PathLike) -> _Source:
    p = Path(path)
    if not p.is_file():
        hint = ""
        if p.stem in released_names() or p.name in released_names():
            hint = f" It is a released BiT name: bitkit.weights.fetch({p.stem!r}) downloads it."
        raise FileNotFoundError(f"No weights file at {str(p)!r}.{hint}")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _npz_source(str(p))
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            f = safe_open(str(p), framework="pt")
        except _DAMAGE_ERRORS as e:
            raise DamagedFile(p, e) from e
        loaders = {k: (lambda k=k: f.get_tensor(k)) for k in f.keys()}
        return _state_dict_source(str(p), loaders, "safetensors", f.metadata() or {})
    if suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refused to run pickled code
            with open(p, "rb") as f:
                is_zip = f.read(4) in _ZIP_MAGIC  # torch.save writes zip archives since 1.6
            if "weights only" not in str(e).lower() or not is_zip:
                raise DamagedFile(p, e) from e
            raise ValueError(f"{p} holds Python objects besides tensors; bitkit only loads plain "
                             "state dicts (torch.load(weights_only=True)) so a file cannot run "
                             "code. Save model.state_dict() instead.") from e
        except _DAMAGE_ERRORS as e:
            raise DamagedFile(p, e) from e
        if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
            obj = obj["model"]  # a bitkit training checkpoint
        if not isinstance(obj, dict):
            raise ValueError(f"{p}: expected a state dict (name -> tensor), found {type(obj).__name__}")
        return _state_dict_source(str(p), {k: (lambda v=v: v) for k, v in obj.items()}, "torch")
    raise ValueError(
        f"{p}: unknown weights format {suffix!r}; use a released .npz, a .safetensors file "
        "(bitkit or timm names) or a .pt state dict."
    )


# ---------------------------------------------------------------------------------------------
# Architecture of a checkpoint, for messages that say what went wrong
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    units: tuple[int, ...]
    width: float | None
    num_classes: int | None

    @property
    def name(self) -> str:
        for n, c in CONFIGS.items():
            if c.units == self.units and c.width == self.width:
                return n
        return f"ResNet-v2 with units {self.units} and width {self.width}"


def _architecture(src: _Source) -> Architecture:
    units: dict[int, int] = {}
    for name in src.loaders:
        m = _OUR_UNIT_RE.fullmatch(name)
        if m:
            s, u = int(m.group(1)), int(m.group(2))
            units[s] = max(units.get(s, 0), u + 1)
    width = None
    if "stem.conv.weight" in src.loaders:
        width = src.get("stem.conv.weight").shape[0] / 64
        width = int(width) if width == int(width) else width
    classes = src.get("head.bias").shape[0] if "head.bias" in src.loaders else None
    return Architecture(tuple(units[s] for s in sorted(units)), width, classes)


def _bit_architecture(src: _Source) -> Architecture:
    """The architecture of a BiT ResNet-v2 file; a ``ValueError`` for anything else.

    A file counts when it has the stem or residual-unit weights (in the released, timm or
    bitkit names); a partial one (no head, some units missing) is still described.
    """
    arch = _architecture(src)
    if not arch.units and arch.width is None:
        keys = list(src.file_keys.values()) + src.unexpected
        shown = ", ".join(repr(k) for k in keys[:3]) + (f" and {len(keys) - 3} more"
                                                         if len(keys) > 3 else "")
        holds = f"holds {len(keys)} tensors ({shown})" if keys else "holds no tensors"
        raise ValueError(f"{src.path} {holds}: it is not a BiT ResNet-v2 checkpoint (no stem "
                         "or residual-unit weights in the released, timm or bitkit names).")
    return arch


def describe(path: str | os.PathLike) -> Architecture:
    """Which model a weights file holds (units per stage, width, classes), without a model.

    Raises a ``ValueError`` for a file that is not a BiT ResNet-v2 checkpoint.
    """
    return _bit_architecture(_open(path))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What :func:`load` did. ``head_reset``: the model's head was zero-initialised instead of
    taking the file's (the default, BiT transfer); False only with ``keep_head=True``, when the
    file's head was copied. ``architecture.num_classes`` is the file's class count (None: no
    head); ``message`` is the line that was logged."""

    path: str
    format: str
    architecture: Architecture
    loaded: int
    head_reset: bool
    message: str


def load(model: ResNetV2, path: str | os.PathLike, *, strict: bool = True,
         keep_head: bool = False) -> LoadResult:
    """Load weights into ``model`` from a released .npz, a safetensors file or a state dict.

    The body always comes from the file. The head (weight and bias) is zero-initialised by
    default, whatever the class counts: BiT transfer re-trains the head from scratch even from
    ILSVRC-2012 to ILSVRC-2012 (paper 3.3, 4.1), and a logged message says so.
    ``keep_head=True`` restores the file's head exactly instead (evaluating or predicting with
    a fine-tuned file, converting a file); it raises a ``ValueError`` when the file has no head
    or another number of classes than the model. Any other mismatch raises a ``ValueError``
    that names the key, both shapes and the likely cause. ``strict=False`` tolerates unknown
    keys.
    """
    src = _open(path)
    return _assign(model, src, strict=strict, keep_head=keep_head)


def _assign(model: ResNetV2, src: _Source, *, strict: bool, keep_head: bool) -> LoadResult:
    if src.fmt == "npz" and (model.norm_kind != "group" or model.conv_kind != "standardized"):
        raise ValueError(
            f"{src.path}: the released .npz layout holds GroupNorm + standardized-conv weights; "
            f"this model is an ablation (norm={model.norm_kind}, conv={model.conv_kind}). Build "
            "it with the defaults to load released weights."
        )
    _check_metadata(model, src)
    if not src.loaders:
        shown = ", ".join(repr(k) for k in src.unexpected[:3])
        raise ValueError(f"{src.path} holds no BiT ResNet variables (it has {shown}, ...); "
                         "is it a checkpoint of another model?")
    arch = _architecture(src)
    ours = model.config
    if arch.units and (arch.units != ours.units or arch.width != ours.width):
        raise ValueError(
            f"{src.path} holds an {arch.name} (units {arch.units}, width {arch.width}) but the "
            f"model is {ours.name} (units {ours.units}, width {ours.width}). Build the model "
            f"with create({arch.name!r}, ...) or pass a {ours.name} file."
        )

    expected = model.state_dict()
    head_keys = {"head.weight", "head.bias"}
    file_head = head_keys <= src.loaders.keys()
    if keep_head:
        _check_head_fits(model, src, arch, file_head)
    unexpected = sorted(set(src.loaders) - set(expected)) + src.unexpected
    if unexpected and strict:
        shown = ", ".join(repr(src.file_keys.get(k, k)) for k in unexpected[:5])
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise ValueError(
            f"{src.path}: keys the model has no place for: {shown}{more}. "
            + _likely_cause(unexpected)
            + " Pass strict=False to ignore them."
        )

    loaded = 0
    with torch.no_grad():
        for name, target in expected.items():
            # Transfer never reads the file's head, even one of the right shape: the model's head
            # is zeroed below, so an old classifier cannot leak into a new task.
            if name in head_keys and not keep_head:
                continue
            if name not in src.loaders:
                if name.endswith("num_batches_tracked"):
                    continue
                raise ValueError(
                    f"{src.path}: missing {_file_key(src, name)!r} (model parameter {name!r}). "
                    f"The file holds an {arch.name}; it may be truncated or from another model."
                )
            value = src.get(name)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"{src.path}: {_file_key(src, name)!r} has shape {tuple(value.shape)} in the "
                    f"file but the model's {name!r} has shape {tuple(target.shape)}. The file "
                    f"holds an {arch.name}, the model is {ours.name}: "
                    + ("the file may be corrupt." if arch.name == ours.name else
                       f"build create({arch.name!r}) instead.")
                )
            target.copy_(value.to(dtype=target.dtype))
            loaded += 1

    file_name = Path(src.path).name
    if keep_head:
        message = f"Loaded {loaded} tensors from {file_name} (head included: keep_head=True)."
        log.info(message)
        return LoadResult(src.path, src.fmt, arch, loaded, False, message)
    # BiT transfer (paper 3.3, 4.1; Google's code does the same): weight AND bias start at zero
    # whatever the file holds, so the first logits are uniform and the head is learnt afresh.
    model.reset_head(model.num_classes, zero_init=True)
    if not file_head:
        why = f"the file has no head, the model {model.num_classes} classes"
    elif arch.num_classes != model.num_classes:
        why = f"the file has {arch.num_classes} classes, the model {model.num_classes}"
    else:
        why = (f"the file's {arch.num_classes}-class head is not used (keep_head=True "
               "restores it)")
    message = (f"Loaded {loaded} tensors from {file_name}; {why}: new head initialised to zeros "
               "(BiT transfer).")
    log.warning(message)
    return LoadResult(src.path, src.fmt, arch, loaded, True, message)


def _check_head_fits(model: ResNetV2, src: _Source, arch: Architecture, file_head: bool) -> None:
    """``keep_head=True`` promises the file's classifier: refuse before copying anything."""
    fix = ("leave keep_head off to start from a zero-initialised head (BiT transfer)")
    if not file_head:
        raise ValueError(
            f"{src.path}: keep_head=True restores the file's head, but the file has no head "
            f"(the model has {model.num_classes} classes); {fix}."
        )
    if arch.num_classes != model.num_classes:
        raise ValueError(
            f"{src.path}: keep_head=True restores the file's head, but the file has "
            f"{arch.num_classes} classes and the model {model.num_classes}. Build the model "
            f"with num_classes={arch.num_classes} to restore it, or {fix}."
        )


def _file_key(src: _Source, name: str) -> str:
    if name in src.file_keys:
        return src.file_keys[name]
    if src.fmt == "npz":
        return tf_name(name)
    return to_timm_name(name) if "timm" in src.fmt else name


def _likely_cause(keys: Iterable[str]) -> str:
    keys = list(keys)
    if any("running_mean" in k for k in keys):
        return "They are BatchNorm statistics: the file comes from a norm='batch' model."
    if any(not k.startswith(NPZ_PREFIX) and "/" in k for k in keys):
        return f"Variables outside {NPZ_PREFIX!r}: this is not a BiT ResNet checkpoint."
    return "The file is probably from another architecture."


def _check_metadata(model: ResNetV2, src: _Source) -> None:
    """bitkit's own safetensors files record how the model was built: compare before copying."""
    md = src.metadata
    for field, ours in (("norm", model.norm_kind), ("conv", model.conv_kind)):
        if field in md and md[field] != ours:
            raise ValueError(
                f"{src.path} was saved from a {field}={md[field]!r} model; this model has "
                f"{field}={ours!r}. Build it with create(..., {field}={md[field]!r})."
            )


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_npz(model: ResNetV2, path: str | os.PathLike, prefix: str = NPZ_PREFIX) -> Path:
    """Write the released layout (TF names, HWIO kernels): loadable by Google's code and timm."""
    if model.norm_kind != "group" or model.conv_kind != "standardized":
        raise ValueError(
            f"The .npz layout only describes GN + WS models, not this ablation (norm={model.norm_kind}, "
            f"conv={model.conv_kind}); use save_safetensors."
        )
    arrays = {tf_name(k, prefix): _oihw_to_hwio(v) for k, v in model.state_dict().items()}

    # a file object keeps np.savez from appending ".npz"
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def save_safetensors(model: ResNetV2, path: str | os.PathLike, *, timm_names: bool = False) -> Path:
    """Our state dict (or timm's names) with metadata saying how to rebuild the model."""
    from safetensors.torch import save_file

    from bitkit import __version__

    sd = model.state_dict()
    tensors = {(to_timm_name(k) if timm_names else k): v.contiguous() for k, v in sd.items()}
    metadata = {
        "format": "pt",
        "model": model.name,
        "num_classes": str(model.num_classes),
        "norm": model.norm_kind,
        "conv": model.conv_kind,
        "bitkit_version": __version__,
    }
    return atomic_write(path, lambda f: save_file(tensors, f.name, metadata=metadata))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata bitkit stored in a safetensors file (model name, classes, norm, conv)."""
    return dict(_open(path).metadata)


def to_timm_state_dict(model: ResNetV2) -> dict[str, torch.Tensor]:
    """State dict for ``timm.create_model("resnetv2_50x1_bit", ...)`` of the same size."""
    return {to_timm_name(k): v for k, v in model.state_dict().items()}


def load_timm_state_dict(model: ResNetV2, state_dict: Mapping[str, torch.Tensor],
                         *, strict: bool = True, keep_head: bool = False) -> LoadResult:
    """Load a timm ``resnetv2_*_bit`` state dict (e.g. ``timm_model.state_dict()``).

    The same rule as :func:`load`: a zero-initialised head unless ``keep_head=True``.
    """
    src = _state_dict_source("<timm state dict>", {k: (lambda v=v: v) for k, v in state_dict.items()},
                             "state dict")
    return _assign(model, src, strict=strict, keep_head=keep_head)


# ---------------------------------------------------------------------------------------------
# Released files: where each one comes from, and fetching it
# ---------------------------------------------------------------------------------------------

#: Where :func:`fetch` may download from: ``auto`` tries the Hub for the names timm publishes,
#: then Google's bucket.
FETCH_SOURCES = ("auto", "hub", "bucket")
#: The file in each of timm's Hub repositories: a state dict in timm's parameter names.
HUB_FILENAME = "model.safetensors"
_FINE_TUNED = "-ILSVRC2012"
# The 285 VTAB-1k runs live under vtab/ in the bucket: BiT-M-R50x1-run0-caltech101.npz, ...
_VTAB_RE = re.compile(r"BiT-[SM]-R\d+x\d+-run\d+-[A-Za-z0-9_.-]+")
_CHUNK = 1 << 20
_TIMEOUT = 60  # seconds without a byte before a download counts as broken


def released_names() -> list[str]:
    """Upstream checkpoints as released: BiT-S (ILSVRC-2012) and BiT-M (ImageNet-21k).

    Google's bucket also holds BiT-M fine-tuned on ILSVRC-2012 (``BiT-M-R50x1-ILSVRC2012``),
    the VTAB-1k runs and distilled models; :func:`released_sources` says where each comes from.
    """
    return [f"BiT-{u}-{s}" for u in ("S", "M") for s in RELEASED_SIZES]


@dataclass(frozen=True)
class WeightsSource:
    """Where one released checkpoint can be downloaded from.

    ``url`` is Google's bucket (the released ``.npz``, every name has one); ``hub_repo`` the
    Hugging Face Hub repository in which timm publishes the same weights as ``model.safetensors``
    (timm's conversion of that .npz, in timm's names), or None.
    """

    name: str
    url: str
    hub_repo: str | None
    about: str

    @property
    def hub_command(self) -> str | None:
        """The shell line that downloads the Hub copy by hand (None: not on the Hub)."""
        return f"hf download {self.hub_repo} {HUB_FILENAME}" if self.hub_repo else None


def _normalise(name: str) -> str:
    name = str(name).strip().removesuffix(".npz").removeprefix("vtab/")
    if (not name or name.startswith(("/", ".")) or "\\" in name or ".." in name.split("/")
            or name.endswith("/")):
        raise ValueError(f"{name!r} is not a released checkpoint name; `bitkit weights fetch "
                         "--list` shows them (e.g. BiT-M-R50x1)")
    return name


def hub_repo(name: str) -> str | None:
    """The Hub repository holding ``name``'s weights (timm's copy), or None if timm has none.

    timm publishes BiT-M upstream (``timm/resnetv2_50x1_bit.goog_in21k``, 21843 classes) and
    BiT-M fine-tuned on ILSVRC-2012 (``...goog_in21k_ft_in1k``) for the six released sizes.
    BiT-S, the VTAB-1k runs and the distilled models are only in Google's bucket. (timm's
    ``goog_distilled_in1k`` and ``goog_teacher_*`` weights are the distillation paper's, not
    released BiT names.)
    """
    name = _normalise(name)
    base = name.removesuffix(_FINE_TUNED)
    size = base.removeprefix("BiT-M-")
    if size == base or size not in RELEASED_SIZES:
        return None
    depth, width = size[1:].split("x")
    tag = "goog_in21k_ft_in1k" if name.endswith(_FINE_TUNED) else "goog_in21k"
    return f"timm/resnetv2_{depth}x{width}_bit.{tag}"


def source_of(name: str, base_url: str = RELEASE_URL) -> WeightsSource:
    """Where ``name`` comes from: its bucket URL (under ``base_url``) and its Hub repository."""
    name = _normalise(name)
    vtab = bool(_VTAB_RE.fullmatch(name))
    url = f"{base_url.rstrip('/')}/{'vtab/' if vtab else ''}{name}.npz"
    if name.startswith("BiT-S-"):
        about = "ILSVRC-2012 upstream, 1000 classes"
    elif vtab:
        about = "BiT-M fine-tuned on a VTAB-1k task (one of three runs)"
    elif name.endswith(_FINE_TUNED):
        about = "ImageNet-21k upstream fine-tuned on ILSVRC-2012, 1000 classes"
    elif name.startswith("BiT-M-"):
        about = "ImageNet-21k upstream, 21843 classes"
    else:
        about = "a file in Google's bucket"
    return WeightsSource(name, url, hub_repo(name), about)


def released_sources(base_url: str = RELEASE_URL) -> dict[str, WeightsSource]:
    """Every released name bitkit lists -> where it comes from.

    The twelve upstream checkpoints (:func:`released_names`) and the six BiT-M fine-tuned on
    ILSVRC-2012. :func:`fetch` also takes the VTAB-1k runs (``BiT-M-R50x1-run0-caltech101``) and
    any other file of the bucket (``distill/R50x1_224``), from the bucket.
    """
    names = released_names() + [f"BiT-M-{s}{_FINE_TUNED}" for s in RELEASED_SIZES]
    return {n: source_of(n, base_url) for n in names}


def default_cache_dir() -> Path:
    """``$BITKIT_WEIGHTS``, or ``~/.cache/bitkit/weights``: where :func:`fetch` keeps files."""
    return Path(os.environ.get("BITKIT_WEIGHTS") or Path.home() / ".cache" / "bitkit" / "weights"
                ).expanduser()


class WeightsUnavailable(FileNotFoundError):
    """A released checkpoint that could not be downloaded: no network, offline mode
    (``HF_HUB_OFFLINE=1``), a refused connection, a download that broke off, no such file.

    The message says how to get the file by hand: the URL, a ``curl`` line, the Hub
    alternative, and where to put it so that :func:`fetch` finds it without network.
    """

    def __init__(self, message: str, source: WeightsSource, target: Path) -> None:
        super().__init__(message)
        self.source, self.target = source, target


class DownloadCorrupted(ValueError):
    """A download that arrived whole but is wrong: its md5 differs from the server's, or it is
    not a readable BiT checkpoint. Its ``.part`` file is deleted; fetching again starts afresh."""


class _SourceFailed(Exception):
    """One source could not deliver (network, offline, missing): :func:`fetch` tries the next.
    ``missing``: the server said there is no such file, so downloading by hand cannot help."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class _Interrupted(Exception):
    """The connection ended before the whole file arrived; the ``.part`` stays for a resume."""


def fetch(name: str, cache_dir: str | os.PathLike | None = None,
          base_url: str = RELEASE_URL, *, source: str = "auto",
          hub_cache_dir: str | os.PathLike | None = None, progress: bool | None = None,
          retries: int = 2) -> Path:
    """Path of a released checkpoint, downloaded once; a file already there needs no network.

    ``name``: a released name (``BiT-M-R50x1``, ``BiT-S-R101x3``, ``BiT-M-R50x1-ILSVRC2012``,
    ``BiT-M-R50x1-run0-caltech101``; ``.npz`` optional). ``source``:

    - ``"hub"``: the Hugging Face Hub copy timm publishes (``timm/resnetv2_50x1_bit.goog_in21k``,
      ``model.safetensors``) through ``huggingface_hub``, into its own cache (``$HF_HUB_CACHE``,
      or ``hub_cache_dir``); only BiT-M upstream and BiT-M fine-tuned on ILSVRC-2012 are there.
    - ``"bucket"``: ``<base_url>/<name>.npz`` from Google's bucket into ``cache_dir`` (default
      ``$BITKIT_WEIGHTS`` or ``~/.cache/bitkit/weights``), with a progress bar (``progress``;
      default: on in a terminal or Jupyter, off otherwise and under ``BITKIT_RUN_QUIET=1``),
      resume of a broken download from ``<name>.npz.part`` by an HTTP Range request
      (``retries`` times in one call, and on the next call), the md5 of the server's
      ``x-goog-hash`` header and a check that the file is a BiT checkpoint, all before the
      file is renamed into place.
    - ``"auto"`` (default): the Hub where the name is there, else (or when it fails) the bucket.

    Offline, or when no source answers, raises :class:`WeightsUnavailable` (a
    ``FileNotFoundError``) saying how to download the file by hand. A file put by hand at
    ``<cache_dir>/<name>.npz``, or ``<cache_dir>/<name>/model.safetensors`` (``hf download ...
    --local-dir <cache_dir>/<name>``), is returned without network; ``weights=PATH`` takes
    either file wherever it is.
    """
    if source not in FETCH_SOURCES:
        raise ValueError(f"source={source!r}: choose one of {', '.join(FETCH_SOURCES)}")
    src = source_of(name, base_url)
    if source == "hub" and not src.hub_repo:
        raise ValueError(f"{src.name} is not on the Hugging Face Hub: timm publishes BiT-M and "
                         f"BiT-M-...{_FINE_TUNED} only (`bitkit weights fetch --list`); use "
                         "source='bucket'")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = cache / f"{src.name}.npz"
    hand_hub = cache / src.name / HUB_FILENAME  # where `hf download --local-dir` puts it
    use_hub = bool(src.hub_repo) and source in ("auto", "hub")
    use_bucket = source in ("auto", "bucket")
    if use_bucket and target.is_file():
        return target
    if use_hub and hand_hub.is_file():
        return hand_hub
    if progress is None:
        progress = os.environ.get("BITKIT_RUN_QUIET", "0") != "1" and _interactive()

    failures: list[_SourceFailed] = []
    if use_hub:
        try:
            return _fetch_hub(src, hub_cache_dir, progress)
        except _SourceFailed as e:
            failures.append(e)
            log.info("%s", e)
    if use_bucket:
        try:
            return _fetch_bucket(src, target, progress=progress, retries=retries)
        except _SourceFailed as e:
            failures.append(e)
    raise WeightsUnavailable(_by_hand(src, target, cache, failures), src, target)


def _interactive() -> bool:
    """Someone watches: a terminal, or a Jupyter kernel (whose stderr is no TTY but shows bars;
    ``bitkit run`` executes notebooks with ``BITKIT_RUN_QUIET=1``)."""
    err = sys.stderr
    return err is not None and (err.isatty() or type(err).__module__.startswith("ipykernel"))


def _by_hand(src: WeightsSource, target: Path, cache: Path, failures: list[_SourceFailed]) -> str:
    why = "; ".join(str(f) for f in failures)
    if any(f.missing for f in failures):
        return f"Could not download {src.name}: {why}."
    return (f"Could not download {src.name} ({why}); put it at {target} by hand, on a machine "
            f"with internet access:\n{_manual_lines(src, cache)}")


def manual_download(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """How to get the released file ``name`` by hand, into the folder :func:`fetch` looks in
    first (so it then works offline): curl / wget lines, the Hub's copy where there is one."""
    return _manual_lines(source_of(name),
                         Path(cache_dir).expanduser() if cache_dir else default_cache_dir())


def _manual_lines(src: WeightsSource, cache: Path) -> str:
    target, q = cache / f"{src.name}.npz", shlex.quote
    lines = [f"  curl -L -o {q(str(target))} {q(src.url)}",
             f"  (or: wget -O {q(str(target))} {q(src.url)})"]
    if src.hub_repo:
        lines.append(f"  or from the Hugging Face Hub: {src.hub_command} --local-dir "
                     f"{q(str(cache / src.name))}  (huggingface-cli download ... before "
                     "huggingface_hub 1.0)")
    lines.append(f"Files in the cache folder {cache} ($BITKIT_WEIGHTS, default "
                 "~/.cache/bitkit/weights) are used without network; weights=PATH also takes "
                 "the file directly, wherever it is.")
    return "\n".join(lines)


# ------------------------------------------------------------------ the Hugging Face Hub


def _hub_offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: look at the variable now as well.
    now = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return now or bool(constants.HF_HUB_OFFLINE)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What hf_hub_download raises when the Hub cannot deliver (its HTTP client's errors too)."""
    from huggingface_hub.errors import EntryNotFoundError

    errors: list[type[BaseException]] = [OSError, EntryNotFoundError]
    for client in ("httpx2", "httpx"):  # huggingface_hub >= 2 / 1.x; requests' errors are OSErrors
        try:
            errors.append(importlib.import_module(client).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _fetch_hub(src: WeightsSource, hub_cache_dir: str | os.PathLike | None,
               progress: bool) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _hub_offline()
    # like offline mode, huggingface_hub reads HF_HUB_CACHE at import: pass today's value
    cache = hub_cache_dir or os.environ.get("HF_HUB_CACHE") or None
    kwargs: dict = {"cache_dir": cache, "local_files_only": offline}
    if not progress and "tqdm_class" in inspect.signature(hf_hub_download).parameters:
        kwargs["tqdm_class"] = _silent_tqdm()
    try:
        path = Path(hf_hub_download(src.hub_repo, HUB_FILENAME, **kwargs))
    except _hub_errors() as e:
        where = cache or constants.HF_HUB_CACHE
        if offline:
            why = f"offline (HF_HUB_OFFLINE=1) and not in its cache {where}"
        elif isinstance(e, LocalEntryNotFoundError):  # no connection (after its own retries)
            why = (f"not reachable and not in its cache {where} (HF_HUB_OFFLINE=1 skips the "
                   "Hub at once)")
        else:
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [repr(e)])[0]}"
        raise _SourceFailed(f"Hugging Face Hub {src.hub_repo}: {why}") from e
    _bit_architecture(_open(path))  # timm's file must be the BiT ResNet it claims to be
    log.info("%s: %s from the Hugging Face Hub (%s)", src.name, path, src.hub_repo)
    return path


def _silent_tqdm():
    from huggingface_hub.utils import tqdm as hub_tqdm  # takes the name= that vanilla tqdm refuses

    class SilentTqdm(hub_tqdm):  # huggingface_hub's own bar, when progress is off
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


# ------------------------------------------------------------------ Google's bucket


def _fetch_bucket(src: WeightsSource, target: Path, *, progress: bool, retries: int) -> Path:
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            expected, got = _download(src.url, part, label=src.name, progress=progress)
            break
        except _Interrupted as e:
            if attempt == retries:
                raise _SourceFailed(
                    f"{src.url}: {e}; {part} keeps what arrived and the next fetch resumes "
                    "from there") from e
            log.warning("%s: %s; resuming (%d of %d)", src.url, e, attempt + 1, retries)
        except urllib.error.HTTPError as e:
            if e.code in (403, 404):  # GCS answers 403 or 404 for a name it does not hold
                raise _SourceFailed(
                    f"{src.url}: HTTP Error {e.code} {e.reason}: no such file"
                    f"{did_you_mean(src.name, released_sources())}; `bitkit weights fetch "
                    "--list` shows the released names", missing=True) from e
            raise _SourceFailed(f"{src.url}: HTTP Error {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise _SourceFailed(f"{src.url}: {getattr(e, 'reason', None) or e}") from e
    _verify_download(src, part, expected, got)
    os.replace(part, target)  # atomic: the cache never holds a half-written or unchecked file
    log.info("downloaded %s to %s", src.url, target)
    return target


def _download(url: str, part: Path, *, label: str, progress: bool) -> tuple[str | None, str]:
    """Download ``url`` into ``part``, resuming from its size: (the server's md5, ours), base64."""
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        e.close()  # 416: the part is not a prefix of this file (e.g. it changed): start again
        log.warning("%s: cannot resume from byte %d; downloading from the start", url, start)
        part.unlink()
        return _download(url, part, label=label, progress=progress)
    with response:
        status = getattr(response, "status", None)
        total = _content_length(response.headers.get("Content-Length"))
        if start and status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != start:  # not the bytes asked for: start again, without Range
                log.warning("%s: asked for byte %d on, got %s: downloading from the start",
                            url, start, response.headers.get("Content-Range"))
                response.close()
                part.unlink()
                return _download(url, part, label=label, progress=progress)
        elif start:  # 200: the server ignored Range and sends the whole file
            log.warning("%s ignores Range requests: downloading from the start", url)
            start = 0
        expected = _goog_md5(response)
        md5 = hashlib.md5()
        if start:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    md5.update(block)
        done = start
        with open(part, "ab" if start else "wb") as f, _progress_bar(label, total, start, progress) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Interrupted(f"the download broke off after {done} of "
                                       f"{total or '?'} bytes ({type(e).__name__}: {e})") from e
                if not chunk:
                    break
                f.write(chunk)
                md5.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        if total is not None and done < total:
            raise _Interrupted(f"the connection closed after {done} of {total} bytes")
    return expected, base64.b64encode(md5.digest()).decode()


def _progress_bar(label: str, total: int | None, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=label, unit="B", unit_scale=True,
                unit_divisor=1024, disable=not enabled, leave=False)


def _content_length(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/200`` -> (100, 200); the total is None when the server says ``*``."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) != "*" else None)


def _goog_md5(response) -> str | None:
    """The base64 md5 of the whole object from Google Cloud Storage's ``x-goog-hash`` header(s)
    (``crc32c=...,md5=...``, one header or several; composite objects have no md5)."""
    for value in response.headers.get_all("x-goog-hash") or []:
        for item in value.split(","):
            key, _, digest = item.strip().partition("=")
            if key.strip().lower() == "md5" and digest:
                return digest.strip()
    return None


def _verify_download(src: WeightsSource, part: Path, expected: str | None, got: str) -> None:
    if expected is not None and expected != got:
        part.unlink(missing_ok=True)
        raise DownloadCorrupted(
            f"{src.url}: the download does not match the server's checksum (md5 {got}, the "
            f"x-goog-hash header says {expected}); deleted {part.name}, fetch it again")
    try:
        _bit_architecture(_npz_source(str(part)))
    except ValueError as e:  # DamagedFile included
        part.unlink(missing_ok=True)
        raise DownloadCorrupted(f"{src.url}: the download is not a readable BiT checkpoint "
                                f"({e}); deleted {part.name}") from e


# ---------------------------------------------------------------------------------------------
# Command line: bitkit weights info|convert|fetch
# ---------------------------------------------------------------------------------------------


def _model_for(path: str) -> ResNetV2:
    arch = describe(path)
    if arch.name not in CONFIGS:
        raise ValueError(f"{path}: {arch.name} is not a known bitkit size")
    return ResNetV2(arch.name, num_classes=arch.num_classes or 1000)


def info_command(args) -> int:
    """``bitkit weights info PATH``; a file that is not a BiT ResNet-v2 is an error (exit 2)."""
    arch = describe(args.path)
    print(f"{args.path}: {arch.name}, units per stage {arch.units}, width {arch.width}, "
          f"{arch.num_classes if arch.num_classes is not None else 'no'} output classes")
    return 0


def convert_command(args) -> int:
    """``bitkit weights convert SRC DST [--timm-names]``."""
    model = _model_for(args.src)
    # A conversion copies everything, the head included; a headless file stays a feature
    # extractor (its model gets the usual zero head, as before).
    load(model, args.src, keep_head=describe(args.src).num_classes is not None)
    suffix = Path(args.dst).suffix.lower()
    if suffix == ".npz":
        save_npz(model, args.dst)
    elif suffix == ".safetensors":
        save_safetensors(model, args.dst, timm_names=args.timm_names)
    elif suffix in (".pt", ".pth"):
        sd = to_timm_state_dict(model) if args.timm_names else model.state_dict()
        atomic_write(args.dst, lambda f: torch.save(sd, f))
    else:
        raise ValueError(f"{args.dst}: choose a .npz, .safetensors or .pt output")
    print(f"wrote {args.dst} ({model.name}, {model.num_classes} classes)")
    return 0


def fetch_command(args) -> int:
    """``bitkit weights fetch NAME [--cache-dir DIR] [--source auto|hub|bucket] [--base-url URL]``,
    or ``--list``: the names and where each comes from."""
    if args.list:
        print(sources_table())
        return 0
    if not args.name:
        raise ValueError("give a released name, e.g. `bitkit weights fetch BiT-M-R50x1` "
                         "(`bitkit weights fetch --list` shows them)")
    print(fetch(args.name, args.cache_dir, args.base_url or RELEASE_URL, source=args.source))
    return 0


def sources_table(base_url: str = RELEASE_URL) -> str:
    """The released names, what each holds and where :func:`fetch` gets it, as text."""
    rows = [("NAME", "HOLDS", "SOURCES (auto tries them in this order)")]
    for s in released_sources(base_url).values():
        rows.append((s.name, s.about, (f"hub {s.hub_repo}, " if s.hub_repo else "") + "bucket"))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    lines += ["", f"Bucket: {base_url.rstrip('/')}/<NAME>.npz. Also from the bucket: the VTAB-1k "
              "runs, BiT-M-{R50x1,R101x1,R50x3,R101x3,R152x4}-run{0,1,2}-<task> (e.g. "
              "BiT-M-R50x1-run0-caltech101), and distill/R50x1_224 etc."]
    return "\n".join(lines)
