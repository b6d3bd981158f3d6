"""Error classes for bad input: a file, a setting or a dataset the user gave that
cannot be used. Their messages name the file or the setting and say what to do.

The policy (``labelless.cli.main``): a :class:`LabellessError` is the user's to fix, so
the command prints its message on one line and exits with status 2; any other
exception is a bug (or an environment problem) and shows its traceback. Every class
here also derives from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ``ImportError``, ``RuntimeError``), so ``except ValueError``
keeps working in library code.
"""

from __future__ import annotations

import importlib
import re


class LabellessError(Exception):
    """Bad input (image, label, checkpoint, config, dataset layout); the message says which."""


class SettingError(LabellessError, ValueError):
    """A setting or argument that cannot be used (unknown model, mode, protocol, empty vocabulary…)."""


class ConfigError(LabellessError, ValueError):
    """A run config file, key or value that cannot be used; the message names the key."""


class ImageError(LabellessError, ValueError):
    """An image file could not be read; the message names the file."""


class DatasetError(LabellessError, ValueError):
    """A dataset is missing, has no supported layout, or holds a bad file."""


class MaskStoreError(LabellessError, ValueError):
    """A mask store or record is missing, corrupt or inconsistent; the message names the file."""


class WeightsError(LabellessError, RuntimeError):
    """Weights could not be found, fetched or loaded; the message says how to supply them."""


class CheckpointError(LabellessError, ValueError):
    """A training checkpoint or run folder cannot be used; the message names the file."""


class MissingFileError(LabellessError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MissingExtraError(LabellessError, ImportError):
    """An optional dependency is not installed; the message says which ``pip install`` fixes it."""


def describe(error: BaseException) -> str:
    """``"TypeName: first line of the message"``: the cause of a failed read, short enough
    for a one-line error (torch's unpickling errors run to several paragraphs)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch colours some of its messages
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def one_line(message: str) -> str:
    """A message on one line (its lines joined with " | ")."""
    return " | ".join(ln.strip() for ln in str(message).splitlines() if ln.strip())


# the optional extras of pyproject.toml, by the module that needs them
EXTRAS = {
    "transformers": "masks", "pycocotools": "masks", "skimage": "masks", "scipy": "masks",
    "webdataset": "masks", "segment_anything": "masks", "tensorboard": "train", "sklearn": "train",
    "gradio": "demo", "playwright": "test",
}


def require(module: str, what: str = "this"):
    """Import ``module`` or raise :class:`MissingExtraError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        fix = f"pip install 'labelless[{extra}]'" if extra else f"pip install {top}"
        raise MissingExtraError(f"{what} needs {top}, which is not installed: {fix}") from e
