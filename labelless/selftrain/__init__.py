"""Self-training for any model (S-Seg+): pseudo-label a target dataset's images with a
labelless model, then train a standard segmenter on those labels.

``label`` (pseudo-label a split: ``labelless selftrain label``), ``store`` (the pseudo-label
store: layout, writing, reading for training), ``cli``. On the training side of the
project: imports the library; the library never
imports this package.
"""
