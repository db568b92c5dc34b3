"""Planted label errors in a downstream test split, with ground truth (supplementary C).

Supplementary C and Figure 7 (left) of the paper find that many of a strong model's remaining
"mistakes" are label noise: human raters agree with the model, not the label. A real test set
cannot say which labels are wrong; the embedded world can, because it plants them. A downstream
card with ``test_label_noise: r`` in its ``source.params`` (``world-objects-noisy``) replaces
the label of about a fraction ``r`` of its *test* examples by another class, drawn uniformly
from the others (the train split keeps exact labels):

- whether test example ``i`` is relabelled, and as which class, is a pure function of (world
  seed, card, index), from a stream of its own (``"<card>/<split>/label-noise"``): the same in
  any batch or subset, and the picture is unchanged (it still shows the true class);
- :func:`label_errors` lists the ground truth, one :class:`LabelError` (example id, index,
  true label, given label) per relabelled example, as :func:`~bitkit.data.world.pairs` lists
  the planted near-duplicates.

Uniform replacement is the simplest noise and the easiest to spot: real annotators more often
confuse look-alike classes, which a model finds harder to flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bitkit.data.world import rng
from bitkit.data.world.common import WorldDataset

#: ``test_label_noise`` must stay below this: with half the labels wrong, "the label" means
#: little, and a uniform replacement could then outnumber the true class.
MAX_RATE = 0.5


@dataclass(frozen=True)
class LabelError:
    """Ground truth for one planted label error: ``example_id`` as the dataset gives it
    (``world-objects-noisy:test:17``), its ``index`` in the split, the class the picture shows
    (``true_label``) and the class the dataset says (``given_label``)."""

    example_id: str
    index: int
    true_label: int
    given_label: int


def check_rate(rate: float) -> float:
    if not 0.0 <= float(rate) < MAX_RATE:
        raise ValueError(f"test_label_noise must be in [0, {MAX_RATE}); got {rate}")
    return float(rate)


def relabel(seed: int, stream: str, indices: np.ndarray, labels: np.ndarray, rate: float,
            num_classes: int) -> np.ndarray:
    """``labels`` with the planted errors of these indices applied (a new array)."""
    if rate <= 0 or len(indices) == 0:
        return labels
    u = rng.uniform(rng.keys(seed, f"{stream}/label-noise", np.asarray(indices)), 2)
    wrong = u[:, 0] < rate
    shift = 1 + np.minimum((u[:, 1] * (num_classes - 1)).astype(np.int64), num_classes - 2)
    return np.where(wrong, (labels + shift) % num_classes, labels)


def _plants_label_errors(dataset: Any) -> bool:
    """A world split that can plant label errors: a downstream task (``downstream.Task``, known
    here by its ``label_errors`` method: ``downstream`` imports this module, not the reverse)."""
    return isinstance(dataset, WorldDataset) and callable(getattr(dataset, "label_errors", None))


def _world_split(dataset: Any) -> tuple[Any, np.ndarray] | None:
    """(world task, its indices) behind a dataset or a chain of ``SubsetDataset``s; None for
    anything else (real data, a joined set, the upstream world)."""
    positions = None
    while not _plants_label_errors(dataset):
        parent, idx = getattr(dataset, "parent", None), getattr(dataset, "indices", None)
        if parent is None or idx is None:
            return None
        idx = np.asarray(idx, dtype=np.int64)
        positions = idx if positions is None else idx[positions]
        dataset = parent
    if positions is None:
        positions = np.arange(len(dataset))
    return dataset, positions


def label_errors(source: Any = "world-objects-noisy", *, test_size: int | None = None,
                 seed: int | None = None) -> list[LabelError] | None:
    """The planted label errors, sorted by index.

    ``source`` is a downstream world card name (its evaluation split, the first ``test_size``
    examples; ``seed``: the world seed, default the card's), or a loaded dataset (a world split,
    or a ``SubsetDataset`` of one: the errors among its examples). A world task without planted
    noise gives ``[]`` (its labels are exact); a dataset whose label errors nobody knows (real
    data) gives ``None``, so ``ErrorBrowser(..., label_errors=label_errors(test_set))`` scores
    the review only where there is something to score it against.
    """
    if isinstance(source, str):
        from bitkit.data.cards import get_card
        from bitkit.data.world.registry import build

        card = get_card(source)
        if card.source.kind != "embedded":
            raise ValueError(f"{source} is not generated: nobody knows its label errors, so "
                             "there is no ground truth to list (pass the loaded dataset to get "
                             "None, or use a world card such as world-objects-noisy)")
        options = {} if seed is None else {"seed": seed}
        if test_size is not None:
            options["size"] = test_size
        source = build(card, card.eval_split, **options)
        if _world_split(source) is None:
            raise ValueError(f"{card.name} is not a downstream task: label_errors lists the "
                             "planted errors of a task's test split (upstream noise: "
                             "UpstreamWorld.clean_labels)")
    elif test_size is not None or seed is not None:
        raise ValueError("test_size= and seed= choose a card's test split; a loaded dataset "
                         "already has its size and seed")
    found = _world_split(source)
    if found is None:
        return None
    task, positions = found
    return task.label_errors(positions)
