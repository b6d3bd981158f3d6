"""Training: imports the library; the library never imports this package.

Shared by every method: ``run`` (the run scaffold), ``config`` (``RunConfig`` and flat YAML
parsing), ``checkpoint``, ``common`` (seeded data order, schedule,
precision), ``losses`` (InfoNCE with gathers and exact accumulation; Dice and focal mask
losses), ``matching`` (Hungarian), ``ema``. One package per method: ``clip``, ``pixelclip``,
``sseg``. Process groups (torchrun) are set up by ``labelless.distributed``, which eval and
mask generation use too.
"""
