"""``labelless compare``: methods × presets × benchmarks through ``labelless eval``, one table.

- ``config.py``  the YAML (methods, presets, benchmarks, shared eval options) → :class:`CompareConfig`
- ``cells.py``   one eval argument list per cell, parsed by eval's own parser; resumable runs
- ``table.py``   the table as a pure function of the cell results; markdown, JSON, bar chart
- ``cli.py``     the ``compare`` sub-command (eval's parser is passed in by ``labelless.cli``)
"""
