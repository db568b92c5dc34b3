"""Data cards: one YAML file per dataset in ``data_cards/``, the single source of dataset facts.

A card says where the data comes from, which splits the paper used (official test when public,
else val: paper section 3.2), the facts BiT-HyperRule needs (image size, training-set size:
section 3.3), whether flips and crops keep the label (supplementary E), license and citation,
and the paper's own numbers (Tables 1-2, supplementary Table 1) so notebooks can put ours
beside them. Adding a dataset is adding one YAML file: here, or in a folder named by the
``BITKIT_CARD_PATH`` environment variable (``os.pathsep``-separated).

Validation is strict and says exactly what is wrong: ``data_cards/x.yaml: field 'flip':
expected true or false, got 'yes please'``. ``bitkit cards`` lists and validates all cards.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml


def _card_dir() -> Path:
    """``data_cards/`` of the source tree (editable installs), else the copy a wheel installs
    under ``<prefix>/share/bitkit/data_cards`` (pyproject's data-files)."""
    source_tree = Path(__file__).resolve().parents[2] / "data_cards"
    if source_tree.is_dir():
        return source_tree
    return Path(sysconfig.get_path("data")) / "share" / "bitkit" / "data_cards"


CARD_DIR = _card_dir()

GROUPS = (
    "upstream", "standard", "benchmark", "vtab-natural", "vtab-specialized", "vtab-structured",
    "embedded-upstream", "embedded-natural", "embedded-specialized", "embedded-structured",
    "embedded-objects", "real-small",
)
SOURCE_KINDS = ("hub", "local", "embedded", "sklearn", "unavailable", "collection")
SPLIT_ROLES = ("train", "val", "test")
UPSTREAMS = ("jft", "imagenet21k", "ilsvrc2012")


class CardError(ValueError):
    """A card file is malformed; the message names the file, the field and what is expected."""


class UnknownDataset(CardError, KeyError):
    """No card has this name; the message lists the closest names.

    A ``ValueError`` (what ``bitkit`` commands and run files report as a user mistake) that is
    also a ``KeyError`` for code written when it was one. Its text is the message itself, not
    ``KeyError``'s quoted repr.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Source:
    """Where the pixels come from.

    kind: ``hub`` (HF hub id + config), ``local`` (the user supplies a path; ``local_pattern``
    shows the expected layout), ``embedded`` (a generator in ``bitkit.data.world``), ``sklearn``
    (a dataset shipped inside scikit-learn), ``unavailable`` (not public: card only), or
    ``collection`` (a benchmark made of other cards, e.g. VTAB-1k).
    """

    kind: str
    hub_id: str | None = None
    config: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    local_pattern: str | None = None
    generator: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    members: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class DuplicateResult:
    """Supplementary Table 1: BiT-L accuracy on the full and de-duplicated test set (%), and the
    number of near-duplicates of the upstream training set found in the test set."""

    full: float | None = None
    dedup: float | None = None
    dups: int | None = None


@dataclass(frozen=True)
class PaperResults:
    """Top-1 accuracy (%) the paper reports for this dataset; ``None`` where it reports none.

    bit_l: Table 1 (BiT-L, median of 3 runs, ``bit_l_std`` the std); bit_s / bit_m: Table 2
    (R152x4 pre-trained on ILSVRC-2012 / ImageNet-21k); few_shot: BiT-L with k examples per
    class from the text; duplicates: supplementary Table 1, keyed by upstream dataset.
    """

    bit_l: float | None = None
    bit_l_std: float | None = None
    bit_s: float | None = None
    bit_m: float | None = None
    few_shot: dict[int, float] = field(default_factory=dict)
    duplicates: dict[str, DuplicateResult] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class DataCard:
    """The facts about one dataset, as read from ``data_cards/<name>.yaml``.

    ``splits`` maps a role (train/val/test) to the source's split name (ILSVRC-2012's test role
    is its ``validation`` split: the paper reports val where test labels are not public).
    ``train_size`` and ``image_size`` (H, W; typical when sizes vary) feed BiT-HyperRule;
    ``resolution`` ([resize, crop]) overrides it for teaching-scale data. ``flip``/``crop``
    say whether those augmentations keep the label (supplementary E). ``vtab_split`` is the
    VTAB-1k train/val sizes. ``num_classes``/``image_size`` may be empty only for cards that
    cannot be loaded (JFT-300M, the VTAB-1k collection).
    """

    name: str
    title: str
    description: str
    group: str
    source: Source
    splits: dict[str, str]
    train_size: int
    multi_label: bool
    flip: bool
    crop: bool
    license: str
    citation: str
    num_classes: int | None = None         # None only for cards that cannot be loaded
    image_size: tuple[int, int] | None = None
    eval_split: str = ""
    paper: PaperResults = field(default_factory=PaperResults)
    split_sizes: dict[str, int] = field(default_factory=dict)
    vtab_split: tuple[int, int] | None = None
    resolution: tuple[int, int] | None = None
    class_names: tuple[str, ...] | None = None
    notes: str = ""
    path: str = ""

    @property
    def available(self) -> bool:
        """False for datasets that cannot be loaded at all (JFT-300M, benchmark collections)."""
        return self.source.kind not in ("unavailable", "collection")


# --------------------------------------------------------------------------------- validation
Check = Callable[[Any], Any]


class _Bad(Exception):
    def __init__(self, expected: str, got: Any = None, where: str = ""):
        super().__init__(expected)
        self.expected, self.got, self.where = expected, got, where


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _Bad("a non-empty string", v)
    return v.strip()


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _text(v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _Bad("a string", v)
    return v.strip()


def _pos_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _Bad("a positive integer", v)
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad("true or false", v)
    return v


def _pct(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
        raise _Bad("a percentage between 0 and 100 (or leave it empty)", v)
    return float(v)


def _one_of(options: tuple[str, ...]) -> Check:
    def check(v: Any) -> str:
        if v not in options:
            raise _Bad(f"one of {', '.join(options)}", v)
        return v

    return check


def _pair(v: Any) -> tuple[int, int]:
    if not (isinstance(v, list) and len(v) == 2):
        raise _Bad("a list of two positive integers [height, width]", v)
    return (_pos_int(v[0]), _pos_int(v[1]))


def _opt_pair(v: Any) -> tuple[int, int] | None:
    return None if v is None else _pair(v)


def _mapping(v: Any, what: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _Bad(f"a mapping of {what}", v)
    return v


def _fields(raw: dict, spec: dict[str, tuple[Check, bool]], where: str) -> dict[str, Any]:
    """Check ``raw`` against ``spec`` (name -> (check, required)); unknown keys are errors."""
    out: dict[str, Any] = {}
    for key in raw:
        if key not in spec:
            close = difflib.get_close_matches(str(key), list(spec), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Bad(f"a known field{hint}; known: {', '.join(spec)}", None, f"{where}{key}")
    for key, (check, required) in spec.items():
        if key not in raw:
            if required:
                raise _Bad("a value (this field is required)", None, f"{where}{key}")
            continue
        try:
            out[key] = check(raw[key])
        except _Bad as e:
            raise _Bad(e.expected, e.got, e.where or f"{where}{key}") from None
    return out


def _source(v: Any) -> Source:
    raw = _mapping(v, "source fields")
    spec = {
        "kind": (_one_of(SOURCE_KINDS), True), "hub_id": (_opt_str, False),
        "config": (_opt_str, False), "image_column": (_opt_str, False),
        "label_column": (_opt_str, False), "local_pattern": (_opt_str, False),
        "generator": (_opt_str, False), "params": (lambda p: _mapping(p, "parameters"), False),
        "members": (lambda m: tuple(_str(x) for x in _list(m)), False), "note": (_text, False),
    }
    s = Source(**_fields(raw, spec, "source."))
    need = {"hub": "hub_id", "embedded": "generator", "sklearn": "generator"}.get(s.kind)
    if need and not getattr(s, need):
        raise _Bad(f"a value (required when source.kind is {s.kind!r})", None, f"source.{need}")
    if s.kind == "collection" and not s.members:
        raise _Bad("a list of member card names", None, "source.members")
    return s


def _list(v: Any) -> list:
    if not isinstance(v, list):
        raise _Bad("a list", v)
    return v


def _dup(v: Any) -> DuplicateResult:
    spec = {"full": (_pct, False), "dedup": (_pct, False),
            "dups": (lambda x: None if x is None else _count(x), False)}
    return DuplicateResult(**_fields(_mapping(v, "full/dedup/dups"), spec, "paper.duplicates."))


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Bad("a count (integer >= 0)", v)
    return v


def _paper(v: Any) -> PaperResults:
    def few(m: Any) -> dict[int, float]:
        out = {}
        for k, acc in _mapping(m, "k -> accuracy").items():
            out[_pos_int(k)] = _pct(acc)
        return out

    def dups(m: Any) -> dict[str, DuplicateResult]:
        return {_one_of(UPSTREAMS)(k): _dup(d) for k, d in _mapping(m, "upstream -> row").items()}

    spec = {"bit_l": (_pct, False), "bit_l_std": (_pct, False), "bit_s": (_pct, False),
            "bit_m": (_pct, False), "few_shot": (few, False), "duplicates": (dups, False),
            "note": (_text, False)}
    return PaperResults(**_fields(_mapping(v, "paper results"), spec, "paper."))


def _splits(v: Any) -> dict[str, str]:
    raw = _mapping(v, "role -> split name")
    if "train" not in raw:
        raise _Bad("a mapping with at least a 'train' role", v)
    out = {}
    for role, name in raw.items():
        out[_one_of(SPLIT_ROLES)(role)] = _str(name)
    return out


def _class_names(v: Any) -> tuple[str, ...] | None:
    return None if v is None else tuple(_str(x) for x in _list(v))


_CARD_SPEC: dict[str, tuple[Check, bool]] = {
    "name": (_str, True), "title": (_str, True), "description": (_str, True),
    "group": (_one_of(GROUPS), True), "source": (_source, True), "splits": (_splits, True),
    "eval_split": (_one_of(SPLIT_ROLES), False), "num_classes": (_pos_int, False),
    "train_size": (_pos_int, True), "image_size": (_pair, False), "multi_label": (_bool, True),
    "flip": (_bool, True), "crop": (_bool, True), "license": (_str, True),
    "citation": (_str, True), "paper": (_paper, False),
    "split_sizes": (lambda m: {_one_of(SPLIT_ROLES)(k): _pos_int(n)
                               for k, n in _mapping(m, "role -> size").items()}, False),
    "vtab_split": (_opt_pair, False), "resolution": (_opt_pair, False),
    "class_names": (_class_names, False), "notes": (_text, False),
}


def parse_card(raw: Any, path: str = "<card>") -> DataCard:
    """Validate a card's raw YAML mapping; raises :class:`CardError` naming file and field."""
    try:
        if not isinstance(raw, dict):
            raise _Bad("a YAML mapping of card fields at the top level", raw, "(top level)")
        card = DataCard(**_fields(raw, _CARD_SPEC, ""), path=path)
        _cross_check(card)
    except _Bad as e:
        got = "" if e.got is None else f", got {e.got!r}"
        raise CardError(f"{path}: field {e.where!r}: expected {e.expected}{got}") from None
    return card


