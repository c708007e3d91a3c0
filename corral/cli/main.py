"""Entry point of the ``corral`` command.

``corral run`` is the hot path: it must start a sandbox fast, so it is dispatched before the
typer command tree is imported (typer, rich and pydantic are slow to import). Every other
command goes through the typer app.

When ``main`` is the process's own entry (``argv`` not given: the ``corral`` script, ``python -m
corral``) and ``corral run`` returned, the process ends with ``os._exit`` once what a normal
exit does that anyone can observe is done: non-daemon threads joined, ``atexit`` handlers run
(weakref finalizers included), stdout and stderr flushed. What it skips is the interpreter
freeing every object one by one. Called with ``argv`` (tests,
embedding), ``main`` returns as usual; an exception, or a flush that fails, leaves the exit to
the interpreter as before.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "run":  # its own parser, its own --help
        from corral.cli.run import run_main

        code = run_main(args[1:])
        if argv is None:
            _exit_now(code)
        return code
    from corral.cli.app import main as app_main

    return app_main(args)


def _exit_now(code: int) -> None:
    """End the process with ``code`` now (see the module doc); returns only if stdio will not
    flush, so that the interpreter reports that as it always did."""
    import atexit
    import os
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # no public equivalent; what sys.exit would run at this point
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        return
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
