"""What every panel shares: live widget + static fallback, error reporting, images, tables.

A panel is shown in two places. In JupyterLab the live ipywidgets view renders; in a notebook
executed headless (``bitkit run``) the executed copy keeps only the ``text/html`` of the same
output (``bitkit.runs.keep_static_views``: no kernel will serve its widget models again), and so
does its HTML export. :class:`Panel` therefore puts both in one
mime bundle: the widget view *and* a static HTML rendering (tables, thumbnails and a plotly
figure) of what the panel shows at display time.
"""

from __future__ import annotations

import base64
import copy
import functools
import html
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image

from bitkit.runs import FIGURE_END, FIGURE_START, PLOTLY_MIME

#: Exceptions a user can cause from the UI (bad numbers, missing files, a wrong dataset): shown
#: as a message in the panel. Anything else is a bug: shown *and* re-raised.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError,
                                                FileExistsError, PermissionError)

F = TypeVar("F", bound=Callable[..., Any])


def user_message(exc: BaseException) -> str:
    """The text of an exception as a user should read it (KeyError adds quotes otherwise)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


class Panel:
    """Base of the panels: a root widget, a status line for errors, and a static rendering.

    Subclasses build ``self._root`` and implement :meth:`static_html`; ``self.figures`` lists
    their ``FigureWidget`` s so the display can hand the frontend their current state.
    """

    title = "panel"

    def __init__(self) -> None:
        self.status = W.HTML(layout=W.Layout(margin="2px 0"))
        self._root: W.Widget = W.VBox()
        self.figures: list[go.FigureWidget] = []
        self._error: str | None = None

    @property
    def widget(self) -> W.Widget:
        """The live ipywidgets tree (to embed the panel in your own layout)."""
        return self._root

    @property
    def error(self) -> str | None:
        """The message of the last failed action, or None when the last action worked."""
        return self._error

    def _set_error(self, message: str | None) -> None:
        self._error = message
        self.status.value = ("" if message is None else
                             f'<div style="color:#b00020;font-weight:600">{html.escape(message)}'
                             "</div>")

    def static_html(self) -> str:
        """What the panel shows, as self-contained HTML (for papermill / nbconvert exports)."""
        raise NotImplementedError

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        for fig in self.figures:
            # A FigureWidget inside a Box is rendered from these traits; bring them up to date.
            fig._widget_layout = copy.deepcopy(fig._layout_obj._props)
            fig._widget_data = copy.deepcopy(fig._data)
        bundle = dict(self._root._repr_mimebundle_() or {})
        bundle["text/html"] = self.static_html()
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.title}>"


def guarded(method: F) -> F:
    """Wrap a widget callback: user errors become the panel's message; bugs are shown, then
    re-raised (ipywidgets would otherwise only log them, and a test could not see them)."""

    @functools.wraps(method)
    def wrapper(self: Panel, *args: Any, **kwargs: Any) -> Any:
        self._set_error(None)
        try:
            return method(self, *args, **kwargs)
        except USER_ERRORS as e:
            self._set_error(user_message(e))
            return None
        except Exception as e:
            self._set_error(f"internal error in {method.__name__}: {type(e).__name__}: {e}")
            raise

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def to_hwc_uint8(image: Any) -> np.ndarray:
    """A dataset image (PIL, uint8 (3,H,W)/(H,W,3) tensor or array, float in [-1, 1]) -> HWC uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"cannot show an image of shape {a.shape}; expected (3, H, W) or (H, W, 3)")
    if a.dtype != np.uint8:
        a = np.asarray(a, dtype=np.float32)
        if a.min() >= -1.001 and a.max() <= 1.001:  # BiT-preprocessed pixels in [-1, 1]
            a = (a + 1.0) * 127.5
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_hwc_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def img_tag(image: Any, size: int = 72, *, title: str = "", border: str = "#ccc") -> str:
    """An ``<img>`` with the picture inlined (works in live widgets and exported HTML alike).

    Small images are scaled up without smoothing, so 32-pixel images stay readable.
    """
    data = base64.b64encode(png_bytes(image)).decode()
    return (f'<img src="data:image/png;base64,{data}" title="{html.escape(title)}" '
            f'style="width:{size}px;height:{size}px;image-rendering:pixelated;'
            f'border:2px solid {border};border-radius:3px">')


def placeholder(size: int, text: str) -> str:
    return (f'<div style="width:{size}px;height:{size}px;display:flex;align-items:center;'
            f'justify-content:center;background:#f3f3f3;color:#777;font-size:11px;'
            f'border-radius:3px">{html.escape(text)}</div>')


# --------------------------------------------------------------------------------------------
# Tables and figures
# --------------------------------------------------------------------------------------------

