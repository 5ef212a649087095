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

from .distributed import wait_for_main

INCOMPLETE_EXIT = 3
REQUEUE_EXIT = 75

logger = logging.getLogger("agen_hf")


def skipped_problems(
    count: int, what: str, consequence: str, named_by: str = "the warnings name their files"
) -> list[str]:
    """The problem line for ``count`` bad inputs that ``--skip_bad_samples`` left out (none
    when ``count`` is 0), as :func:`end_run` takes it."""
    return (
        [f"{count} {what} were skipped {consequence} (--skip_bad_samples; {named_by})"]
        if count
        else []
    )


def crf_problems(workers_replaced: int) -> list[str]:
    """The problem line for CRF workers that died or got stuck and were replaced
    ``workers_replaced`` times (summed over the processes) though every result came back."""
    if not workers_replaced:
        return []
    return [
        f"CRF workers died or got stuck and were replaced {workers_replaced} time(s); "
        "every image was refined (the warnings say which were resubmitted)"
    ]


def end_run(accelerator, problems: list[str]) -> None:
    """The last step of every recipe, on every process with the same ``problems`` (each
    process's problems gathered first): the main process logs each problem and the line
    ``finished with problems (exit 3): ...``, every process waits for the others (the main
    process's last writes included), ends its trackers and its process group
    (``accelerator.end_training``), and exits with :data:`INCOMPLETE_EXIT`, or returns when
    there is no problem. Every worker's status is 3, not only the main one's: a
    scheduler that reads any worker's status learns the same thing."""
    if problems and accelerator.is_main_process:
        for problem in problems:
            logger.error("%s", problem)
        print(f"finished with problems (exit {INCOMPLETE_EXIT}): {'; '.join(problems)}", flush=True)
    wait_for_main("the end of the run (the main process's last writes)")
    # the trackers' end, and the process group's: one left alive can abort the interpreter's
    # exit ("terminate called without an active exception")
    accelerator.end_training()
    if problems:
        raise SystemExit(INCOMPLETE_EXIT)
