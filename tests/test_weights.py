"""Released .npz layout, safetensors and state-dict loading: exact round trips, clear errors."""

import numpy as np
import pytest
import torch
from conftest import random_model

from bitkit import weights
from bitkit.models import create


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_npz_layout_names_and_hwio(tmp_path):
    m = random_model()
    path = weights.save_npz(m, tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        root = f["resnet/root_block/standardized_conv2d/kernel"]
        head = f["resnet/head/conv2d/kernel"]
        gamma = f["resnet/block2/unit01/b/group_norm/gamma"]
        proj = f["resnet/block1/unit01/a/proj/standardized_conv2d/kernel"]
    assert root.shape == (7, 7, 3, 16)  # HWIO
    assert head.shape == (1, 1, 512, 10)
    assert gamma.shape == (32,) and proj.shape == (1, 1, 16, 64)
    assert np.array_equal(root, m.stem.conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    assert "resnet/group_norm/gamma" in keys and "resnet/head/conv2d/bias" in keys
    assert len(keys) == len(m.state_dict())


def test_npz_round_trip_is_exact(tmp_path):
    a = random_model()
    p1 = weights.save_npz(a, tmp_path / "a.npz")
    b = create("R14x0.25", num_classes=10, weights=str(p1), keep_head=True)
    assert _same_state(a, b)
    p2 = weights.save_npz(b, tmp_path / "b.npz")
    with np.load(p1) as f1, np.load(p2) as f2:
        assert f1.files == f2.files
        assert all(np.array_equal(f1[k], f2[k]) for k in f1.files)


def test_safetensors_round_trip_and_metadata(tmp_path):
    a = random_model(norm="batch")
    with torch.no_grad():
        a.train()(torch.randn(4, 3, 32, 32))  # non-trivial running statistics
    path = weights.save_safetensors(a, tmp_path / "a.safetensors")
    md = weights.read_metadata(path)
    assert md["model"] == "R14x0.25" and md["num_classes"] == "10" and md["norm"] == "batch"
    b = create("R14x0.25", num_classes=10, norm="batch", weights=str(path), keep_head=True)
    assert _same_state(a, b)
    with pytest.raises(ValueError, match="norm='batch' model.*create\\(..., norm='batch'\\)"):
        create("R14x0.25", num_classes=10, weights=str(path))


def test_timm_named_files_load(tmp_path):
    a = random_model()
    path = weights.save_safetensors(a, tmp_path / "timm.safetensors", timm_names=True)
    b = create("R14x0.25", num_classes=10, weights=str(path), keep_head=True)
    assert _same_state(a, b)
    pt = tmp_path / "timm.pt"
    torch.save(weights.to_timm_state_dict(a), pt)
    assert _same_state(a, create("R14x0.25", num_classes=10, weights=str(pt), keep_head=True))


def test_numbered_conv_names_are_normalised(tmp_path):
    a = random_model()
    path = weights.save_npz(a, tmp_path / "a.npz")
    with np.load(path) as f:
        arrays = {k.replace("standardized_conv2d", "standardized_conv2d_3"): f[k] for k in f.files}
    np.savez(tmp_path / "numbered.npz", **arrays)
    assert _same_state(a, create("R14x0.25", num_classes=10, weights=str(tmp_path / "numbered.npz"),
                                 keep_head=True))


def test_other_num_classes_gets_a_zero_head_and_says_so(tmp_path, caplog):
    a = random_model(classes=21843 // 100)
    path = weights.save_npz(a, tmp_path / "up.npz")
    b = create("R14x0.25", num_classes=5)
    with caplog.at_level("WARNING", logger="bitkit.weights"):
        result = weights.load(b, path)
    assert result.head_reset and result.architecture.num_classes == 218
    assert "218 classes" in result.message and "zeros" in result.message
    assert "zeros" in caplog.text
    assert torch.count_nonzero(b.head.weight) == 0 and b.num_classes == 5
    assert torch.equal(b.stages[2].units[0].conv2.weight, a.stages[2].units[0].conv2.weight)


def test_headless_file_loads_as_feature_extractor(tmp_path):
    a = random_model()
    path = weights.save_npz(a, tmp_path / "a.npz")
    with np.load(path) as f:
        np.savez(tmp_path / "nohead.npz", **{k: f[k] for k in f.files if "/head/" not in k})
    b = create("R14x0.25", num_classes=10)
    result = weights.load(b, tmp_path / "nohead.npz")
    assert result.head_reset and "no head" in result.message


def test_wrong_size_names_both_architectures(tmp_path):
    path = weights.save_npz(random_model("R14x0.25"), tmp_path / "small.npz")
    with pytest.raises(ValueError, match=r"holds an R14x0.25 .* the model is R26x0.25.*create\('R14x0.25'"):
        create("R26x0.25", num_classes=10, weights=str(path))
    assert weights.describe(path).name == "R14x0.25"


def test_missing_key_and_wrong_shape_are_named(tmp_path):
    a = random_model()
    path = weights.save_npz(a, tmp_path / "a.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    missing = dict(arrays)
    del missing["resnet/block3/unit01/b/group_norm/beta"]
    np.savez(tmp_path / "missing.npz", **missing)
    expected = r"missing 'resnet/block3/unit01/b/group_norm/beta'.*stages\.2\.units\.0\.norm2\.bias"
    with pytest.raises(ValueError, match=expected):
        create("R14x0.25", num_classes=10, weights=str(tmp_path / "missing.npz"))
    bad = dict(arrays)
    bad["resnet/block2/unit01/b/standardized_conv2d/kernel"] = np.zeros((3, 3, 32, 31), np.float32)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match=r"\(31, 32, 3, 3\) in the file.*\(32, 32, 3, 3\)"):
        create("R14x0.25", num_classes=10, weights=str(tmp_path / "bad.npz"))
    extra = dict(arrays)
    extra["vit/embedding/kernel"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "extra.npz", **extra)
    with pytest.raises(ValueError, match="vit/embedding/kernel.*not a BiT ResNet checkpoint"):
        create("R14x0.25", num_classes=10, weights=str(tmp_path / "extra.npz"))
    m = create("R14x0.25", num_classes=10)
    assert weights.load(m, tmp_path / "extra.npz", strict=False, keep_head=True).loaded == len(arrays)


def test_user_mistakes_get_clear_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch\\('BiT-M-R50x1'\\)"):
        create("R50x1", weights=str(tmp_path / "BiT-M-R50x1.npz"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "obj.npz").write_bytes((tmp_path / "obj.npy").read_bytes())
    with pytest.raises(ValueError, match="single array|plain-array"):
        create("R14x0.25", weights=str(tmp_path / "obj.npz"))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no BiT ResNet variables .*'a'"):
        weights.load(create("R14x0.25"), tmp_path / "other.npz")
    state = create("R14x0.25").state_dict()
    arrays = {weights.tf_name(k): weights._oihw_to_hwio(v) for k, v in state.items()}
    arrays["resnet/group_norm/beta"] = np.array([{"a": 1}], dtype=object)  # would need unpickling
    np.savez(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(ValueError, match="'resnet/group_norm/beta' is not a plain numeric array"):
        weights.load(create("R14x0.25"), tmp_path / "pickled.npz")
    with pytest.raises(ValueError, match="unknown weights format '.h5'"):
        (tmp_path / "m.h5").write_bytes(b"x")
        create("R14x0.25", weights=str(tmp_path / "m.h5"))
    with pytest.raises(ValueError, match="ablation"):
        weights.save_npz(create("R14x0.25", norm="batch"), tmp_path / "bn.npz")


def test_fetch_downloads_once_into_the_cache(tmp_path):
    server = tmp_path / "server"
    weights.save_npz(random_model(), server / "BiT-S-R14.npz")
    cache = tmp_path / "cache"
    path = weights.fetch("BiT-S-R14", cache_dir=cache, base_url=server.as_uri())
    assert path == cache / "BiT-S-R14.npz" and path.is_file()
    (server / "BiT-S-R14.npz").unlink()
    assert weights.fetch("BiT-S-R14.npz", cache_dir=cache, base_url=server.as_uri()) == path
    with pytest.raises(FileNotFoundError, match="Could not download .*put it at"):
        weights.fetch("BiT-M-R50x1", cache_dir=cache, base_url=server.as_uri())
    assert not list(cache.glob(".*tmp"))  # no half-written files left behind


def test_cli_info_and_convert(tmp_path, capsys):
    from bitkit.cli import main

    a = random_model()
    src = weights.save_npz(a, tmp_path / "a.npz")
    assert main(["weights", "info", str(src)]) == 0
    assert "R14x0.25" in capsys.readouterr().out
    assert main(["weights", "convert", str(src), str(tmp_path / "b.safetensors")]) == 0
    # a conversion keeps the head: restoring the converted file gives the source model back
    assert _same_state(a, create("R14x0.25", num_classes=10, weights=str(tmp_path / "b.safetensors"),
                                 keep_head=True))
    assert main(["weights", "info", str(tmp_path / "nope.npz")]) == 2
    assert "No weights file" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pt"])
@pytest.mark.parametrize("damage", ["truncated", "cut_early", "random", "empty"])
def test_damaged_files_say_download_again(tmp_path, suffix, damage):
    """An interrupted download must not end in BadZipFile / SafetensorError / EOFError, nor in
    numpy's misleading 'pickled data' (what random bytes in an .npz used to give)."""
    m = random_model()
    good = tmp_path / f"good{suffix}"
    if suffix == ".npz":
        weights.save_npz(m, good)
    elif suffix == ".safetensors":
        weights.save_safetensors(m, good)
    else:
        torch.save(m.state_dict(), good)
    data = good.read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes({"truncated": data[: len(data) * 2 // 3], "cut_early": data[:200],
                     "random": np.random.default_rng(0).bytes(5000), "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"bad\.\w+: the file is damaged or incomplete \(e\.g\. an "
                                         r"interrupted download\): download it again") as e:
        weights.load(create("R14x0.25", num_classes=10), bad)
    assert "pickled" not in str(e.value)


def test_a_pt_file_with_python_objects_is_refused_not_called_damaged(tmp_path):
    from types import SimpleNamespace

    torch.save({"head.bias": SimpleNamespace(a=1)}, tmp_path / "objects.pt")
    with pytest.raises(ValueError, match="holds Python objects besides tensors"):
        weights.load(create("R14x0.25"), tmp_path / "objects.pt")
