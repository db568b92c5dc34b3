"""bitkit.ooc: the supplementary F.1 rule exactly, byte-reproducible builds, clear input errors."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bitkit import models, ooc
from bitkit.evaluate import predict


def rgb(g, h, w):
    return g.integers(0, 256, (h, w, 3), dtype=np.uint8)


def inputs(seed=0):
    g = np.random.default_rng(seed)
    ellipse = (np.hypot(*np.mgrid[-1:1:24j, -1:1:16j]) <= 1.0)
    fgs = [
        ooc.Foreground.create("zebra-1", rgb(g, 30, 20), np.ones((30, 20), bool), 1, "zebra",
                              source="synthetic", license="CC0", attribution="test"),
        ooc.Foreground.create("sofa-1", rgb(g, 24, 16), ellipse.astype(np.uint8) * 255, 2, "sofa"),
    ]
    bgs = [
        ooc.Background.create("kitchen-1", rgb(g, 50, 70), "kitchen", license="CC-BY-2.0",
                              attribution="someone"),  # wider than tall
        ooc.Background.create("water-1", rgb(g, 90, 60), "underwater"),  # taller than wide
    ]
    return fgs, bgs


def test_top_left_square_crop_and_80_percent_exactly():
    fgs, bgs = inputs()
    fg, bg = fgs[0], bgs[0]  # object 20x30 (WxH), full rectangle mask; background 70x50
    out, rec = ooc.compose(fg, bg)
    assert out.shape == (50, 50, 3) and rec["crop_box"] == [0, 0, 50, 50]
    x, y, w, h = rec["object_box"]
    assert (w, h) == (27, 40) and max(w, h) == round(0.8 * 50)  # longest side = 80% of width
    assert (x, y) == ((50 - 27) // 2, (50 - 40) // 2)
    crop = bg.image[:50, :50]
    outside = np.ones((50, 50), bool)
    outside[y:y + h, x:x + w] = False
    np.testing.assert_array_equal(out[outside], crop[outside])  # background: top-left crop, untouched
    expected = np.asarray(Image.fromarray(fg.image).resize((27, 40), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out[y:y + h, x:x + w], expected)  # object: whole box pasted
    # a tall background: crop from the top-left corner, 60x60
    out2, rec2 = ooc.compose(fg, bgs[1], output_size=64)
    assert rec2["crop_box"] == [0, 0, 60, 60] and out2.shape == (64, 64, 3)
    assert max(rec2["object_box"][2:]) == round(0.8 * 64) == 51


def test_gaussian_blend_feathers_inside_the_mask_only():
    fgs, bgs = inputs()
    hard, rec_h = ooc.compose(fgs[1], bgs[0], output_size=100)
    soft, rec_s = ooc.compose(fgs[1], bgs[0], output_size=100, blend="gaussian", feather=0.05)
    assert rec_s["feather_sigma"] == pytest.approx(0.05 * 80)
    assert rec_h["object_box"] == rec_s["object_box"] and max(rec_h["object_box"][2:]) == 80
    bg = np.asarray(Image.fromarray(bgs[0].image[:50, :50]).resize((100, 100),
                                                                     Image.Resampling.LANCZOS))
    pasted = (hard != bg).any(-1)
    np.testing.assert_array_equal(soft[~pasted], bg[~pasted])  # nothing leaks outside the mask
    x, y, w, h = rec_h["object_box"]
    cy, cx = y + h // 2, x + w // 2
    np.testing.assert_array_equal(soft[cy, cx], hard[cy, cx])  # the centre is fully opaque
    edge = pasted & (soft != hard).any(-1)
    assert edge.sum() > 0  # edges are blended


def test_random_placement_is_seeded_and_inside():
    fgs, bgs = inputs()
    pos = {s: ooc.compose(fgs[0], bgs[1], placement="random", seed=s, output_size=100)[1]["position"]
           for s in range(6)}
    assert len({tuple(p) for p in pos.values()}) > 1
    again = ooc.compose(fgs[0], bgs[1], placement="random", seed=3, output_size=100)[1]["position"]
    assert again == pos[3]
    for x, y in pos.values():
        assert 0 <= x <= 100 - 54 and 0 <= y <= 100 - 80


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_is_byte_reproducible_with_metadata(tmp_path):
    fgs, bgs = inputs()
    kw = dict(output_size=48, placement="random", blend="gaussian", seed=7, progress=False)
    recs = ooc.build(fgs, bgs, tmp_path / "a", **kw)
    ooc.build(*inputs(), tmp_path / "b", **kw)
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert a == b and len([k for k in a if k.startswith("images/")]) == 4
    assert any(k.startswith("hf/") for k in a)
    ooc.build(fgs, bgs, tmp_path / "c", **{**kw, "seed": 8})
    assert tree_digest(tmp_path / "c")["images/00000.png"] != a["images/00000.png"]
    assert len(recs) == 4 and recs[0]["file_name"] == "images/00000.png"
    r = recs[1]  # zebra on water
    assert (r["fg_id"], r["bg_id"], r["class_name"], r["label"]) == ("zebra-1", "water-1", "zebra", 1)
    assert (r["fg_source"], r["fg_license"], r["bg_name"]) == ("synthetic", "CC0", "underwater")
    assert r["crop_box"] == [0, 0, 60, 60] and r["seed"] == 7 and r["blend"] == "gaussian"
    assert {"scale", "position", "bitkit_version", "placement", "bg_attribution"} <= set(r)
    assert ooc.read_records(tmp_path / "a") == recs
    import datasets

    hf = datasets.load_from_disk(str(tmp_path / "a" / "hf"))
    assert len(hf) == 4 and hf[1]["fg_id"] == "zebra-1"
    png = np.asarray(Image.open(tmp_path / "a" / "images" / "00001.png"))
    np.testing.assert_array_equal(np.asarray(hf[1]["image"]), png)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ooc.build(fgs, bgs, tmp_path / "a", progress=False)


def test_bad_inputs_name_the_file_or_id(tmp_path):
    g = np.random.default_rng(0)
    img = rgb(g, 10, 12)
    with pytest.raises(ooc.OOCInputError, match="'cat-3' mask: mask is empty"):
        ooc.Foreground.create("cat-3", img, np.zeros((10, 12)), 0, "cat")
    with pytest.raises(ooc.OOCInputError, match="mask is 10x12 .* image is 12x10"):
        ooc.Foreground.create("cat-3", img, np.ones((12, 10)), 0, "cat")
    with pytest.raises(ooc.OOCInputError, match="not binary .*0, 128, 255"):
        ooc.Foreground.create("cat-3", img, np.array([[0, 128, 255] * 4] * 10), 0, "cat")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ooc.OOCInputError, match="broken.png: cannot read"):
        ooc.Background.from_file("b", bad, "kitchen")
    Image.fromarray(img).save(tmp_path / "cat.png")
    Image.fromarray(np.full((10, 12), 77, np.uint8)).save(tmp_path / "cat_mask.png")
    with pytest.raises(ooc.OOCInputError, match="cat_mask.png: mask is not binary"):
        ooc.Foreground.from_files("cat", tmp_path / "cat.png", tmp_path / "cat_mask.png", 0, "cat")
    with pytest.raises(ooc.OOCInputError, match="missing.png: file not found"):
        ooc.Foreground.from_files("cat", tmp_path / "missing.png", tmp_path / "cat_mask.png", 0, "c")
    Image.fromarray(np.where(np.arange(12) < 6, 255, 0).astype(np.uint8)[None].repeat(10, 0)).save(
        tmp_path / "ok_mask.png")
    fg = ooc.Foreground.from_files("cat", tmp_path / "cat.png", tmp_path / "ok_mask.png", 0, "cat")
    assert fg.mask.sum() == 60
    fgs, bgs = inputs()
    with pytest.raises(ooc.OOCInputError, match="two foregrounds have the id 'zebra-1'"):
        ooc.build([fgs[0], fgs[0]], bgs, tmp_path / "x", progress=False)


def test_evaluate_iid_vs_ooc(tmp_path):
    fgs, bgs = inputs()
    ooc.build(fgs, bgs, tmp_path / "ooc", output_size=32, progress=False, hf=False)
    data = ooc.OOCDataset(tmp_path / "ooc", class_names=["a", "zebra", "sofa", "d"])
    assert len(data) == 4 and data[0][0].shape == (3, 32, 32) and data[0][1] == 1
    g = torch.Generator().manual_seed(0)
    iid = torch.utils.data.TensorDataset(torch.rand(8, 3, 32, 32, generator=g) * 2 - 1,
                                         torch.arange(8) % 4)
    nets = {}
    for s in (0, 1):
        torch.manual_seed(s)
        nets[f"net{s}"] = models.create("R14x0.25", num_classes=4, zero_head=False)
    res = ooc.evaluate_ooc(nets, iid, data, upstream={"net0": "world-upstream"}, progress=False)
    rows = res.rows()
    assert [r["model"] for r in rows] == ["net0", "net1"]
    for r in rows:
        net = nets[r["model"]]
        assert r["iid_top1"] == pytest.approx(predict(net, iid, progress=False).top1)  # fraction
        assert r["ooc_top1"] == pytest.approx(predict(net, data, progress=False).top1)
        assert r["params"] == sum(p.numel() for p in net.parameters())
        assert (r["iid_examples"], r["ooc_examples"]) == (8, 4)
    assert rows[0]["upstream"] == "world-upstream" and rows[1]["upstream"] == ""
    per_bg = res.by_background("net0", data.records)
    assert set(per_bg) == {"kitchen", "underwater"}
    assert np.mean(list(per_bg.values())) == pytest.approx(rows[0]["ooc_top1"])
    assert list(res.ooc["net0"].ids) == ["zebra-1@kitchen-1", "zebra-1@water-1",
                                         "sofa-1@kitchen-1", "sofa-1@water-1"]
