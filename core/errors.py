"""Errors that are the user's to fix. The command line prints them as one line; anything else is a
bug and keeps its traceback."""


class HarnessError(Exception):
    """Base of every error whose message tells the user what to fix."""


class DataMissing(HarnessError, FileNotFoundError):
    """A data set is not where it should be; the message says how to get it."""


class Divergence(HarnessError, RuntimeError):
    """Training produced a non-finite loss."""


class CheckpointError(HarnessError, RuntimeError):
    """A checkpoint or model file is unreadable or does not fit the run."""


class DataError(HarnessError, ValueError):
    """A data file is unreadable or inconsistent (truncated, another layout, labels that do not
    match); the message names the file and what is wrong."""
