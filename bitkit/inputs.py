"""User input, checked one way wherever it enters bitkit.

Run files, ``-f params.yaml`` files, notebook parameters, data cards and ``TrainConfig`` all go
through the rules here, so a mistake reads the same wherever it is made, names the file and
line when there is one, and says what would work::

    run.yaml:7: field 'train.batch_size': expected a whole number >= 1, got '64' (text; write
    it without quotes for a number)
    run.yaml:5: field 'train.batch_sise': unknown name (did you mean 'batch_size'?); known: ...
    run.yaml:3:9: not valid YAML: mapping values are not allowed here

A *rule* is a function ``value -> checked value`` that raises :class:`Invalid` when the value
cannot work. Rules compose (:func:`optional`, :func:`list_of`, :func:`fields`), and rules for a
dataclass or a function's keyword arguments are read from their type hints
(:func:`rules_from_hints`), so a ``TrainConfig`` field and the same key in a run file are
checked by the same code. :func:`check` runs a rule over a whole input (a plain value or a
:class:`Document` read by :func:`read_yaml`) and turns the first :class:`Invalid` into an
:class:`InputError` (a ``ValueError``: the ``bitkit`` commands print it without a traceback).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Rule = Callable[[Any], Any]
_MISSING = object()


class InputError(ValueError):
    """User input that cannot work. The message names where (file, line, field), what was
    expected and what was given."""


class Invalid(Exception):
    """Raised by a rule: ``expected`` says what would work, ``got`` is the value given
    (absent for a missing field), ``path`` the keys leading to it (filled in on the way out)."""

    def __init__(self, expected: str, got: Any = _MISSING, path: Sequence[Any] = (), *,
                 problem: str | None = None) -> None:
        super().__init__(expected)
        self.expected, self.got, self.path = expected, got, tuple(path)
        #: a complete description instead of "expected X, got Y" (e.g. an unknown name)
        self.problem = problem

    def within(self, key: Any) -> Invalid:
        """The same problem, one level further down (``key`` is prepended to the path)."""
        self.path = (key, *self.path)
        return self

    def describe(self) -> str:
        if self.problem is not None:
            return self.problem
        return f"expected {self.expected}" + ("" if self.got is _MISSING else f", got {shown(self.got)}")


def shown(value: Any) -> str:
    """A given value as a message shows it: its repr, with a hint for quoted numbers."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return text
        return f"{text} (text; write it without quotes for a number)"
    return text


def did_you_mean(name: Any, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(name: Any, known: Iterable[str], what: str = "name") -> Invalid:
    known = list(known)
    return Invalid("", problem=f"unknown {what}{did_you_mean(name, known)}; known: "
                   f"{', '.join(map(str, known))}", path=(name,))


# --------------------------------------------------------------------------------------------
# YAML documents with line numbers
# --------------------------------------------------------------------------------------------


@dataclass
class Document:
    """Parsed YAML and where each key was written: ``lines[(key, subkey, ...)]`` is 1-based."""

    data: Any
    file: str | None = None
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def line(self, path: Sequence[Any]) -> int | None:
        """The line of ``path``, or of its longest prefix that the file spells out."""
        keys = tuple(str(k) for k in path)
        for n in range(len(keys), -1, -1):
            if keys[:n] in self.lines:
                return self.lines[keys[:n]]
        return None


@functools.cache
def _loader() -> type:
    """PyYAML's safe loader, reading ``1e-4`` as the number it means (YAML 1.1 wants ``1.0e-4``
    and would read it as text, which no learning rate should be)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def load_yaml(text: str) -> Any:
    """YAML text -> value, reading numbers as :func:`parse_yaml` does (no line numbers)."""
    import yaml

    return yaml.load(text, Loader=_loader())  # a SafeLoader subclass: no arbitrary objects


def _record_lines(node: Any, path: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*path, str(key.value))
            lines.setdefault(here, key.start_mark.line + 1)
            _record_lines(value, here, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault((*path, str(i)), item.start_mark.line + 1)
            _record_lines(item, (*path, str(i)), lines)


def parse_yaml(text: str, file: str | os.PathLike | None = None) -> Document:
    """YAML text -> :class:`Document`; a syntax error is an :class:`InputError` naming the file,
    line and column (an empty document is ``None``)."""
    import yaml

    name = None if file is None else str(file)
    try:
        data = load_yaml(text)
        node = yaml.compose(text, Loader=_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{name or '<yaml>'}:{mark.line + 1}:{mark.column + 1}" if mark else (name or
                                                                                        "<yaml>")
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        raise InputError(f"{where}: not valid YAML: {problem}" + (f" ({context})" if context
                                                                  else "")) from None
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _record_lines(node, (), lines)
    return Document(data, name, lines)


def read_yaml(path: str | os.PathLike, what: str = "file") -> Document:
    """Read a YAML file; a missing file is a ``FileNotFoundError`` that names ``what`` it is."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder; give the YAML file in it")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not a YAML file (not UTF-8 text: byte {e.start} cannot be "
                         "read); is it the right path?") from None
    return parse_yaml(text, p)


