"""``bitkit.weights.fetch`` / ``bitkit weights fetch``: the real download code against a local
stand-in for Google's bucket (Range, ``x-goog-hash``, cut connections) and against
huggingface_hub's own cache layout, offline. Nothing here reaches the network."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import random_model

from bitkit import weights
from bitkit.cli import main
from bitkit.models import create

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused at once


def _same_body(a, b):
    """Every tensor but the head (which loading zero-initialises for transfer)."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if not k.startswith("head.")]
    return sb.keys() == sa.keys() and all(torch.equal(sa[k], sb[k]) for k in keys)


class Bucket:
    """Google's bucket, locally: serves ``files`` (name -> bytes) with ``x-goog-hash`` (md5 of the
    true object), honours ``Range: bytes=N-`` with a 206 unless ``ranges = False``, and can cut
    the next response after ``cut_after`` bytes. ``requests`` records each GET's Range header."""

    def __init__(self, files):
        self.files = dict(files)
        self.sent = {}  # name -> bytes actually served, when it differs (a corrupted payload)
        self.ranges = True
        self.cut_after = None
        self.hash_style = "separate"  # GCS sends crc32c and md5 as two headers; "joined": one
        self.requests = []
        bucket = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                bucket.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def handle(self, h):
        name = h.path.lstrip("/")
        if name not in self.files:
            h.send_error(404)
            return
        self.requests.append(h.headers.get("Range"))
        true, payload = self.files[name], self.sent.get(name, self.files[name])
        start = 0
        asked = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        if asked and self.ranges:
            start = int(asked.group(1))
            if start >= len(payload):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(payload)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            h.send_response(200)
        body = payload[start:]
        h.send_header("Content-Length", str(len(body)))
        md5 = base64.b64encode(hashlib.md5(true).digest()).decode()
        if self.hash_style == "joined":
            h.send_header("x-goog-hash", f"crc32c=n03x6A==,md5={md5}")
        else:
            h.send_header("x-goog-hash", "crc32c=n03x6A==")
            h.send_header("x-goog-hash", f"md5={md5}")
        h.end_headers()
        if self.cut_after is not None:
            body, self.cut_after = body[:self.cut_after], None  # then the connection closes
        h.wfile.write(body)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def released(tmp_path):
    """An R14x0.25 in the released .npz layout: (model, its bytes)."""
    model = random_model()
    path = weights.save_npz(model, tmp_path / "src" / "model.npz")
    return model, path.read_bytes()


@pytest.fixture()
def bucket(released):
    b = Bucket({"BiT-S-R50x1.npz": released[1]})
    yield b
    b.close()


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so no test sees the machine's own."""
    d = tmp_path / "hf-hub"
    d.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(d))
    return d


@pytest.mark.parametrize("hash_style", ["separate", "joined"])
def test_fresh_download_checks_md5_and_loads(tmp_path, bucket, released, hash_style, capsys):
    bucket.hash_style = hash_style
    cache = tmp_path / "cache"
    path = weights.fetch("BiT-S-R50x1", cache_dir=cache, base_url=bucket.url, progress=True)
    assert path == cache / "BiT-S-R50x1.npz" and path.read_bytes() == released[1]
    assert bucket.requests == [None]  # one plain GET, no Range
    assert sorted(p.name for p in cache.iterdir()) == ["BiT-S-R50x1.npz"]  # no .part left
    assert "BiT-S-R50x1" in capsys.readouterr().err  # the progress bar (asked for here)
    model = create("R14x0.25", num_classes=10, weights=str(path))
    assert _same_body(released[0], model) and weights.describe(path).name == "R14x0.25"
    # cached: returned without asking the server again
    assert weights.fetch("BiT-S-R50x1.npz", cache_dir=cache, base_url=UNREACHABLE) == path
    assert len(bucket.requests) == 1


