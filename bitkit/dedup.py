"""Near-duplicates between upstream training data and downstream test sets (supplementary B).

Pre-training on hundreds of millions of web images raises the question whether a downstream
*test* image, or a near copy of it, was seen upstream. Supplementary B answers it twice: BiT-L's
upstream data was cleaned of near-duplicates of every downstream test set, and Table 1 there
shows accuracy on the Full test sets and on Dedup test sets (near-duplicates removed), with the
count of duplicates; the differences are small.

The search here:

- **embeddings**: pre-logits of any bitkit model, L2-normalised, so a dot product is a cosine;
- **exact k-nearest neighbours** of every downstream test image among the upstream training
  images, computed block by block: the queries stay resident, upstream embeddings stream through
  in blocks of ``block_size`` (from an array, a memory map, an iterator, or a model run over the
  upstream dataset), and each block is scored in chunks of ``query_block`` queries. Memory is
  bounded by the block sizes, never by the upstream size (:func:`estimate_memory`). The work runs
  on ``device`` (default: a GPU when there is one, see :func:`default_device`); per block, the
  kernel is a matrix product and a top-k (``backend="torch"``) or FAISS's exact
  ``IndexFlatIP`` (``backend="faiss"``);
- an **exact-hash pass**: identical images (same bytes) are duplicates whatever the model says;
- a **threshold** on cosine similarity turns neighbours into duplicate pairs; with ground truth
  (the planted pairs of the embedded world) :meth:`DuplicateReport.sweep` gives precision and
  recall over thresholds to choose it.

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
from bitkit.evaluate import Data, Report, _dataset_of, _features_fn, example_ids, run_model
from bitkit.fileio import load_npz, save_npz

#: A starting threshold on cosine similarity of L2-normalised pre-logits. Choose it for your
#: model with :meth:`DuplicateReport.sweep` against known pairs; the paper does not state one.
DEFAULT_THRESHOLD = 0.95
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
    """L2-normalised pre-logits (N, D) with example ids and image hashes."""

    vectors: np.ndarray
    ids: np.ndarray
    hashes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _embed_batches(model: nn.Module, data: Data, *, batch_size: int, num_workers: int,
                   progress: bool, desc: str) -> Iterator[tuple[torch.Tensor, list[str]]]:
    for f, _, images in run_model(model, data, _features_fn, batch_size=batch_size,
                                  num_workers=num_workers, progress=progress, desc=desc):
        yield F.normalize(f.float(), dim=1), [image_hash(img) for img in images]


def embed(model: nn.Module, data: Data, *, batch_size: int = 64, num_workers: int = 0,
          progress: bool = True) -> Embeddings:
    """Pre-logits of every example, L2-normalised (cosine = dot product), plus image hashes."""
    vecs, hashes = [], []
    for v, h in _embed_batches(model, data, batch_size=batch_size, num_workers=num_workers,
                               progress=progress, desc="embed"):
        vecs.append(v.cpu().numpy())
        hashes.extend(h)
    if not vecs:
        raise ValueError("the data is empty: nothing to embed")
    return Embeddings(np.concatenate(vecs), example_ids(data), np.asarray(hashes))


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
# The duplicate report
# --------------------------------------------------------------------------------------------


def _pair_key(pair: Any) -> tuple[str, str]:
    """(downstream_id, upstream_id) from a tuple or an object with those attributes."""
    if hasattr(pair, "downstream_id") and hasattr(pair, "upstream_id"):
        return str(pair.downstream_id), str(pair.upstream_id)
    d, u = pair
    return str(d), str(u)


@dataclass
class DuplicateReport:
    """Nearest upstream neighbours of every downstream test example, and exact copies.

    ``neighbour_ids`` / ``similarity`` are (Q, k), best first ('' and -inf where the upstream
    side had fewer than k examples); ``exact`` lists (downstream_id, upstream_id) pairs whose
    images are byte-identical.
    """

    query_ids: np.ndarray
    neighbour_ids: np.ndarray
    similarity: np.ndarray
    exact: list[tuple[str, str]] = field(default_factory=list)
    threshold: float = DEFAULT_THRESHOLD
    meta: dict[str, Any] = field(default_factory=dict)

    def _threshold(self, threshold: float | None) -> float:
        return self.threshold if threshold is None else float(threshold)

    def pairs(self, threshold: float | None = None) -> list[dict[str, Any]]:
        """Duplicate pairs at ``threshold`` (default: the report's), most similar first.

        A pair is a neighbour with cosine >= threshold, or an exact copy (flag ``exact``).
        """
        t = self._threshold(threshold)
        sim = {}
        qi, r = np.nonzero(self.similarity >= t)
        for i, j in zip(qi, r, strict=True):
            sim[(str(self.query_ids[i]), str(self.neighbour_ids[i, j]))] = (float(self.similarity[i, j]),
                                                                           int(j))
        exact = set(self.exact)
        rows = [{"downstream_id": d, "upstream_id": u, "similarity": s, "rank": rank,
                 "exact": (d, u) in exact} for (d, u), (s, rank) in sim.items()]
        for d, u in sorted(exact - set(sim)):
            rows.append({"downstream_id": d, "upstream_id": u, "similarity": 1.0, "rank": None,
                         "exact": True})
        rows.sort(key=lambda x: (-x["similarity"], x["downstream_id"], x["upstream_id"]))
        return rows

    def duplicate_ids(self, threshold: float | None = None) -> set[str]:
        """Downstream test ids with at least one upstream duplicate (removed for "Dedup")."""
        return {p["downstream_id"] for p in self.pairs(threshold)}

    def count(self, threshold: float | None = None) -> int:
        """Supplementary Table 1's "Dups": downstream test images with a duplicate."""
        return len(self.duplicate_ids(threshold))

    def sweep(self, ground_truth: Iterable[Any], thresholds: Sequence[float] | None = None
              ) -> list[dict[str, Any]]:
        """Pair-level precision and recall against known pairs, one row per threshold.

        ``ground_truth``: (downstream_id, upstream_id) tuples or objects with those attributes
        (``bitkit.data.world.duplicates.DuplicatePair``). Precision is None when nothing is
        predicted. Note recall is capped by ``k``: a true partner outside the top-k is missed.
        """
        gt = {_pair_key(p) for p in ground_truth}
        if thresholds is None:
            thresholds = np.round(np.linspace(0.5, 1.0, 51), 4)
        rows = []
        for t in thresholds:
            pred = {(p["downstream_id"], p["upstream_id"]) for p in self.pairs(t)}
            tp = len(pred & gt)
            precision = tp / len(pred) if pred else None
            recall = tp / len(gt) if gt else None
            f1 = (2 * precision * recall / (precision + recall)
                  if precision and recall else 0.0)
            rows.append({"threshold": float(t), "predicted": len(pred), "true_positives": tp,
                         "false_positives": len(pred) - tp, "false_negatives": len(gt) - tp,
                         "precision": precision, "recall": recall, "f1": f1})
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
                "format": "bitkit.DuplicateReport/1"}
        return save_npz(Path(path).with_suffix(".npz"),
                        {"query_ids": self.query_ids.astype(str),
                         "neighbour_ids": self.neighbour_ids.astype(str),
                         "similarity": self.similarity}, info)

    @classmethod
    def load(cls, path: str | Path) -> DuplicateReport:
        z, info = load_npz(path, "DuplicateReport", missing="duplicate report")
        return cls(z["query_ids"], z["neighbour_ids"], z["similarity"],
                   [tuple(p) for p in info["exact"]], info["threshold"], info["meta"])


