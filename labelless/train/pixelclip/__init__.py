"""PixelCLIP training, one file per part of the method: ``config`` (the run config),
``augment`` (weak/strong views, masks follow the geometry), ``clustering`` (Sinkhorn,
assignment, merging, loss: pure functions), ``prompts`` (learnable class prompts through the
frozen text tower), ``decoder`` (the small upsampling decoder), ``model``
(``PixelCLIPModel``: one training step), ``data`` (sources and loader), ``build`` (the model
of a config / checkpoint / official file), ``loop`` (``train_pixelclip``), ``show_prompts``."""