TABLE_STYLE = ("border-collapse:collapse;font-size:13px;margin:4px 0;"
               "font-family:system-ui,-apple-system,sans-serif")
CELL = "border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, escape: bool = True) -> str:
    """A plain HTML table; cells are escaped unless ``escape=False`` (already HTML)."""
    esc = html.escape if escape else str
    head = "".join(f'<th style="{CELL};background:#f5f5f5">{html.escape(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f'<td style="{CELL}">{esc(str(c))}</td>' for c in row)
                   + "</tr>" for row in rows)
    return f'<table style="{TABLE_STYLE}"><tr>{head}</tr>{body}</table>'


def figure_html(fig: go.Figure) -> str:
    """A plotly figure inside a panel's static view.

    The fragment draws with the plotly.js that the HTML export carries once
    (``bitkit.runs.export_html``); the figure's JSON rides along in an inert script between
    markers, so that ``bitkit.runs.static_views`` can give the figure an output of its own in a
    saved notebook, where JupyterLab draws plotly's mimetype without running any script.
    """
    fig = go.Figure(fig)
    spec = fig.to_json().replace("</", "<\\/")  # JSON's own escape: no early </script>
    fragment = fig.to_html(full_html=False, include_plotlyjs=False,
                           config={"displaylogo": False})
    return (f'{FIGURE_START}<script type="{PLOTLY_MIME}">{spec}</script>{fragment}'
            f"{FIGURE_END}")


def section(title: str, body: str) -> str:
    return (f'<div style="font-family:system-ui,-apple-system,sans-serif;margin:6px 0">'
            f'<div style="font-weight:600;font-size:14px;margin-bottom:2px">{html.escape(title)}'
            f"</div>{body}</div>")


def heading(text: str, note: str = "") -> W.HTML:
    extra = f' <span style="color:#666;font-weight:400">{html.escape(note)}</span>' if note else ""
    return W.HTML(f'<div style="font-size:16px;font-weight:600">{html.escape(text)}{extra}</div>')


def pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.{digits}f}%"


# --------------------------------------------------------------------------------------------
# Review files (annotations of mistakes, marks on duplicate pairs)
# --------------------------------------------------------------------------------------------


def load_labels(path: Path, fmt: str, allowed: Sequence[str]) -> dict[str, str]:
    """Read ``{id: label}`` from a review file written by :func:`save_labels`; a missing file is
    an empty review, a malformed one raises ``ValueError`` naming the file and the problem."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e}); fix it or move it away to start "
                         "a new review") from None
    if not isinstance(data, dict) or data.get("format") != fmt or not isinstance(
            data.get("labels"), dict):
        raise ValueError(f"{path}: not a {fmt} file (expected an object with \"format\": "
                         f"\"{fmt}\" and \"labels\"); choose another file name")
    labels = data["labels"]
    bad = {k: v for k, v in labels.items() if v not in allowed}
    if bad:
        k, v = next(iter(bad.items()))
        raise ValueError(f"{path}: {len(bad)} unknown label(s), e.g. {k!r}: {v!r}; allowed: "
                         f"{', '.join(allowed)}")
    return {str(k): str(v) for k, v in labels.items()}


def save_labels(path: Path, fmt: str, labels: dict[str, str], **info: Any) -> None:
    """Write the review atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": fmt, **info, "labels": dict(sorted(labels.items()))},
                              indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Looking images up by example id
# --------------------------------------------------------------------------------------------


class ImageLookup:
    """``lookup(example_id) -> image`` over a dataset whose ``example_id(i)`` names its items.

    Reports refer to examples by id. For bitkit datasets ids end in ``:<index>``, so the index
    is read from the id and checked against ``example_id`` (no need to list a million ids);
    other datasets are indexed once.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._index: dict[str, int] | None = None
        if not callable(getattr(dataset, "example_id", None)):
            from bitkit.evaluate import example_ids

            self._index = {str(i): n for n, i in enumerate(example_ids(dataset))}

    def index_of(self, example_id: str) -> int | None:
        if self._index is not None:
            return self._index.get(example_id)
        tail = example_id.rsplit(":", 1)[-1]
        if tail.isdigit() and int(tail) < len(self.dataset):
            i = int(tail)
            if self.dataset.example_id(i) == example_id:
                return i
        if len(self.dataset) <= 200_000:
            from bitkit.evaluate import example_ids

            self._index = {str(x): n for n, x in enumerate(example_ids(self.dataset))}
            return self._index.get(example_id)
        return None

    def __call__(self, example_id: str) -> Any | None:
        i = self.index_of(example_id)
        return None if i is None else first(self.dataset[i])


def first(item: Any) -> Any:
    """The image of a dataset item ``(image, target)`` (or the item itself)."""
    return item[0] if isinstance(item, (tuple, list)) else item
