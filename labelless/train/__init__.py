"""Training (PixelCLIP, plain CLIP): imports the library; the library never imports this package.

PixelCLIP parts, one file each, mirroring the method:
``augment`` (weak/strong views, masks follow the geometry), ``clustering`` (mask pooling,
Sinkhorn, assignment, merging, loss: pure functions), ``prompts`` (learnable class
prompts through the frozen text tower), ``decoder`` (the small upsampling decoder),
``ema`` (momentum teacher), ``pixelclip`` (``PixelCLIPModel``: one training step).
"""
