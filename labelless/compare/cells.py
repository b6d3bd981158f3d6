"""The cells of a comparison: one ``labelless eval`` run each, resumable.

A cell is (method, preset, benchmark). Its eval arguments are built from the config's
options (defaults < benchmark < method, then ``--preset``) and parsed by **eval's own
parser** (passed in by ``labelless.cli``), and the cell runs eval's command function on
that namespace: there is no second implementation of eval, and an option or preset added
to eval works here unchanged.

Layout under ``DIR/cells/``: ``<method>__<preset>__<benchmark>/`` holds what eval writes
(``results.json``, ``results.md``, ``per_class_iou.png``), ``eval.log`` (eval's stdout and
stderr) and ``cell.json`` (status, the eval command, the settings, the error of a failed
cell). Choices made here:

- **settings** = the parsed eval namespace but ``out`` and ``workers`` (where a cell is
  written and how many loader processes decode its images change no result): a cell whose
  ``cell.json`` says done with settings equal to the requested ones, beside its
  ``results.json``, is skipped; any other is run again. An option eval did not have when
  the cell ran (absent from its record) counts as equal while it is requested at eval's
  default, so a new eval option does not re-run every cell (a changed default does; an
  option eval no longer has is ignored);
- **atomic**: a cell runs in ``.<cell>.partial/`` which replaces the cell's folder only when
  eval returned (done or failed): a crash or an interrupt never leaves a ``results.json``
  that another cell's settings or a half run made; a failed cell's folder has none either;
- **failures**: any exception of eval (bad input or a bug; its traceback goes to
  ``eval.log``) or an exit status other than 0 marks the cell failed, and the next cells
  run; an interrupt (Ctrl-C) stops the comparison.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from labelless.compare.config import CompareConfig
from labelless.errors import ConfigError, LabellessError, describe, one_line
from labelless.fileio import atomic_write_text

RUNTIME_ONLY = ("out", "workers", "func", "command")  # not settings: they change no result


@dataclass(frozen=True)
class Cell:
    method: str
    preset: str | None
    benchmark: str
    argv: tuple[str, ...]  # eval's arguments, without --out
    settings: dict = field(default_factory=dict, compare=False)  # JSON values of the parsed namespace
    defaults: dict = field(default_factory=dict, compare=False)  # eval's defaults of the same keys

    @property
    def preset_label(self) -> str:
        return self.preset or "none"

    @property
    def name(self) -> str:
        return f"{self.method}__{self.preset_label}__{self.benchmark}"

    def command(self, out) -> str:
        """The same run as a ``labelless eval`` command line."""
        return shlex.join(["labelless", "eval", *self.argv, "--out", str(out)])


def eval_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``dest → action`` of every option of eval's parser (``--help`` aside)."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def _switch(action: argparse.Action, value: bool) -> list[str]:
    """The argument that sets switch ``action`` to ``value`` (none where that is its default)."""
    if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x: both spelled out
        no = [o for o in action.option_strings if o.startswith("--no-")]
        yes = [o for o in action.option_strings if o not in no]
        return [max(yes if value else no, key=len)]
    return [_flag(action)] if value == bool(action.const) else []


def option_argv(options: dict, actions: dict[str, argparse.Action], where: str) -> list[str]:
    """Command-line arguments of ``{dest: value}``. None: the option is left out (eval's
    default); a switch (``--save-predictions``) takes true / false; a list goes to an option
    of several values. ConfigError naming ``where`` for an option eval does not have."""
    argv: list[str] = []
    for dest, value in options.items():
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(set(actions) - {"out"}))
            raise ConfigError(f"{where}: unknown key '{dest}': not an option of labelless eval "
                              f"(eval's options: {known})")
        if value is None:
            continue
        flag = _flag(action)
        if action.nargs == 0:  # a switch: store_true / store_false / --x/--no-x
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: '{dest}' is a switch ({flag}): give true or false, got {value!r}")
            argv += _switch(action, value)
            continue
        if isinstance(value, list):
            if action.nargs in (None, "?"):
                raise ConfigError(f"{where}: '{dest}' ({flag}) takes one value, got the list {value!r}")
            argv += [flag, *map(str, value)]
        else:
            argv.append(f"{flag}={value}")  # "=": a value may start with "-"
    return argv


def parse_eval(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    """Eval's namespace of ``argv``; a value eval refuses raises ConfigError naming ``where``
    (instead of argparse's usage message and exit). A shallow copy carries the changed
    ``error``: ``parser`` itself is left as it is."""
    parser = copy.copy(parser)

    def fail(message: str):
        raise ConfigError(f"{where}: {message}")

    parser.error = fail
    return parser.parse_args(argv)


def _settings(values: dict) -> dict:
    values = {k: v for k, v in sorted(values.items()) if k not in RUNTIME_ONLY}
    return json.loads(json.dumps(values, default=str))


def _same_value(a, b) -> bool:
    """Equal, or two spellings of one existing file or folder (``../shared/data/camvid`` from the
    repository root and ``/work/main/../shared/data/camvid``: a data root given relative or
    absolute does not re-run a cell)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:  # either is not an existing path
        return False


def same_settings(recorded: dict, requested: dict, defaults: dict) -> bool:
    """Whether a cell run with ``recorded`` settings is the requested one (module docstring):
    every requested key equal (paths: the same file or folder), a key missing from the record
    only at eval's default."""
    return all(_same_value(recorded[k], v) if k in recorded else v == defaults.get(k) for k, v in requested.items())


def _merged(config: CompareConfig, method, bench) -> dict:
    both = sorted(set(method.options) & set(bench.options))
    if both:
        raise ConfigError(f"{config.path}: method {method.name!r} and benchmark {bench.name!r} both set "
                          f"{', '.join(both)}: set it in one of them (or in defaults)")
    return {**config.defaults, **bench.options, **method.options}


def plan_cells(config: CompareConfig, parser: argparse.ArgumentParser) -> list[Cell]:
    """Every cell (methods × presets × benchmarks, in that order), its arguments parsed by
    eval's ``parser``, before anything runs: a bad key or value fails here, naming the file
    and the method, benchmark or cell."""
    actions = eval_options(parser)
    option_argv(config.defaults, actions, f"{config.path}: defaults")
    for kind, entries in (("benchmarks", config.benchmarks), ("methods", config.methods)):
        for e in entries:
            option_argv(e.options, actions, f"{config.path}: {kind} {e.name!r}")
    if any(config.presets) and "preset" not in actions:
        raise ConfigError(f"{config.path}: presets {[p for p in config.presets if p]} need eval's --preset, "
                          "which this labelless eval does not have: list only null")
    defaults = _settings({dest: a.default for dest, a in actions.items()})
    cells = []
    for m in config.methods:
        for preset in config.presets:
            for b in config.benchmarks:
                argv = option_argv(_merged(config, m, b), actions, str(config.path))
                argv += ["--preset", preset] if preset else []
                name = Cell(m.name, preset, b.name, ()).name
                ns = parse_eval(parser, [*argv, "--out", "."], f"{config.path}: cell {name}")
                cells.append(Cell(m.name, preset, b.name, tuple(argv), _settings(vars(ns)), defaults))
    return cells


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cell_status(cell: Cell, cells_dir) -> str:
    """``done`` (results there, same settings), ``changed`` (results of other settings),
    ``failed`` (the last run with these settings failed) or ``todo``."""
    d = Path(cells_dir) / cell.name
    record = _read_json(d / "cell.json") or {}
    same = same_settings(record.get("settings") or {}, cell.settings, cell.defaults)
    if (d / "results.json").is_file():
        return "done" if same and record.get("status") == "done" else "changed"
    return "failed" if same and record.get("status") == "failed" else "todo"


def _call_eval(parser, cell: Cell, work: Path) -> tuple[str, str | None]:
    """Eval's command function on the cell's namespace, output in ``work``; (status, error)."""
    ns = parse_eval(parser, [*cell.argv, "--out", str(work)], cell.name)
    with open(work / "eval.log", "w", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            code = ns.func(ns)
        except LabellessError as e:
            print(f"error: {e}")
            return "failed", one_line(str(e))
        except Exception as e:  # a bug of eval: recorded with its traceback, the next cells run
            traceback.print_exc()
            return "failed", describe(e)
    if code != 0:
        return "failed", f"labelless eval exited with status {code} (e.g. no image could be scored)"
    if not (work / "results.json").is_file():
        return "failed", "labelless eval wrote no results.json"
    return "done", None


def run_cell(cell: Cell, parser, cells_dir) -> dict:
    """Run one cell (atomically, module docstring) and return its ``cell.json`` record."""
    cells_dir = Path(cells_dir)
    work = cells_dir / f".{cell.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.time()
    status, error = _call_eval(parser, cell, work)
    if status == "failed":
        (work / "results.json").unlink(missing_ok=True)
    record = {"cell": cell.name, "method": cell.method, "preset": cell.preset, "benchmark": cell.benchmark,
              "status": status, "error": error, "seconds": round(time.time() - start, 2),
              "command": cell.command(cells_dir / cell.name), "settings": cell.settings}
    atomic_write_text(work / "cell.json", json.dumps(record, indent=2) + "\n")
    target = cells_dir / cell.name
    shutil.rmtree(target, ignore_errors=True)
    os.replace(work, target)
    return record


def load_cell(cell: Cell, cells_dir) -> dict:
    """A cell's result for the table: ``{cell, method, preset, benchmark, status, error,
    settings, results}``; ``status`` ``not run`` (and ``results`` None) unless ``done`` or
    ``failed`` with the requested settings."""
    d = Path(cells_dir) / cell.name
    status = cell_status(cell, cells_dir)
    record = _read_json(d / "cell.json") or {}
    base = {"cell": cell.name, "method": cell.method, "preset": cell.preset_label, "benchmark": cell.benchmark,
            "settings": cell.settings, "results": None, "error": None}
    if status == "done":
        return {**base, "status": "done", "results": _read_json(d / "results.json")}
    if status == "failed":
        return {**base, "status": "failed", "error": record.get("error")}
    return {**base, "status": "not run"}


def run_cells(cells: list[Cell], parser, cells_dir, selected=None, progress: bool = True) -> list[dict]:
    """Run the ``selected`` cells (default: all) that are not done, with a progress bar over
    cells; return every cell's result (:func:`load_cell`), in ``cells`` order."""
    from tqdm import tqdm

    chosen = [c for c in cells if selected is None or c in selected]
    todo = [c for c in chosen if cell_status(c, cells_dir) != "done"]
    if progress and len(chosen) > len(todo):
        tqdm.write(f"compare: {len(chosen) - len(todo)} of {len(chosen)} cell(s) already done, skipped")
    with tqdm(todo, desc="compare", unit="cell", disable=not progress) as bar:
        for cell in bar:
            bar.set_postfix_str(cell.name)
            record = run_cell(cell, parser, cells_dir)
            if record["status"] == "failed":
                tqdm.write(f"compare: {cell.name} failed: {record['error']} (log: {cells_dir}/{cell.name}/eval.log)")
    return [load_cell(c, cells_dir) for c in cells]
