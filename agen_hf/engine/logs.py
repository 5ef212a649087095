"""What every recipe's log shows: INFO on the main process, warnings only on the others."""

from __future__ import annotations

import logging

from .distributed import process_index


def configure_logging() -> None:
    """INFO on the main process (``RANK`` 0, or no launcher), warnings only on the others;
    called first, so that what the Accelerator's set-up chooses (the precision, memory) is
    logged."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if process_index() == 0 else logging.WARNING,
    )
