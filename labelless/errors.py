"""Error classes for bad input: a file, a setting or a dataset the user gave that
cannot be used. Their messages name the file or the setting and say what to do."""

from __future__ import annotations


class LabellessError(Exception):
    """Bad input (image, label, checkpoint, config, dataset layout); the message says which."""


class WeightsError(LabellessError, RuntimeError):
    """Weights could not be found, fetched or loaded; the message says how to supply them."""
