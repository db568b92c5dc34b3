"""The world's foregrounds and backgrounds feed the out-of-context builder (supplementary F)."""

import numpy as np
import pytest

from bitkit import ooc
from bitkit.data import load
from bitkit.data.world.objects import MASK_THRESHOLD, ooc_inputs


def test_world_objects_build_a_small_ooc_set(tmp_path):
    fgs, bgs = ooc_inputs([0, 1, 2], size=48)
    assert len(fgs) == 3 and len(bgs) == 8
    _, soft, labels = load("world-foregrounds", "test", image_size=48).render_with_masks([0, 1, 2])
    assert len(np.unique(soft.numpy())) > 2  # the world's masks really are soft...
    for fg, m, label in zip(fgs, soft.numpy(), labels, strict=True):
        assert fg.mask.dtype == bool  # ...and the adapter thresholds them explicitly
        np.testing.assert_array_equal(fg.mask, m >= MASK_THRESHOLD)
        assert fg.label == label and fg.image.shape == (48, 48, 3)
    records = ooc.build(fgs, bgs[:2], tmp_path / "ooc", hf=False, progress=False)
    assert len(records) == 6 and (tmp_path / "ooc" / "metadata.jsonl").is_file()
    assert {r["bg_name"] for r in records} == {bgs[0].name, bgs[1].name}
    assert all(r["label"] == fg.label for r, fg in zip(records[::2], fgs, strict=True))
    ds = ooc.OOCDataset(tmp_path / "ooc")
    image, label = ds[0]
    assert len(ds) == 6 and label == fgs[0].label and image.shape[-1] == 48


def test_default_is_the_whole_test_split_and_bad_threshold_is_refused():
    fgs, _ = ooc_inputs(size=32)
    assert len(fgs) == 81 and len({f.id for f in fgs}) == 81  # 81 objects, as in supplementary F
    with pytest.raises(ValueError, match="threshold"):
        ooc_inputs([0], threshold=0)