def _cross_check(card: DataCard) -> None:
    stem = Path(card.path).stem
    if card.path != "<card>" and stem != card.name:
        raise _Bad(f"the file's name without .yaml ({stem!r})", card.name, "name")
    loadable = card.source.kind not in ("unavailable", "collection")
    for name in ("num_classes", "image_size") if loadable else ():
        if not getattr(card, name):
            raise _Bad("a value (required unless source.kind is unavailable or collection)",
                       None, name)
    if card.source.kind in ("embedded", "sklearn"):  # generated/split here: sizes say how many
        missing = [role for role in card.splits if role not in card.split_sizes]
        if missing:
            raise _Bad(f"a size for every role in splits (missing: {', '.join(missing)}): "
                       f"{card.source.kind} data is made or split here, so its card says how "
                       f"many examples each split has", None, "split_sizes")
    if card.eval_split and card.eval_split not in card.splits:
        raise _Bad(f"a role listed in splits ({', '.join(card.splits)})", card.eval_split,
                   "eval_split")
    if card.class_names is not None and len(card.class_names) != card.num_classes:
        raise _Bad(f"{card.num_classes} names (num_classes)", len(card.class_names),
                   "class_names")
    if card.vtab_split is not None and sum(card.vtab_split) != card.train_size:
        raise _Bad(f"two sizes adding up to train_size ({card.train_size})",
                   list(card.vtab_split), "vtab_split")
    if card.resolution is not None and card.resolution[1] > card.resolution[0]:
        raise _Bad("[resize, crop] with crop <= resize", list(card.resolution), "resolution")