def test_broken_download_keeps_the_part_and_the_next_call_resumes(tmp_path, bucket, released):
    cache = tmp_path / "cache"
    bucket.cut_after = 1000
    with pytest.raises(weights.WeightsUnavailable, match=r"closed after 1000 of \d+ bytes.*resumes"):
        weights.fetch("BiT-S-R50x1", cache_dir=cache, base_url=bucket.url, retries=0)
    part = cache / "BiT-S-R50x1.npz.part"
    assert part.stat().st_size == 1000 and not (cache / "BiT-S-R50x1.npz").exists()
    path = weights.fetch("BiT-S-R50x1", cache_dir=cache, base_url=bucket.url, retries=0)
    assert bucket.requests == [None, "bytes=1000-"]
    assert path.read_bytes() == released[1] and not part.exists()


def test_a_broken_download_resumes_within_one_call(tmp_path, bucket, released):
    bucket.cut_after = 4096
    path = weights.fetch("BiT-S-R50x1", cache_dir=tmp_path / "cache", base_url=bucket.url)
    assert bucket.requests == [None, "bytes=4096-"] and path.read_bytes() == released[1]


def test_md5_mismatch_fails_clearly_and_leaves_no_file(tmp_path, bucket, released):
    data = bytearray(released[1])
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped in transit
    bucket.sent["BiT-S-R50x1.npz"] = bytes(data)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "BiT-S-R50x3.npz").write_bytes(b"someone else's file")
    with pytest.raises(weights.DownloadCorrupted, match=r"does not match the server's checksum "
                       r"\(md5 .*x-goog-hash.*deleted BiT-S-R50x1.npz.part"):
        weights.fetch("BiT-S-R50x1", cache_dir=cache, base_url=bucket.url)
    assert sorted(p.name for p in cache.iterdir()) == ["BiT-S-R50x3.npz"]
    # the CLI says it on one line and exits 2
    assert main(["weights", "fetch", "BiT-S-R50x1", "--cache-dir", str(cache),
                 "--base-url", bucket.url]) == 2


def test_a_server_that_ignores_range_restarts_cleanly(tmp_path, bucket, released):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "BiT-S-R50x1.npz.part").write_bytes(b"x" * 700)  # left by an earlier attempt
    bucket.ranges = False
    path = weights.fetch("BiT-S-R50x1", cache_dir=cache, base_url=bucket.url)
    assert bucket.requests == ["bytes=700-"]  # asked to resume, got the whole file (200)
    assert path.read_bytes() == released[1]
    assert not (cache / "BiT-S-R50x1.npz.part").exists()


def test_a_part_longer_than_the_file_starts_again(tmp_path, bucket, released):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "BiT-S-R50x1.npz.part").write_bytes(b"x" * (len(released[1]) + 5))
    path = weights.fetch("BiT-S-R50x1", cache_dir=cache, base_url=bucket.url)
    assert bucket.requests == [f"bytes={len(released[1]) + 5}-", None]  # 416, then afresh
    assert path.read_bytes() == released[1]


def test_a_download_that_is_not_a_bit_checkpoint_is_refused(tmp_path):
    b = Bucket({"BiT-S-R50x1.npz": b"<html>sign in to continue</html>"})
    try:
        with pytest.raises(weights.DownloadCorrupted, match="not a readable BiT checkpoint"):
            weights.fetch("BiT-S-R50x1", cache_dir=tmp_path / "c", base_url=b.url)
    finally:
        b.close()
    assert list((tmp_path / "c").iterdir()) == []


