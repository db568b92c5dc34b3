"""Data cards: every shipped card validates, paper numbers are exact, errors are precise."""

from __future__ import annotations

import pytest

from bitkit.cli import main as cli_main
from bitkit.data.cards import (
    CardError,
    get_card,
    list_cards,
    parse_card,
    read_card,
    validate_all,
)

VTAB_TASKS = 19


def test_all_shipped_cards_are_valid_and_complete():
    cards, errors = validate_all()
    assert errors == []
    names = {c.name for c in cards}
    for required in ("ilsvrc2012", "imagenet21k", "jft300m", "cifar10", "cifar100",
                     "oxford-iiit-pet", "oxford-flowers102", "digits", "world-upstream",
                     "world-objects", "world-fine", "world-texture", "world-count",
                     "world-orientation", "world-location", "world-distance",
                     "world-foregrounds", "vtab-1k"):
        assert required in names
    vtab = [c for c in cards if c.group.startswith("vtab-")]
    assert len(vtab) == VTAB_TASKS
    assert sorted(get_card("vtab-1k").source.members) == sorted(c.name for c in vtab)
    groups = {g: sum(c.group == f"vtab-{g}" for c in vtab)
              for g in ("natural", "specialized", "structured")}
    assert groups == {"natural": 7, "specialized": 4, "structured": 8}
    assert all(c.train_size == 1000 and c.vtab_split == (800, 200) for c in vtab)


def test_paper_numbers_are_copied_exactly():
    # Table 1 (BiT-L), Table 2 (BiT-S / BiT-M, R152x4), supplementary Table 1 (duplicates).
    expected = {
        "ilsvrc2012": (87.54, 81.30, 85.39), "cifar10": (99.37, 97.51, 98.91),
        "cifar100": (93.51, 86.21, 92.17), "oxford-iiit-pet": (96.62, 93.97, 94.46),
        "oxford-flowers102": (99.63, 89.89, 99.30), "vtab-1k": (76.29, 66.87, 70.64),
    }
    for name, (l, s, m) in expected.items():
        p = get_card(name).paper
        assert (p.bit_l, p.bit_s, p.bit_m) == (l, s, m), name
    assert get_card("vtab-1k").paper.bit_l_std == 1.70
    assert get_card("ilsvrc2012").paper.few_shot == {5: 72.0, 10: 76.8, 100: 84.1}
    # Tables 4-5: ResNet-50 with BN / BN+WS / GN / GN+WS, upstream and on VTAB-1k
    assert get_card("ilsvrc2012").paper.normalisation == {"BN": 75.6, "BN+WS": 75.8, "GN": 70.2,
                                                          "GN+WS": 76.0}
    assert get_card("vtab-1k").paper.normalisation == {"BN": 67.72, "BN+WS": 66.78,
                                                       "GN": 68.77, "GN+WS": 70.39}


# Supplementary Table 1, row by row: (Full, Dedup, Dups) from JFT, ImageNet-21k, ILSVRC-2012.
SUPP_TABLE_1 = {
    "ilsvrc2012": ((87.8, 87.9, 6470), (84.5, 85.3, 3834), (80.3, 81.3, 879)),
    "cifar10": ((99.4, 99.3, 435), (98.5, 98.4, 687), (97.2, 97.2, 82)),
    "cifar100": ((93.6, 93.4, 491), (91.2, 90.7, 890), (85.3, 85.2, 136)),
    "oxford-iiit-pet": ((96.8, 96.4, 600), (94.6, 94.5, 80), (93.7, 93.6, 58)),
    "oxford-flowers102": ((99.7, 99.7, 412), (99.5, 99.5, 335), (91.0, 91.0, 0)),
}


@pytest.mark.parametrize("name", sorted(SUPP_TABLE_1))
def test_duplicate_table_is_copied_exactly(name):
    dups = get_card(name).paper.duplicates
    got = tuple((dups[u].full, dups[u].dedup, dups[u].dups)
                for u in ("jft", "imagenet21k", "ilsvrc2012"))
    assert got == SUPP_TABLE_1[name]


