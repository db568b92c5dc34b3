"""Near-duplicates between upstream training data and downstream test sets (supplementary B).

Pre-training on hundreds of millions of web images raises the question whether a downstream
*test* image, or a near copy of it, was seen upstream. Supplementary B answers it twice: BiT-L's
upstream data was cleaned of near-duplicates of every downstream test set, and Table 1 there
shows accuracy on the Full test sets and on Dedup test sets (near-duplicates removed), with the
count of duplicates; the differences are small.

The search here has two stages, as large-scale copy detection does:

- **candidates** from two arms, exact k-nearest neighbours each: the model's pre-logits
  (L2-normalised, so a dot product is a cosine) and pixel signatures of the pictures themselves
  (:mod:`bitkit.pixel_match`, searched at several shifts so a moved copy is not missed). Each
  arm keeps ``candidates`` neighbours per test image;
- **verification** of every candidate in pixel space (:func:`bitkit.pixel_match.verify`): detail
  and colours compared at the best shift, one **pixel score** per pair. Neighbours are ranked by
  it, and a pair is a duplicate when it reaches ``threshold`` (``DEFAULT_THRESHOLD``, fixed: the
  score means the same for every model and dataset, so it is not tuned per run), read against
  the test image's other neighbours, as a ratio test reads a match (:meth:`DuplicateReport.flags`):
  a best neighbour far ahead of the runner-up (a copy JPEG left little detail in) needs a little
  less, and a pair no better than the crowd of pictures behind it (shared backgrounds, plain
  frames) counts only when its pictures are near-identical;
- an **exact-hash pass**: identical images (same bytes) are duplicates whatever the scores say.

Why not the pre-logits alone (``verify=False``, the plain cosine search kept for comparison):
a classification representation is built to put two different images of a class together,
so same-class look-alikes crowd out the perturbed copies (``bench/README.md``: on the embedded
world it finds a small fraction of the planted pairs at any usable precision).

Everything streams: test images stay resident, upstream images pass through in blocks of
``block_size`` (from an array, a memory map, an iterator, or a model run over the upstream
dataset), each block is scored in chunks of ``query_block`` test images, and only the running
top-k survives a block. Memory is bounded by the block sizes, never by the upstream size
(:func:`estimate_memory`). The work runs on ``device`` (default: a GPU when there is one, see
:func:`default_device`); the cosine kernel is a matrix product and a top-k
(``backend="torch"``) or FAISS's exact ``IndexFlatIP`` (``backend="faiss"``). With ground truth
(the planted pairs of the embedded world) :meth:`DuplicateReport.sweep` gives precision and
recall over thresholds, as a check of the default, not a way to pick it.

On a GPU, keep TF32 matmuls off (PyTorch's default) for similarities exact to float32.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bitkit
from bitkit import pixel_match
from bitkit.evaluate import Data, Report, dataset_of, example_ids, pre_logits, run_model
from bitkit.fileio import load_npz, save_npz

#: The duplicate threshold on the pixel score (:mod:`bitkit.pixel_match`): aligned at the best
#: shift, the details of the two pictures agree at 0.95 or more in every local window and their
#: colours agree within 2.5% RMS.
#: The paper does not state its threshold; this one is fixed, not tuned on ground truth.
DEFAULT_THRESHOLD = 0.95
#: What a verified search keeps per neighbour besides its pixel score (DuplicateReport fields).
SCORE_PARTS = ("cosine", "detail", "colour_error", "pixel_error")
#: A flagged pair that is not a known one is a confirmed look-alike (a duplicate the data holds
#: by chance, not a detector error) when its aligned, gain-matched pictures differ by at most
#: this RMS (0..1 scale): closer than the embedded world's planted pixel-noise copies are to
#: their originals (uniform noise of amplitude 20/255: 4.5% RMS).
LOOKALIKE_ERROR = 0.05
#: Ratio-test rules of a verified search (DuplicateReport.flags), read from each test image's
#: own neighbours, never from ground truth. A best neighbour at least DISTINCT_MARGIN above the
#: runner-up is *distinct*: no other upstream picture comes close, as for a JPEG copy whose
#: detail the compression blurred; it counts from threshold - DISTINCT_SLACK.
DISTINCT_MARGIN = 0.25
DISTINCT_SLACK = 0.05
#: A best neighbour less than CROWD_MARGIN above the runner-up stands in a *crowd* of similar
#: pictures (one background with different small objects, plain frames): there a score at the
#: threshold is not evidence of a copy, and a neighbour counts only when the aligned pictures
#: are near-identical (pixel error <= LOOKALIKE_ERROR).
CROWD_MARGIN = 0.05
#: Neighbours per test image each retrieval arm hands to verification, per upstream block.
DEFAULT_CANDIDATES = 10
DEFAULT_BLOCK = 16384
DEFAULT_QUERY_BLOCK = 4096
BACKENDS = ("torch", "faiss")

ArrayLike = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------
# Embeddings and hashes
# --------------------------------------------------------------------------------------------


def image_hash(image: torch.Tensor | np.ndarray) -> str:
    """A content hash of one image's pixels (dtype, shape and bytes): equal iff identical."""
    a = np.ascontiguousarray(image.cpu().numpy() if isinstance(image, torch.Tensor) else image)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class Embeddings:
    """L2-normalised pre-logits (N, D) with example ids, image hashes and, for verification,
    the 32 x 32 uint8 thumbnails of :func:`bitkit.pixel_match.thumbnails` (3 KB an image)."""

    vectors: np.ndarray
    ids: np.ndarray
    hashes: np.ndarray | None = None
    thumbnails: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _embed_batches(model: nn.Module, data: Data, *, batch_size: int, num_workers: int,
                   progress: bool, desc: str, thumbnails: bool = True
                   ) -> Iterator[tuple[torch.Tensor, list[str], torch.Tensor | None]]:
    """(unit pre-logits, image hashes, uint8 thumbnails or None) batch by batch, on the model's
    device."""
    for f, _, images in run_model(model, data, pre_logits, batch_size=batch_size,
                                  num_workers=num_workers, progress=progress, desc=desc):
        yield (F.normalize(f.float(), dim=1), [image_hash(img) for img in images],
               pixel_match.thumbnails(images.to(f.device)) if thumbnails else None)


