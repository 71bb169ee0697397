"""The ``tether`` console script's entry point: it takes Ctrl-C before anything heavy is imported.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread is, including in the
middle of importing asyncio, and prints a traceback. So the first thing the script does is count
Ctrl-C itself; :func:`tether.cli.main` then takes over the count (see ``cli._Interrupts``).
"""

import signal
import sys
import threading


def main() -> int:
    """Run ``tether`` (the command line of :mod:`tether.cli`); returns the exit code."""
    early: list[int] = []
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: early.append(signum))
    from . import cli

    if early:
        sys.stderr.write("tether: interrupted\n")
        return cli.EXIT_INTERRUPTED
    return cli.main(early_interrupts=early)