def test_flip_and_crop_follow_supplementary_e():
    no_flip = {"vtab-dsprites-orientation", "vtab-smallnorb-azimuth", "vtab-dsprites-location"}
    no_crop = {"vtab-clevr-count", "vtab-clevr-distance", "vtab-dmlab", "vtab-kitti-distance",
               "vtab-dsprites-location"}
    for name in list_cards():
        card = get_card(name)
        if card.group.startswith("vtab-"):
            assert card.flip == (name not in no_flip), name
            assert card.crop == (name not in no_crop), name
    assert not get_card("world-orientation").flip and get_card("world-orientation").crop
    assert not get_card("world-location").flip and not get_card("world-location").crop
    assert not get_card("world-count").crop and not get_card("world-distance").crop


def test_jft_card_says_not_public():
    jft = get_card("jft300m")
    assert not jft.available and "not public" in jft.description.lower()
    assert (jft.num_classes, jft.multi_label) == (18291, True)


def rejects(raw, text):
    """The card is refused with a message containing ``text`` (file, field, expectation)."""
    with pytest.raises(CardError) as e:
        parse_card(raw, "cards/toy.yaml")
    assert text in str(e.value)


def _raw(**override):
    raw = {
        "name": "toy", "title": "Toy", "description": "d", "group": "standard",
        "source": {"kind": "hub", "hub_id": "me/toy"}, "splits": {"train": "train"},
        "eval_split": "train", "num_classes": 3, "train_size": 10, "image_size": [8, 8],
        "multi_label": False, "flip": True, "crop": True, "license": "CC0", "citation": "c",
    }
    raw.update(override)
    return raw


def test_valid_minimal_card_parses():
    card = parse_card(_raw(), "cards/toy.yaml")
    assert card.image_size == (8, 8) and card.source.hub_id == "me/toy"


@pytest.mark.parametrize("override, text", [
    ({"flip": "yes please"}, "toy.yaml: field 'flip': expected true or false, got 'yes please'"),
    ({"num_classes": 0}, "field 'num_classes': expected a whole number >= 1, got 0"),
    ({"image_size": [8]}, "field 'image_size': expected a list of two positive integers"),
    ({"group": "nature"}, "field 'group': expected one of 'upstream', 'standard'"),
    ({"flpi": True}, "field 'flpi': unknown name (did you mean 'flip'?)"),
    ({"source": {"kind": "hub"}}, "field 'source.hub_id': expected a value (required when "
                                  "source.kind is 'hub')"),
    ({"paper": {"bit_l": 187.5}}, "field 'paper.bit_l': expected a number >= 0 and <= "
                                  "100 (or null / None), got 187.5"),
    ({"eval_split": "test"}, "field 'eval_split': expected a role listed in splits (train)"),
    ({"name": "other"}, "field 'name': expected the file's name without .yaml ('toy')"),
    ({"source": {"kind": "embedded", "generator": "objects"}, "splits": {"train": "train",
                                                                         "test": "test"},
      "split_sizes": {"train": 100}},
     "field 'split_sizes': expected a size for every role in splits (missing: test): embedded "
     "data is made or split here"),
])
def test_bad_fields_name_file_field_and_expectation(override, text):
    rejects(_raw(**override), text)


def test_missing_required_field():
    raw = _raw()
    del raw["license"]
    with pytest.raises(CardError, match="field 'license': expected a value .this field is "
                                        "required"):
        parse_card(raw, "cards/toy.yaml")


def test_unknown_name_suggests_closest():
    with pytest.raises(KeyError, match="Did you mean 'cifar10'"):
        get_card("cifar-10")
    with pytest.raises(KeyError, match="Unknown dataset 'zzz'"):
        get_card("zzz")
    # a user mistake (ValueError, caught by run files and the CLI) whose text is the message
    with pytest.raises(ValueError) as e:
        get_card("cifar-10")
    assert str(e.value).startswith("Unknown dataset 'cifar-10'. Did you mean 'cifar10'")


