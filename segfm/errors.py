"""Errors that segfm reports to the user as one line, without a traceback."""


class SegfmError(Exception):
    """Base class of errors whose message alone tells the user what is wrong and what to do."""


class DataError(SegfmError, ValueError):
    """A file or folder of a dataset is missing, unreadable or inconsistent."""


class CheckpointError(SegfmError, ValueError):
    """A checkpoint cannot be read, or does not match the network it is loaded into."""


class ConfigError(SegfmError, ValueError):
    """A configuration value or command-line argument is invalid."""
