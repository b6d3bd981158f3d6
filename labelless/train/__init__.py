"""Training: imports the library; the library never imports this package.

Shared by every method: ``run`` (the run scaffold), ``config`` (``RunConfig`` and flat YAML
parsing), ``checkpoint``, ``distributed``, ``common`` (seeded data order, schedule,
precision), ``losses`` (InfoNCE with gathers and exact accumulation; Dice and focal mask
losses), ``matching`` (Hungarian), ``ema``. One package per method: ``clip``, ``pixelclip``,
``sseg``.
"""
