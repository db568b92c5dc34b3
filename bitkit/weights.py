"""Released BiT weights and interop: the ``.npz`` layout, safetensors, timm state dicts.

The released checkpoints (``BiT-M-R50x1.npz`` and friends) are TensorFlow variables saved with
NumPy: names like ``resnet/block1/unit01/a/standardized_conv2d/kernel`` and HWIO conv kernels.
Every format is first turned into *our* parameter names, lazily, then one function
(:func:`_assign`) checks the architecture, every key and every shape and copies the tensors. So a
mismatch gets the same clear message whichever format it came from.

Loading is BiT transfer by default: the body comes from the file and the head (weight and bias)
starts at zero whatever the class counts, as the paper (3.3, 4.1) and Google's code do;
``keep_head=True`` restores the file's head exactly, for evaluating or converting a file.

Released files are not downloaded by default: fetch them yourself from
``https://storage.googleapis.com/bit_models/<name>.npz`` and pass the path, or call :func:`fetch`.

This module builds on the architecture (:mod:`bitkit.resnetv2`) and never imports
:mod:`bitkit.models`, whose ``create(name, weights=path)`` calls :func:`load`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
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


def describe(path: str | os.PathLike) -> Architecture:
    """Which model a weights file holds (units per stage, width, classes), without a model."""
    return _architecture(_open(path))


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
# Released files
# ---------------------------------------------------------------------------------------------


def released_names() -> list[str]:
    """Upstream checkpoints as released: BiT-S (ILSVRC-2012) and BiT-M (ImageNet-21k)."""
    return [f"BiT-{u}-{s}" for u in ("S", "M") for s in RELEASED_SIZES]


def default_cache_dir() -> Path:
    return Path(os.environ.get("BITKIT_WEIGHTS", Path.home() / ".cache" / "bitkit" / "weights"))


def fetch(name: str, cache_dir: str | os.PathLike | None = None,
          base_url: str = RELEASE_URL) -> Path:
    """Path of a released checkpoint, downloading ``<base_url>/<name>.npz`` once if needed.

    Any released file name works (``BiT-M-R50x1``, ``BiT-M-R50x1-ILSVRC2012``, VTAB runs).
    Without network access download it by hand and pass the path, or put it in ``cache_dir``
    (default ``$BITKIT_WEIGHTS`` or ``~/.cache/bitkit/weights``).
    """
    name = name.removesuffix(".npz")
    target = Path(cache_dir or default_cache_dir()) / f"{name}.npz"
    if target.is_file():
        return target
    url = f"{base_url.rstrip('/')}/{name}.npz"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:

            atomic_write(target, lambda f: shutil.copyfileobj(response, f, length=1 << 20))
    except (urllib.error.URLError, OSError) as e:
        raise FileNotFoundError(
            f"Could not download {url} ({e}). Download it on a machine with internet access "
            f"and put it at {target}, or pass its path as weights=..."
        ) from e
    log.info("downloaded %s to %s", url, target)
    return target


# ---------------------------------------------------------------------------------------------
# Command line: bitkit weights info|convert
# ---------------------------------------------------------------------------------------------


def _model_for(path: str) -> ResNetV2:
    arch = describe(path)
    if arch.name not in CONFIGS:
        raise ValueError(f"{path}: {arch.name} is not a known bitkit size")
    return ResNetV2(arch.name, num_classes=arch.num_classes or 1000)


def info_command(args) -> int:
    """``bitkit weights info PATH``."""
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
