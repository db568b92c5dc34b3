"""OOCBuilder: compose objects out of their context and build the dataset (supplementary F).

Supplementary F pastes segmented objects onto backgrounds where they would never appear, to ask
whether better pre-training also means recognising an object out of context. The rule (F.1): the
background is cut to its largest top-left square and the object scaled so its longest side is
80% of that square. This panel previews one composite at a time (foreground, background, output
size, position rule, edge blending) and then builds every foreground x background pair with
:func:`bitkit.ooc.build`, which records every choice in ``metadata.jsonl``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np

from bitkit import ooc
from bitkit.fileio import ForeignFilesError
from widgets._common import Panel, guarded, heading, img_tag, section, table

#: World masks are soft alpha (0..255); ``bitkit.ooc`` wants binary masks, thresholded here.
MASK_THRESHOLD = 128


class OOCBuilder(Panel):
    """Choose foreground, background, output size and position rule; preview; build.

    ``contexts`` maps a foreground id to the name of the background it usually appears on, so
    the preview can say whether a composite is in or out of context (``from_world`` fills it).
    The object's size is fixed by the paper's rule (80% of the background width); the output
    size sets how many pixels that is.
    """

    title = "out-of-context builder"

    def __init__(self, foregrounds: Sequence[ooc.Foreground], backgrounds: Sequence[ooc.Background],
                 *, out_dir: str | Path = "ooc_dataset", contexts: Mapping[str, str] | None = None,
                 output_size: int = 64, preview_size: int = 224) -> None:
        super().__init__()
        if not foregrounds or not backgrounds:
            raise ValueError("OOCBuilder needs at least one foreground and one background")
        self.foregrounds = {f.id: f for f in foregrounds}
        self.backgrounds = {b.id: b for b in backgrounds}
        self.contexts = dict(contexts or {})
        self.preview_size = preview_size
        self.image: np.ndarray | None = None
        self.record: dict[str, Any] = {}
        self.built: list[dict[str, Any]] = []
        fg_options = [(f"{f.class_name} ({f.id})", f.id) for f in foregrounds]
        bg_options = [(b.name, b.id) for b in backgrounds]
        style = {"description_width": "100px"}
        self.fg = W.Dropdown(options=fg_options, description="Foreground", style=style)
        self.bg = W.Dropdown(options=bg_options, description="Background", style=style)
        self.size = W.IntSlider(value=output_size, min=16, max=512, step=8,
                                description="Output size", style=style,
                                layout=W.Layout(width="380px"))
        self.placement = W.ToggleButtons(options=list(ooc.PLACEMENTS), description="Position",
                                         style={**style, "button_width": "80px"})
        self.seed = W.IntText(value=0, description="seed", style={"description_width": "40px"},
                              layout=W.Layout(width="120px"))
        self.blend = W.ToggleButtons(options=list(ooc.BLENDS), description="Edges",
                                     style={**style, "button_width": "80px"})
        self.feather = W.FloatSlider(value=0.02, min=0.005, max=0.1, step=0.005,
                                     description="feather", readout_format=".3f",
                                     style={"description_width": "60px"})
        self.preview = W.HTML()
        self.details = W.HTML()
        self.fg_pick = W.SelectMultiple(options=fg_options, value=[f.id for f in foregrounds],
                                        description="Objects", rows=6, style=style)
        self.bg_pick = W.SelectMultiple(options=bg_options, value=[b.id for b in backgrounds],
                                        description="Backgrounds", rows=6, style=style)
        self.out_dir = W.Text(value=str(out_dir), description="Folder", style=style,
                              layout=W.Layout(width="420px"))
        # Replaces only a dataset built here before (its recorded files); a folder holding
        # anything else is refused whatever this says (bitkit.ooc.build).
        self.overwrite = W.Checkbox(value=False, description="overwrite", indent=False,
                                    tooltip="replace the dataset built in this folder before; "
                                    "a folder with other files is never emptied")
        self.save_hf = W.Checkbox(value=False, description="also save as HF dataset (hf/)",
                                  indent=False)
        self.build_button = W.Button(description="Build dataset", icon="cogs",
                                     button_style="primary")
        self.result = W.HTML()
        self.count = W.HTML()
        for wdg in (self.fg, self.bg, self.size, self.placement, self.seed, self.blend,
                    self.feather):
            wdg.observe(self._on_change, names="value")
        for wdg in (self.fg_pick, self.bg_pick):
            wdg.observe(self._on_pick, names="value")
        self.build_button.on_click(self._on_build)
        self._root = W.VBox([
            heading("Objects out of context", "supplementary F: paste objects where they never "
                    "appear"),
            W.HBox([
                W.VBox([self.fg, self.bg, self.size, W.HBox([self.placement, self.seed]),
                        W.HBox([self.blend, self.feather])]),
                W.VBox([self.preview, self.details], layout=W.Layout(margin="0 0 0 16px")),
            ]),
            self.status,
            W.HTML("<b>Build</b>: every chosen object on every chosen background"),
            W.HBox([self.fg_pick, self.bg_pick]),
            W.HBox([self.out_dir, self.overwrite, self.save_hf]),
            W.HBox([self.build_button, self.count]), self.result,
        ], layout=W.Layout(max_width="1100px"))
        self._on_pick({})
        self.update()

    @classmethod
    def from_world(cls, n_objects: int = 12, *, image_size: int = 64, seed: int = 0,
                   **kwargs: Any) -> OOCBuilder:
        """Objects and backgrounds of the embedded world (``bitkit.data.world``), ready to use.

        World objects carry soft alpha masks; ``bitkit.ooc`` wants binary ones, so they are
        thresholded at 50% (``mask >= 128``). Each object's usual context is its upstream
        habitat, so the preview can flag in- versus out-of-context composites.
        """
        from bitkit.data import load
        from bitkit.data.world import backgrounds as world_backgrounds

        objects = load("world-foregrounds", "train", image_size=image_size, seed=seed)
        idx = np.arange(min(n_objects, len(objects)))
        images, masks, labels = objects.render_with_masks(idx)
        habitats = objects.habitat_of(labels)
        fgs, contexts = [], {}
        for i, image, mask, label, habitat in zip(idx, images, masks, labels, habitats,
                                                  strict=True):
            fid = objects.example_id(int(i))
            fgs.append(ooc.Foreground.create(
                fid, image, mask.numpy() >= MASK_THRESHOLD, int(label),
                objects.class_names[int(label)], source=fid, license=objects.card.license))
            contexts[fid] = habitat
        bgs = [ooc.Background.create(f"bg-{k}", b.image, b.name, license=b.license,
                                     attribution=b.attribution)
               for k, b in enumerate(world_backgrounds(image_size, seed=seed))]
        return cls(fgs, bgs, contexts=contexts, output_size=image_size, **kwargs)

    # -- preview -------------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return dict(output_size=int(self.size.value), placement=self.placement.value,
                    blend=self.blend.value, feather=float(self.feather.value),
                    seed=int(self.seed.value))

    @guarded
    def _on_change(self, change: dict[str, Any]) -> None:
        self.update()

    @guarded
    def update(self) -> None:
        """Compose the chosen pair with the chosen options and show it."""
        self.seed.disabled = self.placement.value != "random"
        self.feather.disabled = self.blend.value != "gaussian"
        fg, bg = self.foregrounds[self.fg.value], self.backgrounds[self.bg.value]
        self.image, self.record = ooc.compose(fg, bg, **self._options())
        self.preview.value = img_tag(self.image, self.preview_size, title=self.record["id"])
        self.details.value = self._details_html()

    def context_note(self) -> str:
        """'in context' / 'out of context' for the chosen pair, when the object's usual
        background is known."""
        usual = self.contexts.get(self.fg.value)
        if usual is None:
            return ""
        bg_name = self.backgrounds[self.bg.value].name
        where = "in context" if bg_name.split(" #")[0] == usual else "out of context"
        return f"{where} (usually seen on {usual})"

    def _details_html(self) -> str:
        r = self.record
        x, y, w, h = r["object_box"]
        rows = [("class", f"{r['class_name']} (label {r['label']})"),
                ("background", r["bg_name"]),
                ("object", f"{w}x{h} px at ({x}, {y}) in {r['output_size']}px: longest side "
                           f"{max(w, h) / r['output_size']:.0%} of the width (rule F.1)"),
                ("scale", f"x{r['scale']:.2f} from the source object"),
                ("position", r["placement"] + (f", seed {r['seed']}"
                                               if r["placement"] == "random" else "")),
                ("edges", r["blend"] + (f", sigma {r['feather_sigma']:.1f}px"
                                        if r["blend"] == "gaussian" else ""))]
        note = self.context_note()
        if note:
            rows.insert(2, ("context", note))
        return table(["", ""], rows)

    # -- build ---------------------------------------------------------------------------------

    @guarded
    def _on_pick(self, change: dict[str, Any]) -> None:
        n = len(self.fg_pick.value) * len(self.bg_pick.value)
        self.count.value = f"&nbsp;{n} images"

    @guarded
    def _on_build(self, _button: W.Button) -> None:
        self.build()

    def build(self) -> list[dict[str, Any]]:
        """Build the dataset with the chosen objects, backgrounds and options."""
        fgs = [self.foregrounds[i] for i in self.fg_pick.value]
        bgs = [self.backgrounds[i] for i in self.bg_pick.value]
        self.build_button.disabled = True
        self.result.value = f"building {len(fgs) * len(bgs)} images…"
        try:
            self.built = ooc.build(fgs, bgs, self.out_dir.value, hf=self.save_hf.value,
                                   overwrite=self.overwrite.value, progress=False,
                                   **self._options())
        except ForeignFilesError:  # files of someone else's: 'overwrite' would not help
            self.result.value = ""
            raise
        except FileExistsError:
            self.result.value = ""
            raise FileExistsError(f"{self.out_dir.value} holds a dataset built before: tick "
                                  "'overwrite' to replace it, or choose another folder") from None
        except BaseException:
            self.result.value = ""
            raise
        finally:
            self.build_button.disabled = False
        out = Path(self.out_dir.value)
        sample = "".join(img_tag(np.asarray(_read_png(out / r["file_name"])), 64,
                                 title=r["id"]) for r in self.built[:12])
        self.result.value = (f"built <b>{len(self.built)}</b> images in "
                             f"<code>{html.escape(str(out))}</code> (images/, metadata.jsonl"
                             f"{', hf/' if self.save_hf.value else ''})<br>{sample}")
        return self.built

    def static_html(self) -> str:
        body = (f'<div style="display:flex;gap:16px">'
                f"{img_tag(self.image, self.preview_size)}{self._details_html()}</div>"
                if self.image is not None else "")
        body += (f"<div>{len(self.foregrounds)} objects x {len(self.backgrounds)} backgrounds "
                 f"available; built: {len(self.built)} images</div>")
        return section("Out-of-context builder (static copy)", body)


def _read_png(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").copy()
