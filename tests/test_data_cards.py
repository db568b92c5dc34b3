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
    with pytest.raises(CardError) as e:
        parse_card(_raw(**override), "cards/toy.yaml")
    assert text in str(e.value)


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
