"""Counters of one pytest session of the property suite (read by conftest for the fuzz figures)."""

runs = 0
seconds = 0.0  # spent in the property tests' calls (not in the rest of a whole-suite session)


def count(runs_made: int = 1) -> None:
    global runs
    runs += runs_made