def embed(model: nn.Module, data: Data, *, batch_size: int = 64, num_workers: int = 0,
          thumbnails: bool = True, progress: bool = True) -> Embeddings:
    """Pre-logits of every example, L2-normalised (cosine = dot product), image hashes and
    (``thumbnails=True``) the thumbnails verification compares."""
    vecs, hashes, thumbs = [], [], []
    for v, h, t in _embed_batches(model, data, batch_size=batch_size, num_workers=num_workers,
                                  progress=progress, desc="embed", thumbnails=thumbnails):
        vecs.append(v.cpu().numpy())
        hashes.extend(h)
        if thumbnails:
            thumbs.append(t.cpu().numpy())
    if not vecs:
        raise ValueError("the data is empty: nothing to embed")
    return Embeddings(np.concatenate(vecs), example_ids(data), np.asarray(hashes),
                      np.concatenate(thumbs) if thumbnails else None)


# --------------------------------------------------------------------------------------------
# Blocked exact k-NN
# --------------------------------------------------------------------------------------------


def estimate_memory(n_queries: int, dim: int, k: int = 1, *, block_size: int = DEFAULT_BLOCK,
                    query_block: int = DEFAULT_QUERY_BLOCK) -> dict[str, int]:
    """Bytes held at the peak of a blocked search; independent of the upstream size.

    Resident: the queries (float32) and the running top-k (value + index per query). Per step:
    one upstream block, one (query_block x block_size) similarity tile, and the tile's top-k
    merged with the running one. Measured on CPU (bench/dedup.py) the process peak is this total
    plus a few tens of MiB of BLAS workspace.
    """
    qb = min(query_block, n_queries)
    parts = {
        "queries": 4 * n_queries * dim,
        "running_topk": 12 * n_queries * k,
        "upstream_block": 4 * block_size * dim,
        "similarity_tile": 4 * qb * block_size,
        "merge": 2 * 12 * qb * 2 * k,
    }
    parts["total"] = sum(parts.values())
    return parts