def check(given: Any, rule: Rule, *, source: str | None = None, label: str = "field") -> Any:
    """Run ``rule`` on ``given`` (a value or a :class:`Document`) and return the checked value.

    The first :class:`Invalid` becomes an :class:`InputError`:
    ``<source or file>[:line]: <label> '<a.b.c>': <problem>``.
    """
    doc = given if isinstance(given, Document) else Document(given)
    try:
        return rule(doc.data)
    except Invalid as e:
        raise error(e, doc, source=source, label=label) from None


def error(problem: Invalid, doc: Document | None = None, *, source: str | None = None,
          label: str = "field", error_type: type[InputError] = InputError) -> InputError:
    """The :class:`InputError` for ``problem`` found in ``doc`` (see :func:`check`)."""
    where = source or (doc.file if doc else None)
    line = doc.line(problem.path) if doc and doc.file and problem.path else None
    prefix = f"{where}{'' if line is None else f':{line}'}: " if where else ""
    dotted = ".".join(str(k) for k in problem.path)
    subject = f"{label} {dotted!r}: " if dotted else ""
    return error_type(f"{prefix}{subject}{problem.describe()}")


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    """int or numpy integer; never a bool (True == 1 in Python, never meant as a count)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _range_text(low: float | None, high: float | None, below: float | None) -> str:
    parts = []
    if low is not None:
        parts.append(f">= {low}")
    if high is not None:
        parts.append(f"<= {high}")
    if below is not None:
        parts.append(f"< {below}")
    return " and ".join(parts)


def integer(low: int | None = None, high: int | None = None) -> Rule:
    """A whole number (not a bool, not text), within ``low..high`` when given."""
    want = "a whole number" + (f" {_range_text(low, high, None)}" if low is not None or
                               high is not None else "")

    def rule(v: Any) -> int:
        if not _is_int(v) or (low is not None and v < low) or (high is not None and v > high):
            raise Invalid(want, v)
        return int(v)

    return rule


def number(low: float | None = None, high: float | None = None, *,
           below: float | None = None) -> Rule:
    """A real number (an int is fine; not a bool, not text, not NaN) in the given range."""
    rng = _range_text(low, high, below)
    want = "a number" + (f" {rng}" if rng else "")

    def rule(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v:
            raise Invalid(want, v)
        if (low is not None and v < low) or (high is not None and v > high) or (
                below is not None and v >= below):
            raise Invalid(want, v)
        return float(v)

    return rule


def boolean() -> Rule:
    def rule(v: Any) -> bool:
        if not isinstance(v, bool):
            raise Invalid("true or false", v)
        return v

    return rule


def text(*, empty: bool = False) -> Rule:
    """A string (stripped); ``empty=True`` also takes '' and None (read as '')."""
    def rule(v: Any) -> str:
        if empty and v is None:
            return ""
        if not isinstance(v, str) or (not empty and not v.strip()):
            raise Invalid("text" if empty else "a non-empty string", v)
        return v.strip()

    return rule


def one_of(*options: Any) -> Rule:
    want = "one of " + ", ".join(map(repr, options))

    def rule(v: Any) -> Any:
        # True == 1 in Python: a bool matches only a bool option, a number only a number
        if not any(v == o and isinstance(v, bool) == isinstance(o, bool) for o in options):
            raise Invalid(want + did_you_mean(v, [str(o) for o in options]), v)
        return v

    return rule


def optional(rule: Rule) -> Rule:
    """``rule``, or None (left empty in YAML)."""
    def checked(v: Any) -> Any:
        if v is None:
            return None
        try:
            return rule(v)
        except Invalid as e:
            if e.problem is None and not e.path:
                e.expected += " (or null / None)"
            raise

    return checked


def list_of(rule: Rule, *, min_len: int = 1, length: int | None = None, single: bool = False,
            what: str | None = None) -> Rule:
    """A list (or tuple) whose items pass ``rule``, returned as a list. ``single=True`` takes
    one bare value as a list of one; ``length`` fixes the length."""
    def rule_list(v: Any) -> list[Any]:
        if single and not isinstance(v, (list, tuple)):
            v = [v]
        n_ok = (len(v) == length) if length is not None else (len(v) >= min_len) if isinstance(
            v, (list, tuple)) else False
        if not isinstance(v, (list, tuple)) or not n_ok:
            size = f"of {length} " if length is not None else "non-empty " if min_len else ""
            raise Invalid(what or f"a {size}list", v)
        out = []
        for i, item in enumerate(v):
            try:
                out.append(rule(item))
            except Invalid as e:
                raise e.within(i) from None
        return out

    return rule_list


def fields(rules: Mapping[str, Rule], *, required: Iterable[str] = (),
           what: str = "a mapping of name: value",
           defaults: Mapping[str, Any] | None = None) -> Rule:
    """A mapping whose keys are among ``rules`` (an unknown one names the closest known one),
    with every ``required`` key present, each value passing its rule. Returns a new dict of
    the given keys (plus ``defaults`` for keys not given)."""
    required = tuple(required)

    def rule(v: Any) -> dict[str, Any]:
        if v is None:
            v = {}
        if not isinstance(v, Mapping):
            raise Invalid(what, v)
        for key in v:
            if key not in rules:
                raise unknown_name(key, rules)
        for key in required:
            if key not in v:
                raise Invalid("a value (this field is required)", path=(key,))
        out = dict(defaults or {})
        for key, value in v.items():
            try:
                out[key] = rules[key](value)
            except Invalid as e:
                raise e.within(key) from None
        return out

    return rule


def mapping_of(key_rule: Rule, value_rule: Rule, what: str = "a mapping") -> Rule:
    """A mapping of any keys passing ``key_rule`` to values passing ``value_rule``."""
    def rule(v: Any) -> dict[Any, Any]:
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise Invalid(what, v)
        out = {}
        for k, x in v.items():
            try:
                key = key_rule(k)
            except Invalid as e:
                e.path = (k,)
                raise
            try:
                out[key] = value_rule(x)
            except Invalid as e:
                raise e.within(k) from None
        return out

    return rule


def either(*rules: Rule, expected: str) -> Rule:
    """The first of ``rules`` that takes the value; else ``expected`` is what the user reads."""
    def rule(v: Any) -> Any:
        for r in rules:
            try:
                return r(v)
            except Invalid:
                continue
        raise Invalid(expected, v)

    return rule


def anything(v: Any) -> Any:
    return v


# --------------------------------------------------------------------------------------------
# Rules read from type hints
# --------------------------------------------------------------------------------------------


def rule_for_type(hint: Any) -> Rule:
    """The rule for a type hint: int, float, bool, str, Literal[...], X | None, list[X],
    tuple[X, ...], a dataclass (a mapping of its fields, built with ``from_dict`` when it has
    one), else anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = rule_for_type(rest[0]) if len(rest) == 1 else anything
        return optional(inner) if len(rest) < len(args) else inner
    if origin is typing.Literal:
        return one_of(*args)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return list_of(rule_for_type(args[0]) if args else anything, min_len=0)
    if hint is bool:
        return boolean()
    if hint is int:
        return integer()
    if hint is float:
        return number()
    if hint is str:
        return text()
    if dataclasses.is_dataclass(hint):
        return dataclass_rule(hint)
    return anything


def rules_from_hints(obj: Any, *, skip: Iterable[str] = ()) -> dict[str, Rule]:
    """name -> rule for a dataclass's fields or a function's keyword parameters."""
    hints = typing.get_type_hints(obj)
    if dataclasses.is_dataclass(obj):
        names = [f.name for f in dataclasses.fields(obj)]
    else:
        import inspect

        names = [p.name for p in inspect.signature(obj).parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {n: rule_for_type(hints.get(n, Any)) for n in names if n not in set(skip)}


def dataclass_rule(cls: type) -> Rule:
    """An instance of ``cls``, or a mapping of its fields (built with ``cls.from_dict`` when it
    has one, else ``cls(**mapping)``)."""
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]

    def rule(v: Any) -> Any:
        if isinstance(v, cls):
            return v
        checked = fields(rules_from_hints(cls), required=required,
                         what=f"a mapping of {cls.__name__} fields")(v)
        build = getattr(cls, "from_dict", None)
        try:
            return build(checked) if build else cls(**checked)
        except (ValueError, TypeError) as e:  # the dataclass's own cross-field checks
            raise Invalid("", problem=str(e)) from None

    return rule
