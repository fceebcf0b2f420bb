"""Exceptions that name the problem: config keys, files, samples, steps."""


class HeadattrError(Exception):
    """Base class: every error headattr raises on purpose."""


class ConfigError(HeadattrError, ValueError):
    """A setting is missing, of the wrong type or out of range; the message names the key."""


class DataError(HeadattrError, ValueError):
    """Input data are unusable (missing file, wrong fields, empty target region); the message names the sample."""


class NonFiniteError(HeadattrError, FloatingPointError):
    """A loss or gradient became NaN/inf; the message names the sample, mask probability and step."""


class DumpError(HeadattrError, ValueError):
    """A dump file is truncated, unreadable or written by another configuration."""
