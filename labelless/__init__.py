"""labelless: open-vocabulary semantic segmentation trained without semantic labels.

Importing the package is light: submodules (models, vocab, data, segment, evaluate)
are imported where they are used. ``labelless.load`` (``labelless/api.py``) is imported
on first use.
"""

__version__ = "0.1.0"

_API = ("load", "Segmentation", "SegmentationModel")


def __getattr__(name: str):
    """``labelless.load`` and the API's classes, imported from ``labelless.api`` on first use."""
    if name in _API:
        from labelless import api

        return getattr(api, name)
    raise AttributeError(f"module 'labelless' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