def _ids_at(data: Data, positions: np.ndarray) -> np.ndarray:
    """Ids of the upstream examples at these positions, without listing the whole upstream set."""
    ds = _dataset_of(data)
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


def search(queries: Embeddings, index: Embeddings, k: int = 1, *,
           threshold: float = DEFAULT_THRESHOLD, block_size: int = DEFAULT_BLOCK,
           query_block: int = DEFAULT_QUERY_BLOCK, device: str | torch.device | None = None,
           backend: str = "torch") -> DuplicateReport:
    """Duplicate search between embeddings you already have (e.g. saved ones)."""
    sims, pos = knn(queries.vectors, index.vectors, k, block_size=block_size,
                    query_block=query_block, device=device, backend=backend)
    ids = np.where(pos >= 0, index.ids[np.maximum(pos, 0)], "")
    exact: list[tuple[str, str]] = []
    if queries.hashes is not None and index.hashes is not None:
        wanted = _by_hash(queries.ids, queries.hashes)
        exact = sorted({(qid, str(uid)) for uid, h in zip(index.ids.tolist(), index.hashes.tolist(),
                                                          strict=True) for qid in wanted.get(h, ())})
    return DuplicateReport(queries.ids.astype(str), ids.astype(str), sims, exact, threshold,
                           {"k": k, "backend": backend, "index_size": len(index),
                            "bitkit_version": bitkit.__version__})


def find_duplicates(
    model: nn.Module,
    downstream: Data,
    upstream: Data,
    k: int = 1,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 64,
    block_size: int = DEFAULT_BLOCK,
    query_block: int = DEFAULT_QUERY_BLOCK,
    backend: str = "torch",
    num_workers: int = 0,
    progress: bool = True,
) -> DuplicateReport:
    """Embed the downstream test set, then stream the upstream training set through the model.

    Upstream embeddings are gathered into blocks of ``block_size`` and searched as they arrive;
    only hashes that match a downstream image are remembered, so memory does not grow with the
    upstream size. The search runs on the model's device.
    """
    q = embed(model, downstream, batch_size=batch_size, num_workers=num_workers, progress=progress)
    top = TopK(q.vectors, k, device=next(model.parameters()).device, query_block=query_block,
               backend=backend)
    wanted = _by_hash(q.ids, q.hashes)
    hits: list[tuple[str, int]] = []  # (hash, upstream position) of byte-identical images
    pending: list[torch.Tensor] = []
    n_pending = 0
    position = 0
    for v, hashes in _embed_batches(model, upstream, batch_size=batch_size, num_workers=num_workers,
                                    progress=progress, desc="upstream"):
        for h in hashes:
            if h in wanted:
                hits.append((h, position))
            position += 1
        pending.append(v)
        n_pending += len(v)
        if n_pending >= block_size:
            top.add(torch.cat(pending))
            pending, n_pending = [], 0
    if pending:
        top.add(torch.cat(pending))
    sims, pos = top.result()
    hit_ids = _ids_at(upstream, np.asarray([p for _, p in hits], dtype=np.int64))
    exact = sorted({(qid, str(uid)) for (h, _), uid in zip(hits, hit_ids.tolist(), strict=True)
                    for qid in wanted[h]})
    return DuplicateReport(q.ids.astype(str), _ids_at(upstream, pos), sims, exact, threshold,
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
