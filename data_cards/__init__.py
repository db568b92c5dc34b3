"""The data cards, one YAML file per dataset, installed as the package ``bitkit.data_cards``.

This file only makes the folder a package (pyproject.toml maps it into bitkit), so
``bitkit.data.cards`` can read the cards with ``importlib.resources`` from an editable install
and from a wheel alike. The cards themselves are the ``*.yaml`` files next to it.
"""
