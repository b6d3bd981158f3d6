"""Plain CLIP contrastive training: ``config`` (the run config), ``loop`` (``train_clip``);
pairs from ``labelless.data.pairs``."""