def read_card(path: str | os.PathLike) -> DataCard:
    """Read and validate one YAML card file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No card file at {p}. Cards live in {CARD_DIR}.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise CardError(f"{p}: not valid YAML: {e}") from None
    return parse_card(raw, str(p))


def card_dirs() -> list[Path]:
    """The built-in card folder, then any folders in ``BITKIT_CARD_PATH``."""
    extra = [Path(d) for d in os.environ.get("BITKIT_CARD_PATH", "").split(os.pathsep) if d]
    return [CARD_DIR, *extra]


def card_files() -> dict[str, Path]:
    """Card name -> file, later folders overriding earlier ones (a user's card wins)."""
    files: dict[str, Path] = {}
    for d in card_dirs():
        for f in sorted(d.glob("*.yaml")) if d.is_dir() else ():
            files[f.stem] = f
    return files


@cache
def _cached(path: str, mtime: float) -> DataCard:
    return read_card(path)


def get_card(name: str) -> DataCard:
    """The card called ``name`` (file ``<name>.yaml``); unknown names suggest the closest."""
    files = card_files()
    key = name.strip().lower()
    if key not in files:
        close = difflib.get_close_matches(key, list(files), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownDataset(
            f"Unknown dataset {name!r}.{hint} Run `bitkit cards` to list the {len(files)} known "
            f"datasets, or add data_cards/{key}.yaml."
        )
    f = files[key]
    return _cached(str(f), f.stat().st_mtime)


def list_cards(group: str | None = None) -> list[str]:
    """Names of all cards (optionally of one group), sorted. Does not validate them."""
    names = sorted(card_files())
    return names if group is None else [n for n in names if get_card(n).group == group]


def validate_all() -> tuple[list[DataCard], list[str]]:
    """Read every card; returns (valid cards, error messages). Also checks that collection
    members exist."""
    cards, errors = [], []
    files = card_files()
    for _name, f in files.items():
        try:
            cards.append(read_card(f))
        except (CardError, FileNotFoundError) as e:
            errors.append(str(e))
    for c in cards:
        missing = [m for m in c.source.members if m not in files]
        if missing:
            errors.append(f"{c.path}: field 'source.members': unknown cards {missing}")
    return cards, errors


# ---------------------------------------------------------------------------------------- CLI
def _run_cli(args: argparse.Namespace) -> int:
    cards, errors = validate_all()
    if args.name:
        card = get_card(args.name)
        for k in ("title", "group", "description", "num_classes", "train_size", "image_size",
                  "multi_label", "flip", "crop", "splits", "license", "citation", "paper"):
            print(f"{k:>12}: {getattr(card, k)}")
        print(f"{'source':>12}: {card.source}")
        return 0
    shown = [c for c in cards if args.group is None or c.group == args.group]
    print(f"{'name':<26} {'group':<21} {'classes':>7} {'train':>11} {'HxW':>9} flip crop")
    for c in sorted(shown, key=lambda c: (c.group, c.name)):
        hw = f"{c.image_size[0]}x{c.image_size[1]}" if c.image_size else "-"
        print(f"{c.name:<26} {c.group:<21} {c.num_classes or '-':>7} {c.train_size:>11,} {hw:>9} "
              f"{'yes' if c.flip else 'no':>4} {'yes' if c.crop else 'no':>4}")
    print(f"{len(cards)} valid card(s), {len(errors)} invalid.")
    for e in errors:
        print(f"invalid: {e}")
    return 1 if errors else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bitkit cards [NAME] [--group G]``: list and validate the data cards."""
    p = subparsers.add_parser("cards", help="list and validate the data cards",
                              description="List and validate data_cards/*.yaml.")
    p.add_argument("name", nargs="?", help="show one card in full")
    p.add_argument("--group", choices=GROUPS, help="only list this group")
    p.set_defaults(func=_run_cli)