def default_device(queries: torch.Tensor, backend: str = "torch") -> torch.device:
    """Where the search runs when no ``device`` is given: the queries' device if they already
    live on a GPU, else CUDA when there is one (the scoring is matrix products: a GPU is
    10-100x faster), else the CPU. The FAISS backend here is FAISS's CPU index: CPU."""
    if queries.device.type != "cpu" or backend != "torch":
        return queries.device if backend == "torch" else torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class TopK:
    """Running exact top-k by inner product of resident queries over streamed index blocks."""

    def __init__(self, queries: ArrayLike, k: int = 1, *, device: str | torch.device | None = None,
                 query_block: int = DEFAULT_QUERY_BLOCK, backend: str = "torch") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        if backend == "faiss":
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise ImportError("backend='faiss' needs faiss: pip install 'bitkit[faiss]' "
                                  "(or faiss-cpu); backend='torch' needs nothing") from None
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        if query_block < 1:
            raise ValueError(f"query_block must be >= 1; got {query_block}")
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32) if isinstance(queries, np.ndarray)
                            else queries).float()
        if q.dim() != 2:
            raise ValueError(f"queries must be (Q, D); got shape {tuple(q.shape)}")
        self.device = torch.device(device) if device is not None else default_device(q, backend)
        self.queries = q.to(self.device).contiguous()
        self.k, self.query_block, self.backend = k, query_block, backend
        n = len(q)
        self.values = torch.full((n, k), float("-inf"), device=self.device)
        self.indices = torch.full((n, k), -1, dtype=torch.long, device=self.device)
        self.seen = 0

    def add(self, block: ArrayLike) -> None:
        """Score the next ``len(block)`` index vectors (their global ids continue from before)."""
        b = torch.as_tensor(np.asarray(block, dtype=np.float32) if isinstance(block, np.ndarray)
                            else block).float()
        if b.dim() != 2 or b.shape[1] != self.queries.shape[1]:
            raise ValueError(f"index block must be (n, {self.queries.shape[1]}); "
                             f"got shape {tuple(b.shape)}")
        if len(b) == 0:
            return
        kb = min(self.k, len(b))
        if self.backend == "faiss":
            vals, idx = self._faiss_block(b, kb)
        else:
            vals, idx = self._torch_block(b.to(self.device), kb)
        idx += self.seen
        self.seen += len(b)
        merged_v = torch.cat([self.values, vals], dim=1)
        merged_i = torch.cat([self.indices, idx], dim=1)
        top_v, pos = merged_v.topk(self.k, dim=1)
        self.values, self.indices = top_v, merged_i.gather(1, pos)

    def _torch_block(self, b: torch.Tensor, kb: int) -> tuple[torch.Tensor, torch.Tensor]:
        vals, idx = [], []
        bt = b.T  # a view: BLAS reads it transposed, no copy of the block
        for lo in range(0, len(self.queries), self.query_block):
            sim = self.queries[lo:lo + self.query_block] @ bt
            if kb == 1:
                v, i = sim.max(dim=1, keepdim=True)
            else:
                v, i = sim.topk(kb, dim=1)
            del sim  # else the next tile is allocated while this one is alive: 2x the peak
            vals.append(v)
            idx.append(i)
        return torch.cat(vals), torch.cat(idx)

    def _faiss_block(self, b: torch.Tensor, kb: int) -> tuple[torch.Tensor, torch.Tensor]:
        import faiss

        index = faiss.IndexFlatIP(b.shape[1])
        index.add(np.ascontiguousarray(b.cpu().numpy()))
        v, i = index.search(np.ascontiguousarray(self.queries.cpu().numpy()), kb)
        return (torch.from_numpy(v).to(self.device),
                torch.from_numpy(i.astype(np.int64)).to(self.device))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (Q, k) float32, index positions (Q, k) int64; -1 where fewer than k)."""
        return self.values.cpu().numpy(), self.indices.cpu().numpy()


def _blocks(index: ArrayLike | Iterable[ArrayLike], block_size: int) -> Iterator[ArrayLike]:
    if isinstance(index, (np.ndarray, torch.Tensor)):  # includes np.memmap: slices stream from disk
        for lo in range(0, len(index), block_size):
            yield index[lo:lo + block_size]
    else:
        yield from index


def knn(queries: ArrayLike, index: ArrayLike | Iterable[ArrayLike], k: int = 1, *,
        block_size: int = DEFAULT_BLOCK, query_block: int = DEFAULT_QUERY_BLOCK,
        device: str | torch.device | None = None, backend: str = "torch",
        ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of each query among ``index`` (cosine for unit vectors).

    ``index`` is an (N, D) array / tensor / ``np.memmap`` (read ``block_size`` rows at a time)
    or an iterable of (n_i, D) blocks (e.g. embeddings produced on the fly). Returns
    similarities (Q, k) and positions (Q, k), best first.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size}")
    top = TopK(queries, k, device=device, query_block=query_block, backend=backend)
    for block in _blocks(index, block_size):
        top.add(block)
    return top.result()


# --------------------------------------------------------------------------------------------
# Candidates from two arms, verified in pixel space
# --------------------------------------------------------------------------------------------


def _as_tensor(x: ArrayLike, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.as_tensor(x).to(device)
    return t if dtype is None else t.to(dtype)


class VerifiedTopK:
    """Running top-k by pixel score of resident test images over streamed upstream blocks.

    Per block and per test image, the ``candidates`` nearest upstream images by cosine of the
    pre-logits and the ``candidates`` nearest by pixel signature (best of the signature shifts)
    are verified (:func:`bitkit.pixel_match.verify`); the best ``k`` verified neighbours so far
    are kept with their pixel score, its parts and their cosine. Memory: the test images'
    vectors, signatures (at 49 shifts) and prepared pictures (about 70 KB a test image), the
    running top-k, and one block (about 33 KB an upstream image prepared: 540 MB for the
    default 16,384), so a smaller ``block_size`` bounds it on a small machine.
    """

    def __init__(self, vectors: ArrayLike, thumbnails: ArrayLike, k: int = 3, *,
                 candidates: int = DEFAULT_CANDIDATES, device: str | torch.device | None = None,
                 query_block: int = DEFAULT_QUERY_BLOCK) -> None:
        if k < 1 or candidates < 1:
            raise ValueError(f"k and candidates must be >= 1; got k={k}, candidates={candidates}")
        v = torch.as_tensor(vectors).float()
        if v.dim() != 2 or len(v) != len(thumbnails):
            raise ValueError(f"vectors must be (Q, D) with one thumbnail each; got "
                             f"{tuple(v.shape)} and {len(thumbnails)} thumbnails")
        self.device = torch.device(device) if device is not None else default_device(v)
        self.vectors = v.to(self.device).contiguous()
        thumbs = _as_tensor(thumbnails, self.device)
        self.signatures = pixel_match.shifted_signatures(thumbs)          # (Q, S, D_sig)
        self.prepared = pixel_match.prepare(thumbs)
        self.k, self.candidates = k, candidates
        self.query_block = max(1, query_block // len(pixel_match.SIGNATURE_SHIFTS))
        n = len(v)
        self.score = torch.full((n, k), float("-inf"), device=self.device)
        self.indices = torch.full((n, k), -1, dtype=torch.long, device=self.device)
        self.cosine = torch.full((n, k), float("nan"), device=self.device)
        self.detail = torch.full((n, k), float("nan"), device=self.device)
        self.colour_error = torch.full((n, k), float("nan"), device=self.device)
        self.pixel_error = torch.full((n, k), float("nan"), device=self.device)
        self.seen = 0

    def add(self, vectors: ArrayLike, thumbnails: ArrayLike) -> None:
        """Verify and merge the next block (global positions continue from the last block)."""
        b = _as_tensor(vectors, self.device, torch.float32)
        if b.dim() != 2 or b.shape[1] != self.vectors.shape[1] or len(b) != len(thumbnails):
            raise ValueError(f"upstream block must be (n, {self.vectors.shape[1]}) vectors with "
                             f"one thumbnail each; got {tuple(b.shape)} and {len(thumbnails)}")
        if len(b) == 0:
            return
        thumbs = _as_tensor(thumbnails, self.device)
        sig, prep = pixel_match.signatures(thumbs), pixel_match.prepare(thumbs)
        kb = min(self.candidates, len(b))
        for lo in range(0, len(self.vectors), self.query_block):
            self._chunk(lo, min(lo + self.query_block, len(self.vectors)), b, sig, prep, kb)
        self.seen += len(b)

    def _chunk(self, lo: int, hi: int, b: torch.Tensor, sig: torch.Tensor,
               prep: pixel_match.Prepared, kb: int) -> None:
        cos = self.vectors[lo:hi] @ b.T                                        # (q, n)
        q_sig = self.signatures[lo:hi]
        pix = (q_sig.reshape(-1, q_sig.shape[-1]) @ sig.T).view(hi - lo, q_sig.shape[1], -1).amax(1)
        cand = torch.cat([cos.topk(kb, dim=1).indices, pix.topk(kb, dim=1).indices], dim=1)
        del pix
        # the two arms often agree: verify each (test image, upstream image) pair once
        cand, _ = cand.sort(dim=1)
        repeat = torch.zeros_like(cand, dtype=torch.bool)
        repeat[:, 1:] = cand[:, 1:] == cand[:, :-1]
        rows = torch.arange(lo, hi, device=self.device)[:, None].expand_as(cand)
        verdict = pixel_match.verify(self.prepared[rows.reshape(-1)], prep[cand.reshape(-1)])
        score = verdict.score.view_as(cand).masked_fill(repeat, float("-inf"))
        merged = [torch.cat([old[lo:hi], new], dim=1) for old, new in (
            (self.score, score), (self.indices, cand + self.seen),
            (self.cosine, cos.gather(1, cand)), (self.detail, verdict.detail.view_as(cand)),
            (self.colour_error, verdict.colour_error.view_as(cand)),
            (self.pixel_error, verdict.pixel_error.view_as(cand)))]
        top, pos = merged[0].topk(self.k, dim=1)
        self.score[lo:hi] = top
        for held, m in zip((self.indices, self.cosine, self.detail, self.colour_error,
                            self.pixel_error), merged[1:], strict=True):
            held[lo:hi] = m.gather(1, pos)
        unfilled = torch.isinf(self.score[lo:hi])  # fewer than k upstream images so far
        self.indices[lo:hi][unfilled] = -1

    def result(self) -> dict[str, np.ndarray]:
        """score / cosine / detail / colour_error / pixel_error (Q, k) float32 and positions
        (Q, k) int64, best first; -1 and -inf where the upstream side had fewer than k images."""
        return {"score": self.score.cpu().numpy(), "positions": self.indices.cpu().numpy(),
                **{name: getattr(self, name).cpu().numpy() for name in SCORE_PARTS}}


# --------------------------------------------------------------------------------------------
# The duplicate report
# --------------------------------------------------------------------------------------------


def pair_key(pair: Any) -> tuple[str, str]:
    """``(downstream_id, upstream_id)`` of a known pair: a ``(downstream_id, upstream_id)``
    tuple or an object with those attributes (``bitkit.data.world.DuplicatePair``). Ground truth
    given in either form is matched to a report's pairs by this key."""
    if hasattr(pair, "downstream_id") and hasattr(pair, "upstream_id"):
        return str(pair.downstream_id), str(pair.upstream_id)
    d, u = pair
    return str(d), str(u)


