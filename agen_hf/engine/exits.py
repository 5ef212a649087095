"""The exit statuses every recipe shares, so that a pipeline or a scheduler can tell a finished
run from one to requeue and from one that finished with something missing.

- 0: everything asked for was done.
- :data:`INCOMPLETE_EXIT` (3): the run finished and kept what succeeded (the model, the
  figures, the files written), but something failed: a Hub push, a bad input skipped or
  replaced, a CRF worker that died; the last line says what.
- :data:`REQUEUE_EXIT` (75, sysexits' EX_TEMPFAIL): stopped by SIGTERM or SIGUSR1 after writing
  a checkpoint; the same command with ``--resume_from_checkpoint auto`` continues it.
- anything else: an error (Python's 1, argparse's 2 for a bad flag).
"""

from __future__ import annotations

import logging

INCOMPLETE_EXIT = 3
REQUEUE_EXIT = 75

logger = logging.getLogger("agen_hf")


def skipped_problems(
    count: int, what: str, consequence: str, named_by: str = "the warnings name their files"
) -> list[str]:
    """The problem line for ``count`` bad inputs that ``--skip_bad_samples`` left out (none
    when ``count`` is 0), as :func:`exit_if_incomplete` takes it."""
    return (
        [f"{count} {what} were skipped {consequence} (--skip_bad_samples; {named_by})"]
        if count
        else []
    )


def exit_if_incomplete(problems: list[str]) -> None:
    """Log each problem and exit with :data:`INCOMPLETE_EXIT`, or return when there is none."""
    if not problems:
        return
    for problem in problems:
        logger.error("%s", problem)
    print(f"finished with problems (exit {INCOMPLETE_EXIT}): {'; '.join(problems)}", flush=True)
    raise SystemExit(INCOMPLETE_EXIT)