def test_offline_says_how_to_get_the_file_by_hand(tmp_path, hub_cache, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "cache"
    with pytest.raises(weights.WeightsUnavailable) as e:
        weights.fetch("BiT-M-R50x1", cache_dir=cache, base_url=UNREACHABLE)
    assert isinstance(e.value, FileNotFoundError)
    target = cache / "BiT-M-R50x1.npz"
    message = str(e.value)
    assert f"curl -L -o {target} {UNREACHABLE}/BiT-M-R50x1.npz" in message
    assert (f"hf download timm/resnetv2_50x1_bit.goog_in21k model.safetensors --local-dir "
            f"{cache / 'BiT-M-R50x1'}") in message
    assert "offline (HF_HUB_OFFLINE=1)" in message and "Connection refused" in message
    assert f"cache folder {cache} ($BITKIT_WEIGHTS" in message and "weights=PATH" in message
    assert not cache.exists() or not any(cache.iterdir())

    assert main(["weights", "fetch", "BiT-M-R50x1", "--cache-dir", str(cache),
                 "--base-url", UNREACHABLE]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitkit weights: error: Could not download BiT-M-R50x1")
    assert f"curl -L -o {target}" in err and "Traceback" not in err

    # a file put there by hand (either way the message says) is used without network
    weights.save_npz(random_model(), target)
    assert weights.fetch("BiT-M-R50x1", cache_dir=cache, base_url=UNREACHABLE) == target
    assert main(["weights", "fetch", "BiT-M-R50x1", "--cache-dir", str(cache),
                 "--base-url", UNREACHABLE]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    by_hub = cache / "BiT-M-R50x1" / "model.safetensors"
    weights.save_safetensors(random_model(), by_hub, timm_names=True)
    assert weights.fetch("BiT-M-R50x1", cache_dir=cache, base_url=UNREACHABLE,
                         source="hub") == by_hub


def test_bucket_only_names_and_unknown_names(tmp_path, hub_cache, bucket):
    with pytest.raises(ValueError, match="BiT-S-R50x1 is not on the Hugging Face Hub"):
        weights.fetch("BiT-S-R50x1", cache_dir=tmp_path, source="hub")
    with pytest.raises(weights.WeightsUnavailable, match=r"HTTP Error 404 Not Found: no such "
                       r"file \(did you mean 'BiT-M-R50x1-ILSVRC2012'\?\).*--list") as e:
        weights.fetch("BiT-M-R50x1-ILSVRC2021", cache_dir=tmp_path, base_url=bucket.url)
    assert "curl" not in str(e.value)  # downloading by hand cannot help
    with pytest.raises(ValueError, match="not a released checkpoint name"):
        weights.fetch("../../etc/passwd", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="source='ftp'"):
        weights.fetch("BiT-M-R50x1", cache_dir=tmp_path, source="ftp")


def _hub_snapshot(hub_cache, repo, model, revision="0123456789abcdef0123456789abcdef01234567"):
    """Write the layout huggingface_hub keeps: models--ORG--NAME/{refs/main,snapshots/REV/...}."""
    root = hub_cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    return weights.save_safetensors(model, root / "snapshots" / revision / "model.safetensors",
                                    timm_names=True)


def test_hub_copy_comes_from_the_hugging_face_cache_offline(tmp_path, hub_cache, monkeypatch,
                                                            capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = random_model()
    snapshot = _hub_snapshot(hub_cache, "timm/resnetv2_50x1_bit.goog_in21k", model)
    cache = tmp_path / "cache"
    # through huggingface_hub's hf_hub_download (local_files_only), HF_HUB_CACHE read now
    path = weights.fetch("BiT-M-R50x1", cache_dir=cache, base_url=UNREACHABLE)
    assert path == snapshot and not cache.exists()  # nothing copied into bitkit's cache
    assert weights.load(create("R14x0.25", num_classes=10), path).format == "safetensors (timm names)"
    assert _same_body(model, create("R14x0.25", num_classes=10, weights=str(path)))
    other = tmp_path / "other-hub"
    other.mkdir()
    _hub_snapshot(other, "timm/resnetv2_50x1_bit.goog_in21k_ft_in1k", model)
    assert weights.fetch("BiT-M-R50x1-ILSVRC2012", cache_dir=cache, base_url=UNREACHABLE,
                         hub_cache_dir=other).parent.parent.parent.parent == other
    assert main(["weights", "fetch", "BiT-M-R50x1", "--source", "hub"]) == 0
    assert capsys.readouterr().out.strip() == str(snapshot)
    # --source bucket does not look at the Hub
    with pytest.raises(weights.WeightsUnavailable, match="Connection refused"):
        weights.fetch("BiT-M-R50x1", cache_dir=cache, base_url=UNREACHABLE, source="bucket")


def test_auto_falls_back_to_the_bucket_when_the_hub_has_nothing(tmp_path, hub_cache, released):
    b = Bucket({"BiT-M-R50x1.npz": released[1]})
    try:
        path = weights.fetch("BiT-M-R50x1", cache_dir=tmp_path / "c", base_url=b.url)
    finally:
        b.close()
    assert path == tmp_path / "c" / "BiT-M-R50x1.npz" and path.read_bytes() == released[1]


def test_name_to_source_mapping_matches_timms_registry():
    timm = pytest.importorskip("timm")
    published = set(timm.list_pretrained("resnetv2_*_bit*"))
    sources = weights.released_sources()
    assert list(sources)[:12] == weights.released_names() and len(sources) == 18
    on_hub = {n: s.hub_repo for n, s in sources.items() if s.hub_repo}
    assert sorted(on_hub) == sorted(n for n in sources if n.startswith("BiT-M-"))
    for name, repo in on_hub.items():
        org, _, model = repo.partition("/")
        assert org == "timm" and model in published, (name, repo)
        assert timm.models.get_pretrained_cfg(model).hf_hub_id == repo  # timm downloads it there
        size = name.split("-")[2]
        assert model.startswith(f"resnetv2_{size[1:]}_bit.goog_in21k")
        assert model.endswith("_ft_in1k") == name.endswith("-ILSVRC2012")
    assert sources["BiT-M-R50x1"].url == "https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz"
    vtab = weights.source_of("BiT-M-R50x1-run0-caltech101")
    assert vtab.url.endswith("/bit_models/vtab/BiT-M-R50x1-run0-caltech101.npz")
    assert vtab.hub_repo is None and weights.hub_repo("BiT-S-R50x1") is None


def test_fetch_list(capsys):
    assert main(["weights", "fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in weights.released_sources())
    assert "hub timm/resnetv2_152x4_bit.goog_in21k_ft_in1k, bucket" in out
    assert main(["weights", "fetch"]) == 2
    assert "give a released name" in capsys.readouterr().err


def _info_fails(path, capsys):
    assert main(["weights", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "it is not a BiT ResNet-v2 checkpoint" in err
    with pytest.raises(ValueError, match="not a BiT ResNet-v2 checkpoint"):
        weights.describe(path)
    return err


def test_info_refuses_files_that_are_not_bit_resnets(tmp_path, capsys):
    from safetensors.torch import save_file

    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    err = _info_fails(tmp_path / "linear.pt", capsys)
    assert "holds 2 tensors ('weight', 'bias')" in err
    torchvision_like = {"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.ones(8),
                        "layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1),
                        "fc.weight": torch.zeros(10, 8), "fc.bias": torch.zeros(10)}
    save_file(torchvision_like, str(tmp_path / "resnet18.safetensors"))
    err = _info_fails(tmp_path / "resnet18.safetensors", capsys)
    assert "'bn1.weight'" in err and "and 2 more" in err
    import numpy as np

    np.savez(tmp_path / "vit.npz", **{"Transformer/encoder_norm/scale": np.ones(3)})
    assert "'Transformer/encoder_norm/scale'" in _info_fails(tmp_path / "vit.npz", capsys)
    assert main(["weights", "convert", str(tmp_path / "linear.pt"), str(tmp_path / "x.npz")]) == 2
    assert not (tmp_path / "x.npz").exists()


def test_info_still_describes_partial_bit_files(tmp_path, capsys):
    import numpy as np

    path = weights.save_npz(random_model(), tmp_path / "a.npz")
    with np.load(path) as f:
        np.savez(tmp_path / "nohead.npz", **{k: f[k] for k in f.files if "/head/" not in k})
    arch = weights.describe(tmp_path / "nohead.npz")
    assert arch.name == "R14x0.25" and arch.num_classes is None
    assert main(["weights", "info", str(tmp_path / "nohead.npz")]) == 0
    assert "R14x0.25" in capsys.readouterr().out
