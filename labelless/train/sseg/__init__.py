"""S-Seg training: ``config`` (the run config), ``criterion`` (Hungarian-matched Dice +
focal on the pseudo-masks: pure functions), ``data`` (image-text pairs + pseudo-masks),
``loop`` (``train_sseg``), ``show`` (pictures of predicted and pseudo-masks). The model is
``labelless.models.sseg``."""
