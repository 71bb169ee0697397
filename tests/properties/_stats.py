"""Counters of one pytest session of the property suite (read by conftest for the fuzz figures)."""

runs = 0
started = 0.0


def count(runs_made: int = 1) -> None:
    global runs
    runs += runs_made
