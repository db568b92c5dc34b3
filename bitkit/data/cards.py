"""Data cards: one YAML file per dataset in ``data_cards/``, the single source of dataset facts.

A card says where the data comes from, which splits the paper used (official test when public,
else val: paper section 3.2), the facts BiT-HyperRule needs (image size, training-set size:
section 3.3), whether flips and crops keep the label (supplementary E), for the VTAB-1k tasks
which examples VTAB trains, validates and tests on (``vtab_splits``), license and citation,
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
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bitkit import inputs


def _card_dir() -> Path:
    """The built-in cards: the package ``bitkit.data_cards`` (pyproject maps the repository's
    top-level ``data_cards/`` folder into bitkit), read with importlib.resources so editable
    installs and wheels find them alike; a source tree that was never installed falls back to
    the folder itself."""
    from importlib import resources

    try:
        folder = resources.files("bitkit.data_cards")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "data_cards"
    return Path(str(folder))  # a plain folder in both layouts (setuptools installs files)


CARD_DIR = _card_dir()

GROUPS = (
    "upstream", "standard", "benchmark", "vtab-natural", "vtab-specialized", "vtab-structured",
    "embedded-upstream", "embedded-natural", "embedded-specialized", "embedded-structured",
    "embedded-objects", "embedded-label-noise", "real-small", "samples",
)
SOURCE_KINDS = ("hub", "local", "embedded", "sklearn", "unavailable", "collection", "bundled")
SPLIT_ROLES = ("train", "val", "test")
#: VTAB-1k's four sets (task_adaptation's split names): fit, select, retrain, test.
VTAB_PARTS = ("train800", "val200", "train800val200", "test")
NORMALISATIONS = ("BN", "BN+WS", "GN", "GN+WS")  # paper Tables 4-5
UPSTREAMS = ("jft", "imagenet21k", "ilsvrc2012")


class CardError(inputs.InputError):
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
    (a dataset shipped inside scikit-learn), ``unavailable`` (not public: card only),
    ``collection`` (a benchmark made of other cards, e.g. VTAB-1k), or ``bundled`` (files shipped
    inside bitkit, in the folder ``bitkit/data/<folder>``, each credited on the card's
    ``images``; read with ``bitkit.data.bundled``).
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
    folder: str | None = None
    note: str = ""


@dataclass(frozen=True)
class SplitSlice:
    """One term of a TFDS split expression: ``train``, ``train[:800]``, ``train[45000:45200]``,
    ``test[50%:]``. ``start``/``stop`` are ``None`` where open; negative counts from the end;
    ``percent`` makes both bounds percentages (TFDS's "closest" rounding)."""

    split: str
    start: int | None = None
    stop: int | None = None
    percent: bool = False

    def __str__(self) -> str:
        if self.start is None and self.stop is None:
            return self.split
        unit = "%" if self.percent else ""
        a = "" if self.start is None else f"{self.start}{unit}"
        b = "" if self.stop is None else f"{self.stop}{unit}"
        return f"{self.split}[{a}:{b}]"

    @property
    def size(self) -> int | None:
        """How many examples, where the text alone says (absolute, non-negative bounds)."""
        if self.percent or self.stop is None or self.stop < 0 or (self.start or 0) < 0:
            return None
        return max(0, self.stop - (self.start or 0))

    def resolve(self, n: int) -> range:
        """The example positions this slice takes from a split of ``n`` examples, as TFDS
        reads it: a percent bound ``p`` is ``round(p * n / 100)``, a negative bound counts from
        the end, a bound beyond ``n`` is an error (never silently clipped)."""
        def absolute(v: int | None) -> int | None:
            return v if v is None or not self.percent else int(round(v * n / 100))

        a, b = absolute(self.start), absolute(self.stop)
        need = max(abs(v) for v in (a, b, 0) if v is not None)
        if need > n:
            raise ValueError(f"slice {self} needs at least {need} examples in split "
                             f"{self.split!r}, which has {n}")
        a = 0 if a is None else a + n if a < 0 else a
        b = n if b is None else b + n if b < 0 else b
        return range(a, b)


_SLICE_RE = re.compile(r"^(?P<split>[\w-]+)(\[(?P<a>-?\d+%?)?:(?P<b>-?\d+%?)?\])?$")


def parse_split_expr(text: Any) -> tuple[SplitSlice, ...]:
    """A TFDS split expression (``train[:800]+validation[:200]``) as its slices; raises
    :class:`bitkit.inputs.Invalid` saying what is wrong with it."""
    want = ("a TFDS split expression: name, name[a:b], name[:b], name[a:], percents such as "
            "name[50%:], joined by '+' (e.g. 'train[:800]+validation[:200]')")
    if not isinstance(text, str) or not text.strip():
        raise inputs.Invalid(want, text)
    out = []
    for term in re.split(r"\s*\+\s*", text.strip()):
        if not term:
            raise inputs.Invalid(want, text, problem=f"an empty term next to '+': expected "
                                 f"{want}, got {text!r}")
        m = _SLICE_RE.match(term)
        if not m:
            raise inputs.Invalid(want, text, problem=f"{term!r} is not a split slice: expected "
                                 f"{want}, got {text!r}")
        a, b = m.group("a"), m.group("b")
        pct = {x.endswith("%") for x in (a, b) if x}
        if len(pct) > 1:
            raise inputs.Invalid(want, text, problem=f"{term!r} mixes a count and a percent: "
                                 "use one unit per slice (TFDS would read both bounds as "
                                 f"percents), got {text!r}")
        percent = pct == {True}
        start, stop = (None if x is None else int(x.rstrip("%")) for x in (a, b))
        if percent and any(v is not None and abs(v) > 100 for v in (start, stop)):
            raise inputs.Invalid(want, text, problem=f"{term!r}: a percent bound must be within "
                                 f"-100%..100%, got {text!r}")
        s = SplitSlice(m.group("split"), start, stop, percent)
        if (not percent and start is not None and stop is not None and (start >= 0) == (stop >= 0)
                and stop <= start):
            raise inputs.Invalid(want, text, problem=f"{term!r} is empty (it ends where or before "
                                 f"it starts), got {text!r}")
        out.append(s)
    return tuple(out)


@dataclass(frozen=True)
class VtabSplits:
    """VTAB-1k's four sets as slices of the source's splits (task_adaptation's ``tfds_splits``):
    ``train800`` to fit, ``val200`` to select, ``train800val200`` to retrain, ``test``.
    ``sizes``: the source splits' sizes the slices were computed for (positions past them, or
    other sizes, are not VTAB's examples); ``note``: how the slices were derived."""

    train800: tuple[SplitSlice, ...]
    val200: tuple[SplitSlice, ...]
    train800val200: tuple[SplitSlice, ...]
    test: tuple[SplitSlice, ...]
    sizes: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def text(self, part: str) -> str:
        """The expression of ``part`` as TFDS writes it (``train[:800]+train[45000:45200]``)."""
        return "+".join(str(s) for s in self.slices(part))

    def slices(self, part: str) -> tuple[SplitSlice, ...]:
        if part not in VTAB_PARTS:
            raise ValueError(f"no VTAB-1k part {part!r}{inputs.did_you_mean(part, VTAB_PARTS)}; "
                             f"parts: {', '.join(VTAB_PARTS)}")
        return getattr(self, part)

    def table(self) -> dict[str, str]:
        """``{part: expression}`` for the four parts."""
        return {p: self.text(p) for p in VTAB_PARTS}

    @property
    def source_splits(self) -> tuple[str, ...]:
        """The source splits the four parts read, in first use order."""
        return tuple(dict.fromkeys(s.split for p in VTAB_PARTS for s in self.slices(p)))


#: Where the folders of ``bundled`` cards live: ``source.folder`` is relative to this package
#: folder (``bitkit/data``), installed with bitkit as package data (pyproject.toml).
BUNDLED_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ImageCredit:
    """Who made one bundled file and under which licence (a ``bundled`` card's ``images``).

    ``license`` states the licence exactly as its source does; ``source`` is where bitkit's copy
    was taken from, ``url`` the original's address, ``note`` what bitkit changed (resized,
    re-encoded).
    """

    file: str
    title: str
    author: str
    license: str
    source: str
    url: str = ""
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
    class from the text; duplicates: supplementary Table 1, keyed by upstream dataset;
    normalisation: Tables 4-5, a ResNet-50 with each of BN, BN+WS, GN, GN+WS trained from
    scratch on ILSVRC-2012 at batch 4096 (Table 4, on the ilsvrc2012 card) and transferred to
    VTAB-1k (Table 5, on the vtab-1k card).
    """

    bit_l: float | None = None
    bit_l_std: float | None = None
    bit_s: float | None = None
    bit_m: float | None = None
    few_shot: dict[int, float] = field(default_factory=dict)
    duplicates: dict[str, DuplicateResult] = field(default_factory=dict)
    normalisation: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class DataCard:
    """The facts about one dataset, as read from ``data_cards/<name>.yaml``.

    ``splits`` maps a role (train/val/test) to the source's split name (ILSVRC-2012's test role
    is its ``validation`` split: the paper reports val where test labels are not public).
    ``train_size`` and ``image_size`` (H, W; typical when sizes vary) feed BiT-HyperRule;
    ``resolution`` ([resize, crop]) overrides it for teaching-scale data. ``flip``/``crop``
    say whether those augmentations keep the label (supplementary E). ``vtab_split`` is the
    VTAB-1k train/val sizes; ``vtab_splits`` which examples those are, as VTAB defines them
    (slices of the source's splits, :class:`VtabSplits`; ``bitkit.data.vtab1k`` loads them).
    A VTAB card has a ``test`` role only where VTAB's test set is a whole source split;
    otherwise ``load(card, "test")`` is ``vtab_splits.test``. ``num_classes``/``image_size``
    may be empty only for cards that cannot be loaded (JFT-300M, the VTAB-1k collection).
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
    vtab_splits: VtabSplits | None = None
    resolution: tuple[int, int] | None = None
    class_names: tuple[str, ...] | None = None
    notes: str = ""
    images: tuple[ImageCredit, ...] = ()  # bundled cards: every file, credited
    path: str = ""

    def role_of(self, source_split: str) -> str | None:
        """The role (train/val/test) whose source split is ``source_split``, if any."""
        return next((r for r, s in self.splits.items() if s == source_split), None)

    @property
    def available(self) -> bool:
        """False for datasets that cannot be loaded at all (JFT-300M, benchmark collections)."""
        return self.source.kind not in ("unavailable", "collection")


# --------------------------------------------------------------------------------- validation
# The rules are bitkit.inputs', the checker every user input goes through; these are the ones a
# card needs beyond plain types.
Check = inputs.Rule
_str = inputs.text()
_opt_str = inputs.optional(_str)
_text = inputs.text(empty=True)
_pos_int = inputs.integer(1)
_count = inputs.integer(0)
_bool = inputs.boolean()
_pct = inputs.optional(inputs.number(0, 100))
_pair = inputs.list_of(_pos_int, length=2, what="a list of two positive integers [height, width]")
_opt_pair = inputs.optional(_pair)


def _listed(rule: Check) -> Check:
    return lambda v: tuple(inputs.list_of(rule, min_len=0)(v))


def _source(v: Any) -> Source:
    spec = {
        "kind": inputs.one_of(*SOURCE_KINDS), "hub_id": _opt_str, "config": _opt_str,
        "image_column": _opt_str, "label_column": _opt_str, "local_pattern": _opt_str,
        "generator": _opt_str, "params": inputs.mapping_of(inputs.anything, inputs.anything,
                                                           "a mapping of parameters"),
        "members": _listed(_str), "folder": _opt_str, "note": _text,
    }
    s = Source(**inputs.fields(spec, required=("kind",), what="a mapping of source fields")(v))
    need = {"hub": "hub_id", "embedded": "generator", "sklearn": "generator",
            "bundled": "folder"}.get(s.kind)
    if need and not getattr(s, need):
        raise inputs.Invalid(f"a value (required when source.kind is {s.kind!r})", path=(need,))
    if s.kind == "collection" and not s.members:
        raise inputs.Invalid("a list of member card names", path=("members",))
    return s


def _image(v: Any) -> ImageCredit:
    spec = {"file": _str, "title": _str, "author": _str, "license": _str, "source": _str,
            "url": _text, "note": _text}
    return ImageCredit(**inputs.fields(spec, required=("file", "title", "author", "license",
                                                       "source"),
                                       what="a mapping of file/title/author/license/source")(v))


def _dup(v: Any) -> DuplicateResult:
    spec = {"full": _pct, "dedup": _pct, "dups": inputs.optional(_count)}
    return DuplicateResult(**inputs.fields(spec, what="a mapping of full/dedup/dups")(v))


def _paper(v: Any) -> PaperResults:
    spec = {"bit_l": _pct, "bit_l_std": _pct, "bit_s": _pct, "bit_m": _pct,
            "few_shot": inputs.mapping_of(_pos_int, _pct, "a mapping of k -> accuracy"),
            "duplicates": inputs.mapping_of(inputs.one_of(*UPSTREAMS), _dup,
                                            "a mapping of upstream -> row"),
            "normalisation": inputs.mapping_of(inputs.one_of(*NORMALISATIONS), _pct,
                                               "a mapping of BN / BN+WS / GN / GN+WS -> accuracy"),
            "note": _text}
    return PaperResults(**inputs.fields(spec, what="a mapping of paper results")(v))


def _splits(v: Any) -> dict[str, str]:
    out = inputs.mapping_of(inputs.one_of(*SPLIT_ROLES), _str, "a mapping of role -> split name")(v)
    if "train" not in out:
        raise inputs.Invalid("a mapping with at least a 'train' role", v)
    return out


def _slices(v: Any) -> tuple[SplitSlice, ...]:
    return parse_split_expr(v)


def _vtab_splits(v: Any) -> VtabSplits:
    spec = {**{p: _slices for p in VTAB_PARTS},
            "sizes": inputs.mapping_of(_str, _pos_int, "a mapping of source split -> size"),
            "note": _text}
    return VtabSplits(**inputs.fields(spec, required=VTAB_PARTS,
                                      what="a mapping of train800/val200/train800val200/test "
                                           "to TFDS split expressions")(v))


_CARD_SPEC: dict[str, Check] = {
    "name": _str, "title": _str, "description": _str, "group": inputs.one_of(*GROUPS),
    "source": _source, "splits": _splits, "eval_split": inputs.one_of(*SPLIT_ROLES),
    "num_classes": _pos_int, "train_size": _pos_int, "image_size": lambda v: tuple(_pair(v)),
    "multi_label": _bool, "flip": _bool, "crop": _bool, "license": _str, "citation": _str,
    "paper": _paper,
    "split_sizes": inputs.mapping_of(inputs.one_of(*SPLIT_ROLES), _pos_int,
                                     "a mapping of role -> size"),
    "vtab_split": lambda v: None if v is None else tuple(_pair(v)),
    "vtab_splits": lambda v: None if v is None else _vtab_splits(v),
    "resolution": lambda v: None if v is None else tuple(_pair(v)),
    "class_names": lambda v: None if v is None else _listed(_str)(v), "notes": _text,
    "images": lambda v: tuple(inputs.list_of(_image)(v)),
}
_REQUIRED = ("name", "title", "description", "group", "source", "splits", "train_size",
             "multi_label", "flip", "crop", "license", "citation")
_CARD = inputs.fields(_CARD_SPEC, required=_REQUIRED,
                      what="a YAML mapping of card fields at the top level")
# A bundled card describes files to look at and predict, not a dataset to train on: no splits,
# no training size, no augmentation facts, unless it states them.
_BUNDLED_CARD = inputs.fields(
    _CARD_SPEC, required=("name", "title", "description", "group", "source", "license",
                          "citation", "images"),
    defaults={"splits": {}, "train_size": 0, "multi_label": False, "flip": False, "crop": False},
    what="a YAML mapping of card fields at the top level")


def _card_rule(raw: Any) -> inputs.Rule:
    source = raw.get("source") if isinstance(raw, dict) else None
    return _BUNDLED_CARD if isinstance(source, dict) and source.get("kind") == "bundled" else _CARD


def parse_card(raw: Any, path: str = "<card>") -> DataCard:
    """Validate a card's raw YAML mapping (or a :class:`bitkit.inputs.Document` of it, whose
    line numbers then show in messages); raises :class:`CardError` naming file and field."""
    doc = raw if isinstance(raw, inputs.Document) else inputs.Document(raw)
    doc.file = path
    try:
        card = DataCard(**_card_rule(doc.data)(doc.data), path=path)
        _cross_check(card)
    except inputs.Invalid as e:
        raise inputs.error(e, doc, error_type=CardError) from None
    return card


def _cross_check(card: DataCard) -> None:
    bad = inputs.Invalid
    stem = Path(card.path).stem
    if card.path != "<card>" and stem != card.name:
        raise bad(f"the file's name without .yaml ({stem!r})", card.name, ("name",))
    loadable = card.source.kind not in ("unavailable", "collection", "bundled")
    for name in ("num_classes", "image_size") if loadable else ():
        if not getattr(card, name):
            raise bad("a value (required unless source.kind is unavailable, collection or "
                      "bundled)", path=(name,))
    _check_images(card)
    if card.source.kind in ("embedded", "sklearn"):  # generated/split here: sizes say how many
        missing = [role for role in card.splits if role not in card.split_sizes]
        if missing:
            raise bad(f"a size for every role in splits (missing: {', '.join(missing)}): "
                      f"{card.source.kind} data is made or split here, so its card says how "
                      f"many examples each split has", path=("split_sizes",))
    vtab_test = card.vtab_splits is not None and card.eval_split == "test"
    if card.eval_split and card.eval_split not in card.splits and not vtab_test:
        raise bad(f"a role listed in splits ({', '.join(card.splits)})", card.eval_split,
                  ("eval_split",))
    if card.class_names is not None and len(card.class_names) != card.num_classes:
        raise bad(f"{card.num_classes} names (num_classes)", len(card.class_names),
                  ("class_names",))
    if card.vtab_split is not None and sum(card.vtab_split) != card.train_size:
        raise bad(f"two sizes adding up to train_size ({card.train_size})",
                  list(card.vtab_split), ("vtab_split",))
    if card.resolution is not None and card.resolution[1] > card.resolution[0]:
        raise bad("[resize, crop] with crop <= resize", list(card.resolution), ("resolution",))
    if card.vtab_splits is not None:
        _check_vtab_splits(card, card.vtab_splits)


def _ranges(card: DataCard, v: VtabSplits, part: str) -> list[tuple[str, range]] | None:
    """``part``'s slices as (split, positions), where the card says enough to know them."""
    out = []
    for s in v.slices(part):
        embedded = card.source.kind in ("embedded", "sklearn")
        n = v.sizes.get(s.split) or (card.split_sizes.get(card.role_of(s.split) or "")
                                     if embedded else None)
        if n:
            try:
                out.append((s.split, s.resolve(n)))
            except ValueError as e:
                raise inputs.Invalid("", problem=f"{e} (its size in "
                                     f"{'split_sizes' if embedded else 'vtab_splits.sizes'})",
                                     path=("vtab_splits", part)) from None
        elif s.size is not None:
            out.append((s.split, range(s.start or 0, s.stop)))
        else:
            return None
    return out


def _check_vtab_splits(card: DataCard, v: VtabSplits) -> None:
    """The slices agree with ``vtab_split`` (800 + 200 unless the card says otherwise), the
    retraining set is train800 + val200, no two sets share an example, and every split they
    read can be loaded."""
    bad = inputs.Invalid
    want = dict(zip(("train800", "val200"), card.vtab_split or (800, 200), strict=True))
    for part, n in want.items():
        sizes = [s.size for s in v.slices(part)]
        if None in sizes or sum(sizes) != n:
            raise bad("", problem=f"expected slices of {n} examples in all (vtab_split "
                      f"{list(want.values())}) with both bounds counted from the start, got "
                      f"{v.text(part)!r}" + ("" if None in sizes else f" ({sum(sizes)})"),
                      path=("vtab_splits", part))
    if v.train800val200 != v.train800 + v.val200:
        raise bad("", problem=f"expected train800 + val200 "
                  f"({v.text('train800') + '+' + v.text('val200')!r}), got "
                  f"{v.text('train800val200')!r}", path=("vtab_splits", "train800val200"))
    parts = {p: _ranges(card, v, p) for p in ("train800", "val200", "test")}
    for p, q in (("train800", "val200"), ("train800", "test"), ("val200", "test")):
        if parts[p] is None or parts[q] is None:
            continue
        for (sp, rp) in parts[p]:
            for (sq, rq) in parts[q]:
                if sp == sq and max(rp.start, rq.start) < min(rp.stop, rq.stop):
                    raise bad("", problem=f"{v.text(q)!r} shares examples with {p} "
                              f"({v.text(p)!r}) in split {sp!r}: the VTAB-1k sets are disjoint",
                              path=("vtab_splits", q))
    unknown = [s for s in v.sizes if s not in v.source_splits]
    if unknown:
        raise bad(f"sizes of the splits the slices read ({', '.join(v.source_splits)})",
                  unknown, ("vtab_splits", "sizes"))
    if card.source.kind in ("embedded", "sklearn"):  # made here: only the card's roles exist
        for s in v.source_splits:
            if card.role_of(s) is None:
                raise bad("", problem=f"split {s!r} is not a source split of this card "
                          f"(splits: {card.splits}); {card.source.kind} data has only those",
                          path=("vtab_splits",))
    if "test" in card.splits:  # then load(card, "test") and vtab_splits.test must be one set
        whole = (SplitSlice(card.splits["test"]),)
        if v.test != whole:
            raise bad("", problem=f"expected {whole[0]}, the test role's whole split: a VTAB "
                      f"card has a test role only where VTAB tests on a whole source split "
                      f"(otherwise leave the role out, and load(card, 'test') reads "
                      f"vtab_splits.test), got {v.text('test')!r}", path=("vtab_splits", "test"))


def _check_images(card: DataCard) -> None:
    """``images`` belongs to bundled cards and credits each file once; every file is there."""
    bad = inputs.Invalid
    if card.source.kind != "bundled":
        if card.images:
            raise bad("", problem="only bundled cards (source.kind: bundled) list images",
                      path=("images",))
        return
    folder = BUNDLED_DIR / str(card.source.folder)
    if not folder.is_dir():
        raise bad("", problem=f"no folder {folder} (source.folder is relative to {BUNDLED_DIR})",
                  path=("source", "folder"))
    seen: set[str] = set()
    for i, im in enumerate(card.images):
        if im.file in seen:
            raise bad("", problem=f"{im.file!r} is credited twice", path=("images", str(i), "file"))
        seen.add(im.file)
        if Path(im.file).name != im.file or not (folder / im.file).is_file():
            raise bad("", problem=f"no file {im.file!r} in {folder}",
                      path=("images", str(i), "file"))


def read_card(path: str | os.PathLike) -> DataCard:
    """Read and validate one YAML card file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No card file at {p}. Cards live in {CARD_DIR}.")
    try:
        doc = inputs.read_yaml(p, "card file")
    except inputs.InputError as e:
        raise CardError(str(e)) from None
    return parse_card(doc, str(p))


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
def cards_command(args: argparse.Namespace) -> int:
    """``bitkit cards [NAME] [--group G]``: list and validate the cards, or show one."""
    if args.group is not None and args.group not in GROUPS:
        raise CardError(f"unknown group {args.group!r}{inputs.did_you_mean(args.group, GROUPS)}; "
                        f"groups: {', '.join(GROUPS)}")
    cards, errors = validate_all()
    if args.name:
        card = get_card(args.name)
        for k in ("title", "group", "description", "num_classes", "train_size", "image_size",
                  "multi_label", "flip", "crop", "splits", "license", "citation", "paper"):
            print(f"{k:>12}: {getattr(card, k)}")
        if card.vtab_splits is not None:
            print(f"{'vtab_splits':>12}: {card.vtab_splits.table()}")
        print(f"{'source':>12}: {card.source}")
        for im in card.images:
            print(f"{'image':>12}: {im.file}: {im.title}, by {im.author}; {im.license} "
                  f"(from {im.source})")
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
