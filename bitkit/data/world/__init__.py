"""The embedded world: procedural, deterministic data for every notebook, no network, no disk.

``bitkit.data.load("world-upstream", "train", size=1_000_000)`` and friends build these; the
cards in ``data_cards/world-*.yaml`` describe each one. See ``upstream``, ``downstream``,
``duplicates``, ``noise`` (planted test label errors) and ``objects`` for the design.
"""

from __future__ import annotations

# Importing a generator module registers its classes in ``registry`` (``build`` finds them by a
# card's ``source.generator``): downstream, objects and upstream are all imported here.
from bitkit.data.world import downstream  # noqa: F401
from bitkit.data.world.common import WorldDataset
from bitkit.data.world.duplicates import DuplicatePair, duplicate_of, pairs
from bitkit.data.world.noise import LabelError, label_errors
from bitkit.data.world.objects import Background, ForegroundObjects, backgrounds
from bitkit.data.world.registry import GENERATORS, build
from bitkit.data.world.upstream import UpstreamWorld

#: Bumped whenever a change draws different images for the same (seed, index); pre-training
#: caches include it so a model trained on an older world is never silently reused.
#: 2: upstream close-ups and flocks (``upstream`` module docstring).
#: 3: ``world-fine`` classes are look-alike upstream shapes, not stars with 4-7 points.
#: 4: multi-label upstream images hold 1.26 labelled objects on average (JFT's), not 2.0.
#: 5: near-duplicates planted in world-fine, world-texture and world-count too (``duplicates``).
#: (Planted test label errors, ``noise``, live on their own card, world-objects-noisy, and
#: change no existing card's data: still 5.)
VERSION = 5


__all__ = ["Background", "DuplicatePair", "ForegroundObjects", "GENERATORS", "LabelError",
           "UpstreamWorld", "VERSION", "WorldDataset", "backgrounds", "build", "duplicate_of",
           "label_errors", "pairs"]
