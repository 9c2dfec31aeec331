"""The one base class of the errors a user must fix (a config, the weights, the device, a converter...).

A model that fails with an NpuprecError shows its message alone: it says what is wrong and where.
Anything else is a bug in the suite and shows its traceback. Subclasses keep the built-in base that
callers catch (e.g. WeightsNotFoundError is still a FileNotFoundError).
"""
from __future__ import annotations

import traceback


class NpuprecError(Exception):
    """An error the user must fix; its message is the whole story."""


def describe(error: BaseException) -> str:
    """The message alone for an NpuprecError; the traceback too for anything else (a bug)."""
    if isinstance(error, NpuprecError):
        return str(error)
    return "".join(traceback.format_exception(error)).rstrip()
