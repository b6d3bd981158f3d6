"""The ``labelless compare`` YAML → :class:`CompareConfig`.

    title: CamVid val, tiny random CLIPs      # optional: heads compare.md and the chart
    data_dir: ../shared/data                  # optional: relative data_roots are joined to it
    defaults: {device: auto, batch_size: 8}   # eval options of every cell
    presets: [null, mmseg]                    # each one eval's --preset; null (or none): eval's defaults
    benchmarks:
      - {name: camvid, dataset: camvid, data_root: camvid, split: val, limit: 2}
    methods:
      - {name: naclip, model: ViT-B-16, pretrained: openai, mode: naclip}
      - {name: pixelclip-ft, pretrained: runs/pixelclip/model.pt, refine: masks}

Every key of ``defaults``, a benchmark or a method (but ``name``) is an option of
``labelless eval`` by its name (``short_side`` or ``short-side`` for ``--short-side``);
they are checked against eval's parser when the cells are planned (``cells.py``), so an
option added to eval works here unchanged. Choices made here:

- a cell's options are the defaults, then the benchmark's, then the method's; a key set by
  both a benchmark and a method is refused (which one should win is not obvious);
- ``dataset`` and ``data_root`` belong to benchmarks only (both required there), ``out``
  to compare (``--out``) and ``preset`` to the ``presets`` list;
- ``null`` as a value means eval's own default (the option is not passed);
- a benchmark's name defaults to its dataset; names (and preset names) are used in folder
  names ``<method>__<preset>__<benchmark>``: letters, digits, ``. _ + -``, no ``__``;
- ``data_dir`` (or ``labelless compare --data-dir``) is joined to relative ``data_root``\\ s;
  without it they are relative to the working folder, as for eval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from labelless.errors import ConfigError, MissingFileError

TOP_KEYS = ("title", "data_dir", "defaults", "presets", "benchmarks", "methods")
BENCHMARK_ONLY = ("dataset", "data_root")
RESERVED = {"out": "the output folder is labelless compare's --out",
            "preset": "list presets under the top-level 'presets' key"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class Entry:
    """A method or a benchmark: its name in the table and its eval options (``dest → value``)."""

    name: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CompareConfig:
    path: Path  # the YAML file, named in every error
    methods: tuple[Entry, ...]
    benchmarks: tuple[Entry, ...]
    presets: tuple[str | None, ...] = (None,)
    defaults: dict = field(default_factory=dict)
    data_dir: str | None = None
    title: str = "labelless compare"

    def with_limit(self, limit: int | None) -> CompareConfig:
        """Every benchmark scored on its first ``limit`` images (None: as the file says)."""
        if limit is None:
            return self
        return replace(self, benchmarks=tuple(replace(b, options={**b.options, "limit": limit})
                                              for b in self.benchmarks))

    def to_dict(self) -> dict:
        """The resolved config (data roots joined, limits applied): a config file of its own."""
        return {"title": self.title, "defaults": dict(self.defaults), "presets": list(self.presets),
                "benchmarks": [{"name": b.name, **b.options} for b in self.benchmarks],
                "methods": [{"name": m.name, **m.options} for m in self.methods]}


def _options(raw: dict, where: str, path: Path, benchmark: bool) -> dict:
    """Keys normalised to eval's ``dest`` spelling; reserved and misplaced keys refused."""
    out = {}
    for key, value in raw.items():
        dest = str(key).strip().replace("-", "_")
        if dest in RESERVED:
            raise ConfigError(f"{path}: {where}: '{key}' cannot be set here: {RESERVED[dest]}")
        if dest in BENCHMARK_ONLY and not benchmark:
            raise ConfigError(f"{path}: {where}: '{key}' belongs to a benchmark (under 'benchmarks')")
        if isinstance(value, dict):
            raise ConfigError(f"{path}: {where}: '{key}' must be a value or a list, got a mapping")
        if dest in out:
            raise ConfigError(f"{path}: {where}: '{key}' is given twice")
        out[dest] = value
    return out


def _name(value, where: str, path: Path) -> str:
    name = str(value).strip() if value is not None else ""
    if not _NAME.fullmatch(name) or "__" in name:
        raise ConfigError(f"{path}: {where}: name {value!r} must be letters, digits and . _ + - "
                          "(no '__', no spaces): it names the cell folders")
    return name


def _entries(data: dict, key: str, path: Path) -> tuple[Entry, ...]:
    items = data.get(key)
    if not items:
        raise ConfigError(f"{path}: no {key}: give a non-empty '{key}' list")
    if not isinstance(items, list):
        raise ConfigError(f"{path}: '{key}' must be a list of mappings, got {type(items).__name__}")
    out, seen = [], set()
    for i, raw in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: {where}: expected a mapping of eval options, got {raw!r}")
        raw = dict(raw)
        if key == "benchmarks":
            missing = [k for k in BENCHMARK_ONLY if raw.get(k, raw.get(k.replace("_", "-"))) in (None, "")]
            if missing:
                raise ConfigError(f"{path}: {where}: a benchmark needs {' and '.join(missing)}")
            default = raw.get("dataset")
        else:
            default = None
        name = _name(raw.pop("name", default), where, path)
        if name in seen:
            raise ConfigError(f"{path}: {where}: the name {name!r} is used twice in '{key}'")
        seen.add(name)
        out.append(Entry(name, _options(raw, f"{where} ({name})", path, key == "benchmarks")))
    return tuple(out)


def _presets(data: dict, path: Path) -> tuple[str | None, ...]:
    raw = data.get("presets", [None])
    raw = raw if isinstance(raw, list) else [raw]
    if not raw:
        raise ConfigError(f"{path}: 'presets' is empty: leave it out or give [null] for eval's defaults")
    out = []
    for p in raw:
        p = None if p is None or str(p).strip().lower() in ("none", "null", "") else _name(p, "presets", path)
        if p in out:
            raise ConfigError(f"{path}: presets: {p or 'null'} is listed twice")
        out.append(p)
    return tuple(out)


def _join_data_dir(benchmarks: tuple[Entry, ...], data_dir: str | None) -> tuple[Entry, ...]:
    if not data_dir:
        return benchmarks
    out = []
    for b in benchmarks:
        root = Path(str(b.options["data_root"])).expanduser()
        root = root if root.is_absolute() else Path(data_dir).expanduser() / root
        out.append(replace(b, options={**b.options, "data_root": str(root)}))
    return tuple(out)


def load_config(path, data_dir: str | None = None) -> CompareConfig:
    """Read and check the YAML file (module docstring); ``data_dir`` overrides the file's."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"compare config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with the keys {', '.join(TOP_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(TOP_KEYS)}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be a mapping of eval options")
    data_dir = data_dir or data.get("data_dir")
    return CompareConfig(
        path=path, methods=_entries(data, "methods", path),
        benchmarks=_join_data_dir(_entries(data, "benchmarks", path), data_dir),
        presets=_presets(data, path), defaults=_options(defaults, "defaults", path, benchmark=False),
        data_dir=None if data_dir is None else str(data_dir), title=str(data.get("title") or "labelless compare"))