def test_user_card_folder_and_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "toy.yaml").write_text(
        "name: toy\ntitle: Toy\ndescription: d\ngroup: standard\nsource: {kind: hub, hub_id: "
        "me/toy}\nsplits: {train: train}\neval_split: train\nnum_classes: 3\ntrain_size: 10\n"
        "image_size: [8, 8]\nmulti_label: false\nflip: true\ncrop: true\nlicense: CC0\n"
        "citation: c\n")
    monkeypatch.setenv("BITKIT_CARD_PATH", str(tmp_path))
    assert read_card(tmp_path / "toy.yaml").name == "toy"
    assert cli_main(["cards"]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "vtab-dsprites-location" in out and "0 invalid" in out
    (tmp_path / "bad.yaml").write_text("name: bad\nflip: 3\n")
    assert cli_main(["cards"]) == 1
    assert "bad.yaml: field" in capsys.readouterr().out
    assert cli_main(["cards", "cifar10"]) == 0
    assert "99.37" in capsys.readouterr().out


# Bundled files: the photographs of lesson 09, each credited on the photos card.
def _bundled(**override):
    raw = {"name": "toy", "title": "Toy", "description": "d", "group": "samples",
           "source": {"kind": "bundled", "folder": "photos"}, "license": "CC0", "citation": "c",
           "images": [{"file": "chelsea.jpg", "title": "Chelsea", "author": "Stefan van der Walt",
                       "license": "CC0 1.0", "source": "scikit-image"}]}
    raw.update(override)
    return raw


def test_the_photos_card_credits_every_bundled_file():
    import torch

    from bitkit.data import bundled, load

    card = get_card("photos")
    assert card.source.kind == "bundled" and card.group == "samples" and card.num_classes is None
    files = sorted(p.name for p in bundled.folder().iterdir() if p.suffix == ".jpg")
    assert sorted(im.file for im in card.images) == files and 5 <= len(files) <= 8
    assert all(im.title and im.author and im.license and im.source for im in card.images)
    assert sum((bundled.folder() / f).stat().st_size for f in files) < 300_000
    photos = bundled.photos()
    assert [p.name + ".jpg" for p in photos] == [im.file for im in card.images]
    for p in photos:
        assert p.image.dtype == torch.uint8 and p.image.shape[0] == 3
        assert max(p.image.shape[1:]) <= 320 and p.credit.author in p.caption
    with pytest.raises(ValueError, match="6 files bundled with bitkit, not a labelled dataset"):
        load("photos")


def test_a_bundled_card_needs_no_splits_and_credits_real_files():
    card = parse_card(_bundled(), "cards/toy.yaml")
    assert card.splits == {} and card.train_size == 0 and card.images[0].author
    one = _bundled()["images"][0]
    for override, text in [
        ({"images": [{**one, "file": "nope.jpg"}]}, "field 'images.0.file': no file 'nope.jpg'"),
        ({"images": [one, one]}, "field 'images.1.file': 'chelsea.jpg' is credited twice"),
        ({"images": [{k: v for k, v in one.items() if k != "author"}]},
         "field 'images.0.author': expected a value (this field is required)"),
        ({"source": {"kind": "bundled"}}, "field 'source.folder': expected a value (required "
                                          "when source.kind is 'bundled')"),
        ({"source": {"kind": "bundled", "folder": "nowhere"}}, "field 'source.folder': no folder"),
    ]:
        with pytest.raises(CardError) as e:
            parse_card(_bundled(**override), "cards/toy.yaml")
        assert text in str(e.value)
    with pytest.raises(CardError, match="field 'images': only bundled cards"):
        parse_card(_raw(images=[one]), "cards/toy.yaml")


# VTAB-1k's own sets, task by task, as google-research/task_adaptation defines them
# (task_adaptation/data/<file>.py, each class's ``tfds_splits``; the percentages there turned
# into positions with the TFDS split sizes its tests list): card -> (file, train800, val200,
# test, TFDS split sizes). train800val200 is always train800 + "+" + val200.
VTAB_1K_SPLITS = {
    "vtab-caltech101": ("caltech.py", "train[:800]", "train[2754:2954]", "test",
                        {"train": 3060, "test": 6084}),
    "vtab-cifar100": ("cifar.py", "train[:800]", "train[45000:45200]", "test",
                      {"train": 50000, "test": 10000}),
    "vtab-dtd": ("dtd.py", "train[:800]", "validation[:200]", "test",
                 {"train": 1880, "validation": 1880, "test": 1880}),
    "vtab-flowers102": ("oxford_flowers102.py", "train[:800]", "validation[:200]", "test",
                        {"train": 1020, "validation": 1020, "test": 6149}),
    "vtab-pets": ("oxford_iiit_pet.py", "train[:800]", "train[2944:3144]", "test",
                  {"train": 3680, "test": 3669}),
    "vtab-sun397": ("sun397.py", "train[:800]", "validation[:200]", "test",
                    {"train": 76128, "validation": 10875, "test": 21750}),
    "vtab-svhn": ("svhn.py", "train[:800]", "train[65931:66131]", "test",
                  {"train": 73257, "test": 26032}),
    "vtab-camelyon": ("patch_camelyon.py", "train[:800]", "validation[:200]", "test",
                      {"train": 262144, "validation": 32768, "test": 32768}),
    "vtab-eurosat": ("eurosat.py", "train[:800]", "train[16200:16400]", "train[21600:]",
                     {"train": 27000}),
    "vtab-resisc45": ("resisc45.py", "train[:800]", "train[18900:19100]", "train[25200:]",
                      {"train": 31500}),
    "vtab-retinopathy": ("diabetic_retinopathy.py", "train[:800]", "validation[:200]", "test",
                         {"train": 35126, "validation": 10906, "test": 42670}),
    "vtab-clevr-count": ("clevr.py", "train[:800]", "train[63000:63200]", "validation",
                         {"train": 70000, "validation": 15000}),
    "vtab-clevr-distance": ("clevr.py", "train[:800]", "train[63000:63200]", "validation",
                            {"train": 70000, "validation": 15000}),
    "vtab-dmlab": ("dmlab.py", "train[:800]", "validation[:200]", "test",
                   {"train": 65550, "validation": 22628, "test": 22735}),
    "vtab-kitti-distance": ("kitti.py", "train[:800]", "validation[:200]", "test",
                            {"train": 6347, "validation": 423, "test": 711}),
    "vtab-dsprites-location": ("dsprites.py", "train[:800]", "train[589824:590024]",
                               "train[663552:]", {"train": 737280}),
    "vtab-dsprites-orientation": ("dsprites.py", "train[:800]", "train[589824:590024]",
                                  "train[663552:]", {"train": 737280}),
    "vtab-smallnorb-azimuth": ("smallnorb.py", "train[:800]", "test[:200]", "test[50%:]",
                               {"train": 24300, "test": 24300}),
    "vtab-smallnorb-elevation": ("smallnorb.py", "train[:800]", "test[:200]", "test[50%:]",
                                 {"train": 24300, "test": 24300}),
}
# The embedded stand-ins (not VTAB tasks): VTAB's most common rule, val200 the next 200.
WORLD_TASKS = ("world-objects", "world-fine", "world-texture", "world-count", "world-orientation",
               "world-location", "world-distance")


def test_vtab_cards_carry_vtab_own_splits():
    vtab = sorted(c for c in list_cards() if get_card(c).group.startswith("vtab-"))
    assert sorted(VTAB_1K_SPLITS) == vtab
    for name, (source_file, train800, val200, test, sizes) in VTAB_1K_SPLITS.items():
        card = get_card(name)
        v = card.vtab_splits
        assert v.table() == {"train800": train800, "val200": val200,
                             "train800val200": f"{train800}+{val200}", "test": test}, name
        assert v.sizes == sizes, name
        assert f"task_adaptation/data/{source_file}" in v.note, name
        # a test role exactly where VTAB tests on a whole source split; else load() slices it
        whole = "[" not in test
        assert card.splits == ({"train": "train", "test": test} if whole else {"train": "train"})
        assert card.eval_split == "test"
        files = card.source.local_pattern
        for split in v.source_splits:  # the local layout names every split the slices read
            assert split in files, (name, files)
    for name in WORLD_TASKS:
        assert get_card(name).vtab_splits.table() == {
            "train800": "train[:800]", "val200": "train[800:1000]",
            "train800val200": "train[:800]+train[800:1000]", "test": "test"}, name
    assert get_card("vtab-1k").vtab_splits is None and get_card("cifar100").vtab_splits is None


def test_vtab_slices_resolve_as_tfds_reads_them():
    from bitkit.data.cards import SplitSlice, parse_split_expr

    (half,) = parse_split_expr("test[50%:]")
    assert half == SplitSlice("test", 50, None, percent=True)
    assert half.resolve(24300) == range(12150, 24300) and half.resolve(7) == range(4, 7)
    assert parse_split_expr("train[-10:]")[0].resolve(100) == range(90, 100)
    assert [str(s) for s in parse_split_expr("train[:800] + validation[:200]")] == [
        "train[:800]", "validation[:200]"]
    with pytest.raises(ValueError, match=r"slice train\[45000:45200\] needs at least 45200 "
                                         r"examples in split 'train', which has 30"):
        parse_split_expr("train[45000:45200]")[0].resolve(30)


def _vtab_raw(**vtab_splits):
    base = {"train800": "train[:800]", "val200": "train[900:1100]",
            "train800val200": "train[:800]+train[900:1100]", "test": "test"}
    return _raw(source={"kind": "local", "local_pattern": "/data/toy/{train,test}-*.parquet"},
                splits={"train": "train", "test": "test"}, eval_split="test", train_size=1000,
                vtab_split=[800, 200], vtab_splits={**base, **vtab_splits})


@pytest.mark.parametrize("override, text", [
    ({"val200": "train[900]"}, "field 'vtab_splits.val200': 'train[900]' is not a split slice: "
                               "expected a TFDS split expression: name, name[a:b], name[:b]"),
    ({"val200": "train[900:1100"}, "field 'vtab_splits.val200': 'train[900:1100' is not a split "
                                   "slice"),
    ({"train800": "train[:800]+"}, "field 'vtab_splits.train800': an empty term next to '+'"),
    ({"test": "test[10:50%]"}, "field 'vtab_splits.test': 'test[10:50%]' mixes a count and a "
                               "percent: use one unit per slice"),
    ({"test": "test[:150%]"}, "'test[:150%]': a percent bound must be within -100%..100%"),
    ({"val200": "train[1100:900]"}, "'train[1100:900]' is empty (it ends where or before it "
                                    "starts)"),
    ({"test": 7}, "field 'vtab_splits.test': expected a TFDS split expression"),
    ({"val200": "train[900:1000]", "train800val200": "train[:800]+train[900:1000]"},
     "field 'vtab_splits.val200': expected slices of 200 examples in all (vtab_split [800, "
     "200]) with both bounds counted from the start, got 'train[900:1000]' (100)"),
    ({"train800": "train[:80%]", "train800val200": "train[:80%]+train[900:1100]"},
     "field 'vtab_splits.train800': expected slices of 800 examples in all"),
    ({"train800val200": "train[:1000]"}, "field 'vtab_splits.train800val200': expected train800 "
                                         "+ val200 ('train[:800]+train[900:1100]'), got "
                                         "'train[:1000]'"),
    ({"val200": "train[700:900]", "train800val200": "train[:800]+train[700:900]"},
     "field 'vtab_splits.val200': 'train[700:900]' shares examples with train800 "
     "('train[:800]') in split 'train': the VTAB-1k sets are disjoint"),
    ({"test": "test[:50%]"}, "field 'vtab_splits.test': expected test, the test role's whole "
                             "split"),
    ({"sizes": {"train": 1000}}, "field 'vtab_splits.val200': slice train[900:1100] needs at "
                                 "least 1100 examples in split 'train', which has 1000 (its "
                                 "size in vtab_splits.sizes)"),
    ({"sizes": {"validation": 5}}, "field 'vtab_splits.sizes': expected sizes of the splits the "
                                   "slices read (train, test), got ['validation']"),
    ({"trainval": "train"}, "field 'vtab_splits.trainval': unknown name (did you mean "
                            "'train800val200'?)"),
])
def test_bad_vtab_splits_say_what_is_wrong(override, text):
    rejects(_vtab_raw(**override), text)


def test_vtab_splits_need_all_four_sets_and_loadable_splits():
    raw = _vtab_raw()
    del raw["vtab_splits"]["test"]
    with pytest.raises(CardError, match="field 'vtab_splits.test': expected a value"):
        parse_card(raw, "cards/toy.yaml")
    card = parse_card(_vtab_raw(), "cards/toy.yaml")
    assert card.vtab_splits.text("train800val200") == "train[:800]+train[900:1100]"
    # a test slice with no test role: load(card, "test") reads it, so eval_split may say test
    ok = _vtab_raw(test="train[2000:]")
    ok["splits"] = {"train": "train"}
    assert parse_card(ok, "cards/toy.yaml").eval_split == "test"
    embedded = _vtab_raw(val200="validation[:200]",
                         train800val200="train[:800]+validation[:200]")
    embedded["source"] = {"kind": "embedded", "generator": "count"}
    embedded["split_sizes"] = {"train": 2000, "test": 500}
    with pytest.raises(CardError, match=r"field 'vtab_splits': split 'validation' is not a "
                                        r"source split of this card \(splits: \{'train': "
                                        r"'train', 'test': 'test'\}\); embedded data has only"):
        parse_card(embedded, "cards/toy.yaml")
