"""The exception for bad input data (files, fields, sizes); its message names what is wrong and where."""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


class TooLargeError(DataError):
    """Input over a size limit (pixels, bytes); the message names the limit and how to raise it."""
