"""``python -m neuroio``: the ``neuroio-events`` command line."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
