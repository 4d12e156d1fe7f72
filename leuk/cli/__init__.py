"""Entry points: ``python -m leuk.cli.<name>`` (and the ``leuk-<name>`` console scripts).

Each module here reads its config or arguments, calls the composition root (``leuk.composition``)
or a library function, and reports. Nothing outside ``leuk.cli`` imports from it.
"""