@dataclass
class DuplicateReport:
    """Nearest upstream neighbours of every downstream test example, and exact copies.

    ``neighbour_ids`` / ``similarity`` are (Q, k), best first ('' and -inf where the upstream
    side had fewer than k examples). ``similarity`` is the score the threshold applies to:
    the pixel score of a verified search (``meta["score"] == "pixel"``), else the cosine of the
    pre-logits. A verified search also keeps, per neighbour, the ``cosine`` of the pre-logits,
    the two parts of the pixel score (``detail``, ``colour_error``) and the RMS difference of
    the aligned pictures (``pixel_error``, what :meth:`outcomes` reads to tell a look-alike).
    ``exact`` lists (downstream_id, upstream_id) pairs whose images are byte-identical.
    """

    query_ids: np.ndarray
    neighbour_ids: np.ndarray
    similarity: np.ndarray
    exact: list[tuple[str, str]] = field(default_factory=list)
    threshold: float = DEFAULT_THRESHOLD
    meta: dict[str, Any] = field(default_factory=dict)
    cosine: np.ndarray | None = None
    detail: np.ndarray | None = None
    colour_error: np.ndarray | None = None
    pixel_error: np.ndarray | None = None

    @property
    def score_name(self) -> str:
        """"pixel" (verified search) or "cosine" (pre-logits only)."""
        return str(self.meta.get("score", "cosine"))

    def _threshold(self, threshold: float | None) -> float:
        return self.threshold if threshold is None else float(threshold)

    def _parts(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in SCORE_PARTS
                if getattr(self, name) is not None}

    def flags(self, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Which neighbours are duplicates at ``threshold``: (Q, k) booleans, and (Q,) booleans
        marking the test images whose best neighbour counts *only* because it is distinct
        (flagged below the threshold).

        Cosine reports, and verified ones with k = 1 (no runner-up to read): the score reaches
        the threshold. Verified reports read each test image's best score ``s1`` against its
        runner-up ``s2``:

        - ``s1 - s2 >= DISTINCT_MARGIN``: the best neighbour is distinct and counts from
          ``threshold - DISTINCT_SLACK`` (a heavy JPEG copy keeps the shapes but not all the
          detail: 0.89-0.95 on the embedded world, with the runner-up 0.4-0.8);
        - ``s1 - s2 < CROWD_MARGIN``: the test image sits in a crowd of similar pictures, and a
          neighbour there counts only when it also is near-identical (``pixel_error <=
          LOOKALIKE_ERROR``). On the embedded world this is what made most false positives:
          one background with different small objects, fine textures taken for plain frames.

        The margins read the scores of the same search, not the ground truth. They were set on
        the embedded world (``bench/README.md``); with many more upstream images the runner-up
        comes closer, so fewer copies count as distinct and more test images stand in a crowd,
        where a copy that is not near-identical (a heavy JPEG) is then missed: check a new
        domain's flagged and missed pairs in the DuplicateInspector.
        """
        t = self._threshold(threshold)
        s = self.similarity
        flagged = s >= t
        distinct = np.zeros(len(s), dtype=bool)
        if self.score_name != "pixel" or s.shape[1] < 2 or self.pixel_error is None:
            return flagged, distinct
        with np.errstate(invalid="ignore"):  # -inf - -inf: no neighbour at all (nan: no rule)
            gap = s[:, 0] - s[:, 1]  # +inf when the upstream side had a single image
        crowded = gap < CROWD_MARGIN
        near_identical = self.pixel_error <= LOOKALIKE_ERROR  # False where unknown (nan)
        flagged &= ~crowded[:, None] | near_identical
        distinct = (gap >= DISTINCT_MARGIN) & (s[:, 0] >= t - DISTINCT_SLACK) & (s[:, 0] < t)
        flagged[:, 0] |= distinct
        return flagged, distinct

    def pairs(self, threshold: float | None = None) -> list[dict[str, Any]]:
        """Duplicate pairs at ``threshold`` (default: the report's), most similar first.

        A pair is a neighbour :meth:`flags` marks, or an exact copy (flag ``exact``). Rows of a
        verified search also carry ``cosine``, ``detail``, ``colour_error``, ``pixel_error``
        and ``distinct`` (below the threshold, flagged because no other upstream picture comes
        close).
        """
        extra = self._parts()
        found: dict[tuple[str, str], dict[str, Any]] = {}
        flagged, distinct = self.flags(threshold)
        qi, r = np.nonzero(flagged)
        for i, j in zip(qi, r, strict=True):
            found[(str(self.query_ids[i]), str(self.neighbour_ids[i, j]))] = {
                "similarity": float(self.similarity[i, j]), "rank": int(j),
                **{name: float(a[i, j]) for name, a in extra.items()},
                **({"distinct": bool(distinct[i] and j == 0)} if extra else {})}
        exact = set(self.exact)
        rows = [{"downstream_id": d, "upstream_id": u, **v, "exact": (d, u) in exact}
                for (d, u), v in found.items()]
        for d, u in sorted(exact - set(found)):
            rows.append({"downstream_id": d, "upstream_id": u, "similarity": 1.0, "rank": None,
                         **dict.fromkeys(extra), **({"distinct": False} if extra else {}),
                         "exact": True})
        rows.sort(key=lambda x: (-x["similarity"], x["downstream_id"], x["upstream_id"]))
        return rows

    def duplicate_ids(self, threshold: float | None = None) -> set[str]:
        """Downstream test ids with at least one upstream duplicate (removed for "Dedup")."""
        return {p["downstream_id"] for p in self.pairs(threshold)}

    def count(self, threshold: float | None = None) -> int:
        """Supplementary Table 1's "Dups": downstream test images with a duplicate."""
        return len(self.duplicate_ids(threshold))

    def outcomes(self, ground_truth: Iterable[Any], threshold: float | None = None
                 ) -> dict[str, list[dict[str, Any]]]:
        """Every flagged pair and every missed known pair, by kind, at ``threshold``.

        ``found``: known (planted) pairs flagged; ``look_alikes``: flagged pairs that are not
        known but whose aligned pictures differ by at most ``LOOKALIKE_ERROR`` RMS (near-identical
        pictures the data holds by chance, confirmed in pixel space: real duplicates, not
        detector errors); ``false_positives``: the other flagged pairs; ``missed``: known pairs
        not flagged, with their score when the search kept them as a neighbour (else None).
        """
        gt = {pair_key(p): p for p in ground_truth}
        out: dict[str, list[dict[str, Any]]] = {"found": [], "look_alikes": [],
                                                "false_positives": [], "missed": []}
        flagged = set()
        for row in self.pairs(threshold):
            key = (row["downstream_id"], row["upstream_id"])
            flagged.add(key)
            err = row.get("pixel_error")
            kind = ("found" if key in gt else
                    "look_alikes" if row["exact"] or (err is not None and err <= LOOKALIKE_ERROR)
                    else "false_positives")
            out[kind].append(row)
        known_tests = {d for d, _ in gt}
        kept = {(str(q), str(u)): (i, j) for i, q in enumerate(self.query_ids)
                if str(q) in known_tests for j, u in enumerate(self.neighbour_ids[i]) if u}
        parts = self._parts()
        for key, pair in gt.items():
            if key not in flagged:
                i, j = kept.get(key, (None, None))
                row = {"downstream_id": key[0], "upstream_id": key[1], "rank": j,
                       "similarity": None if i is None else float(self.similarity[i, j]),
                       **{name: None if i is None else float(a[i, j])
                          for name, a in parts.items()},
                       "exact": False, "perturbation": getattr(pair, "perturbation", None)}
                out["missed"].append(row)
        return out

    def sweep(self, ground_truth: Iterable[Any], thresholds: Sequence[float] | None = None
              ) -> list[dict[str, Any]]:
        """Pair-level precision and recall against known pairs, one row per threshold.

        ``ground_truth``: (downstream_id, upstream_id) tuples or objects with those attributes
        (``bitkit.data.world.duplicates.DuplicatePair``). A flagged pair is right when it is a
        known pair or a confirmed look-alike (:meth:`outcomes`): ``precision`` counts both,
        ``planted_precision`` the known pairs alone. Precision is None when nothing is flagged.
        Recall is capped by ``k``: a true partner outside the top-k is missed.
        """
        gt = list(ground_truth)
        if thresholds is None:
            thresholds = np.round(np.linspace(0.5, 1.0, 51), 4)
        rows = []
        for t in thresholds:
            o = self.outcomes(gt, t)
            tp, look, fp = len(o["found"]), len(o["look_alikes"]), len(o["false_positives"])
            pred = tp + look + fp
            precision = (tp + look) / pred if pred else None
            recall = tp / len(gt) if gt else None
            f1 = (2 * precision * recall / (precision + recall)
                  if precision and recall else 0.0)
            rows.append({"threshold": float(t), "predicted": pred, "true_positives": tp,
                         "look_alikes": look, "false_positives": fp,
                         "false_negatives": len(o["missed"]), "precision": precision,
                         "planted_precision": tp / pred if pred else None, "recall": recall,
                         "f1": f1})
        return rows

    @staticmethod
    def best_threshold(sweep: Sequence[Mapping[str, Any]]) -> float:
        """The threshold with the highest F1 in a sweep (the highest such threshold on ties)."""
        if not sweep:
            raise ValueError("empty sweep")
        return float(max(sweep, key=lambda r: (r["f1"], r["threshold"]))["threshold"])

    def save(self, path: str | Path) -> Path:
        """Compressed ``.npz`` with JSON metadata (loads without pickle)."""
        info = {"threshold": self.threshold, "exact": self.exact, "meta": self.meta,
                "format": "bitkit.DuplicateReport/2"}
        arrays = {"query_ids": self.query_ids.astype(str),
                  "neighbour_ids": self.neighbour_ids.astype(str), "similarity": self.similarity}
        arrays.update(self._parts())
        return save_npz(Path(path).with_suffix(".npz"), arrays, info)

    @classmethod
    def load(cls, path: str | Path) -> DuplicateReport:
        z, info = load_npz(path, "DuplicateReport", missing="duplicate report")
        return cls(z["query_ids"], z["neighbour_ids"], z["similarity"],
                   [tuple(p) for p in info["exact"]], info["threshold"], info["meta"],
                   *(z.get(name) for name in SCORE_PARTS))


def _ids_at(data: Data, positions: np.ndarray) -> np.ndarray:
    """Ids of the upstream examples at these positions, without listing the whole upstream set."""
    ds = dataset_of(data)
    out = np.full(positions.shape, "", dtype=object)
    ok = positions >= 0
    if callable(getattr(ds, "example_id", None)):
        out[ok] = [str(ds.example_id(int(i))) for i in positions[ok]]
    else:
        ids = example_ids(data)
        out[ok] = ids[positions[ok]]
    return out.astype(str)


def _by_hash(ids: np.ndarray, hashes: np.ndarray) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, h in zip(ids.tolist(), hashes.tolist(), strict=True):
        out.setdefault(h, []).append(str(i))
    return out


def _exact_pairs(wanted: Mapping[str, list[str]], hits: Iterable[tuple[str, str]]
                 ) -> list[tuple[str, str]]:
    """(downstream_id, upstream_id) for upstream images whose hash a test image shares."""
    return sorted({(qid, uid) for h, uid in hits for qid in wanted.get(h, ())})


def _searcher(vectors: ArrayLike, thumbnails: ArrayLike | None, k: int, *, verify: bool,
              candidates: int, device: str | torch.device | None, query_block: int,
              backend: str) -> TopK | VerifiedTopK:
    if not verify:
        return TopK(vectors, k, device=device, query_block=query_block, backend=backend)
    if backend != "torch":
        raise ValueError("verify=True searches with backend='torch' (the pixel arm and the "
                         "verification are torch); use verify=False to compare with FAISS")
    if thumbnails is None:
        raise ValueError("verify=True needs the test images' thumbnails: embed(..., "
                         "thumbnails=True), or verify=False for the cosine search alone")
    return VerifiedTopK(vectors, thumbnails, k, candidates=candidates, device=device,
                        query_block=query_block)


def _report(top: TopK | VerifiedTopK, query_ids: np.ndarray, upstream_ids, exact, threshold: float,
            meta: dict[str, Any]) -> DuplicateReport:
    """The report of a finished search; ``upstream_ids(positions)`` names upstream positions."""
    if isinstance(top, VerifiedTopK):
        r = top.result()
        return DuplicateReport(query_ids.astype(str), upstream_ids(r["positions"]), r["score"],
                               exact, threshold, {**meta, "score": "pixel",
                                                  "candidates": top.candidates},
                               *(r[name] for name in SCORE_PARTS))
    sims, pos = top.result()
    return DuplicateReport(query_ids.astype(str), upstream_ids(pos), sims, exact, threshold,
                           {**meta, "score": "cosine"})


def search(queries: Embeddings, index: Embeddings, k: int = 3, *,
           threshold: float = DEFAULT_THRESHOLD, verify: bool | None = None,
           candidates: int = DEFAULT_CANDIDATES, block_size: int = DEFAULT_BLOCK,
           query_block: int = DEFAULT_QUERY_BLOCK, device: str | torch.device | None = None,
           backend: str = "torch") -> DuplicateReport:
    """Duplicate search between embeddings you already have (e.g. saved ones).

    ``verify`` (default: when both sides carry thumbnails) runs the verified two-arm search of
    :func:`find_duplicates`; otherwise neighbours are ranked by cosine alone.
    """
    if verify is None:
        verify = queries.thumbnails is not None and index.thumbnails is not None
    if verify and index.thumbnails is None:
        raise ValueError("verify=True needs the upstream thumbnails: embed(..., thumbnails=True)")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size}")
    top = _searcher(queries.vectors, queries.thumbnails, k, verify=verify, candidates=candidates,
                    device=device, query_block=query_block, backend=backend)
    for lo in range(0, len(index), block_size):
        block = index.vectors[lo:lo + block_size]
        if verify:
            top.add(block, index.thumbnails[lo:lo + block_size])
        else:
            top.add(block)
    exact: list[tuple[str, str]] = []
    if queries.hashes is not None and index.hashes is not None:
        exact = _exact_pairs(_by_hash(queries.ids, queries.hashes),
                             zip(index.hashes.tolist(), map(str, index.ids.tolist()), strict=True))

    def names(pos: np.ndarray) -> np.ndarray:
        return np.where(pos >= 0, index.ids[np.maximum(pos, 0)], "").astype(str)

    return _report(top, queries.ids, names, exact, threshold,
                   {"k": k, "backend": backend, "index_size": len(index),
                    "bitkit_version": bitkit.__version__})


def find_duplicates(
    model: nn.Module,
    downstream: Data,
    upstream: Data,
    k: int = 3,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    verify: bool = True,
    candidates: int = DEFAULT_CANDIDATES,
    batch_size: int = 64,
    block_size: int = DEFAULT_BLOCK,
    query_block: int = DEFAULT_QUERY_BLOCK,
    backend: str = "torch",
    num_workers: int = 0,
    progress: bool = True,
) -> DuplicateReport:
    """Embed the downstream test set, then stream the upstream training set through the model.

    Upstream embeddings and thumbnails are gathered into blocks of ``block_size`` and searched
    as they arrive (verified in pixel space unless ``verify=False``); only hashes that match a
    downstream image are remembered, so memory does not grow with the upstream size. The search
    runs on the model's device.
    """
    q = embed(model, downstream, batch_size=batch_size, num_workers=num_workers,
              thumbnails=verify, progress=progress)
    top = _searcher(q.vectors, q.thumbnails, k, verify=verify, candidates=candidates,
                    device=next(model.parameters()).device, query_block=query_block,
                    backend=backend)
    wanted = _by_hash(q.ids, q.hashes)
    hits: list[tuple[str, int]] = []  # (hash, upstream position) of byte-identical images
    pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    n_pending = 0
    position = 0

    def flush(final: bool = False) -> int:
        """Search whole blocks of exactly ``block_size`` (the verified search's candidates
        depend on where blocks start, so streaming and :func:`search` cut them alike)."""
        vectors = torch.cat([v for v, _ in pending])
        thumbs = torch.cat([t for _, t in pending]) if verify else None
        pending.clear()
        end = len(vectors) if final else len(vectors) - len(vectors) % block_size
        for lo in range(0, end, block_size):
            if verify:
                top.add(vectors[lo:lo + block_size], thumbs[lo:lo + block_size])
            else:
                top.add(vectors[lo:lo + block_size])
        if end < len(vectors):
            pending.append((vectors[end:], thumbs[end:] if verify else None))
        return len(vectors) - end

    for v, hashes, thumbs in _embed_batches(model, upstream, batch_size=batch_size,
                                            num_workers=num_workers, progress=progress,
                                            desc="upstream", thumbnails=verify):
        for h in hashes:
            if h in wanted:
                hits.append((h, position))
            position += 1
        pending.append((v, thumbs))
        n_pending += len(v)
        if n_pending >= block_size:
            n_pending = flush()
    if pending:
        flush(final=True)
    hit_ids = _ids_at(upstream, np.asarray([p for _, p in hits], dtype=np.int64))
    exact = _exact_pairs(wanted, zip([h for h, _ in hits], hit_ids.tolist(), strict=True))
    return _report(top, q.ids, lambda pos: _ids_at(upstream, pos), exact, threshold,
                   {"k": k, "backend": backend, "index_size": position,
                    "model": getattr(model, "name", type(model).__name__),
                    "bitkit_version": bitkit.__version__})


# --------------------------------------------------------------------------------------------
# Supplementary Table 1
# --------------------------------------------------------------------------------------------


def table1(reports: Mapping[str, Report], duplicates: Mapping[str, DuplicateReport | Iterable[str]],
           threshold: float | None = None) -> list[dict[str, Any]]:
    """Rows shaped like supplementary Table 1: per downstream set, Full / Dedup top-1 and Dups.

    ``reports`` are test-set predictions (``bitkit.evaluate.predict``); ``duplicates`` per set is a
    :class:`DuplicateReport` (at ``threshold``) or the downstream ids to remove. Accuracies are
    fractions in [0, 1] like every accuracy bitkit returns; :func:`format_table1` prints them in
    percent, as the paper does.
    """
    missing = sorted(set(reports) - set(duplicates))
    if missing:
        raise ValueError(f"no duplicates given for {missing}; pass a DuplicateReport or an id list "
                       "for every downstream set")
    rows = []
    for name, report in reports.items():
        dup = duplicates[name]
        ids = dup.duplicate_ids(threshold) if isinstance(dup, DuplicateReport) else set(map(str, dup))
        present = ids & set(report.ids.tolist())
        if len(present) < len(ids):
            raise ValueError(f"{name}: {len(ids) - len(present)} duplicate ids are not in the "
                             "report's test set; were the duplicates found on another split?")
        dedup = report.without_ids(ids)
        rows.append({"dataset": name, "full": report.top1, "dedup": dedup.top1,
                     "dups": len(ids), "test_size": len(report)})
    return rows


def format_table1(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text Full / Dedup / Dups table like the paper's (accuracies in percent)."""
    lines = [f"{'':<16}{'Full':>8}{'Dedup':>8}{'Dups':>7}"]
    lines += [f"{r['dataset']:<16}{100 * r['full']:>8.1f}{100 * r['dedup']:>8.1f}{r['dups']:>7d}"
              for r in rows]
    return "\n".join(lines)
