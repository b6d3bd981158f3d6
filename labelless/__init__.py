"""labelless: open-vocabulary semantic segmentation trained without semantic labels.

Importing the package is light: submodules (models, vocab, data, segment, evaluate)
are imported where they are used.
"""

__version__ = "0.1.0"
