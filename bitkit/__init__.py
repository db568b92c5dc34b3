"""bitkit: a workbench for learning, reproducing and extending Big Transfer (BiT).

The library has no UI imports; the interactive panels live in the separate ``widgets`` package.
"""

__version__ = "0.1.0"
