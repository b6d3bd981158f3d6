"""Command line: ``labelless compare``.

    labelless compare CONFIG.yaml --out DIR [--only PATTERN ...] [--dry-run] [--data-dir DIR] [--limit N]

Runs every cell (method × preset × benchmark of the YAML, ``labelless.compare.config``)
that is not already done through eval's own parser and command function, one after the
other in this process, then writes ``DIR/compare.md``, ``DIR/compare.json`` and
``DIR/compare.png`` over all cells (those not selected or not done show as not run) and
``DIR/config.yaml`` (the resolved config). Exit status: 0 every selected cell done, 1 some
failed (the table is written all the same), 2 bad input (the YAML, an option eval refuses).

``add_compare_parser(subparsers, eval_parser)`` registers the command; ``labelless.cli``
passes in eval's parser (sub-command modules never import ``labelless.cli``).
"""

from __future__ import annotations

import fnmatch
import functools
from pathlib import Path


def select_cells(cells: list, patterns: list[str] | None) -> list:
    """The cells matching any pattern (shell-style, on the cell name ``method__preset__benchmark``,
    the method, the preset or the benchmark name); SettingError for a pattern matching none."""
    from labelless.errors import SettingError

    if not patterns:
        return list(cells)
    chosen = []
    for pat in patterns:
        hits = [c for c in cells if any(fnmatch.fnmatchcase(n, pat)
                                        for n in (c.name, c.method, c.preset_label, c.benchmark))]
        if not hits:
            raise SettingError(f"--only {pat!r} matches no cell; the cells: {', '.join(c.name for c in cells)}")
        chosen += [c for c in hits if c not in chosen]
    return [c for c in cells if c in chosen]


def _dry_run(cells: list, selected: list, cells_dir: Path) -> int:
    from labelless.compare.cells import cell_status

    for c in cells:
        status = cell_status(c, cells_dir) if c in selected else "not selected"
        print(f"[{status}] {c.name}\n    {c.command(cells_dir / c.name)}")
    todo = sum(c in selected and cell_status(c, cells_dir) != "done" for c in cells)
    print(f"{len(cells)} cell(s), {len(selected)} selected, {todo} to run")
    return 0


def cmd_compare(args, eval_parser) -> int:
    import yaml

    from labelless.compare.cells import plan_cells, run_cells
    from labelless.compare.config import load_config
    from labelless.compare.table import aggregate, write_table
    from labelless.errors import SettingError
    from labelless.fileio import atomic_write_text

    if args.limit is not None and args.limit < 1:
        raise SettingError(f"--limit must be at least 1, got {args.limit}")
    config = load_config(args.config, data_dir=args.data_dir).with_limit(args.limit)
    cells = plan_cells(config, eval_parser)
    selected = select_cells(cells, args.only)
    out = Path(args.out)
    if args.dry_run:
        return _dry_run(cells, selected, out / "cells")
    header = f"# resolved from {config.path} (data_dir joined to the data roots, --limit applied)\n"
    atomic_write_text(out / "config.yaml", header + yaml.safe_dump(config.to_dict(), sort_keys=False))
    results = run_cells(cells, eval_parser, out / "cells", selected=selected, progress=not args.quiet)
    table = aggregate(results, config.title)
    paths = write_table(table, out)
    failed = [r["cell"] for r in results if r["status"] == "failed" and any(r["cell"] == c.name for c in selected)]
    c = table["counts"]
    print(f"{c['done']} cell(s) done, {c['failed']} failed, {c['not run']} not run; table: {paths['markdown']}  "
          f"json: {paths['json']}  chart: {paths['plot']}")
    if failed:
        print(f"failed: {', '.join(failed)} (see their cell.json and eval.log under {out / 'cells'})")
    return 1 if failed else 0


def add_compare_parser(subparsers, eval_parser):
    """Register ``compare``; ``eval_parser`` is the ``labelless eval`` parser the cells are parsed with."""
    p = subparsers.add_parser("compare", help="run methods × presets × benchmarks through eval, write one table")
    p.add_argument("config", help="YAML listing methods, presets, benchmarks and shared eval options")
    p.add_argument("--out", required=True, help="output folder: cells/<method>__<preset>__<benchmark>/, compare.*")
    p.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                   help="run only the cells whose name, method, preset or benchmark matches (shell patterns)")
    p.add_argument("--dry-run", action="store_true", help="list the cells, their status and eval commands; run none")
    p.add_argument("--data-dir", default=None, help="joined to the benchmarks' relative data_root (overrides "
                                                    "the YAML's data_dir)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images of every benchmark")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=functools.partial(cmd_compare, eval_parser=eval_parser))
    return p
