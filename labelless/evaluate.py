"""Semantic-segmentation evaluation: streaming confusion matrix, metrics and reports.

Conventions follow the semantic-segmentation literature (mmseg ``IoUMetric``,
detectron2 ``SemSegEvaluator``):

* a single K×K confusion matrix (rows = ground truth, columns = prediction) is
  accumulated over the whole split and all metrics are computed from it once
  (never averaged per image);
* pixels whose ground truth equals ``ignore_index`` (default 255) are skipped;
* a class whose IoU is undefined (no ground-truth pixel *and* no predicted pixel)
  is excluded from the mean IoU (reported as NaN / ``None``); a class that is only
  predicted has IoU 0 and counts;
* mean accuracy excludes classes without ground-truth pixels;
* frequency-weighted IoU weights each class IoU by its ground-truth pixel share;
* every metric is reported in percent.

``import labelless.evaluate`` does not import matplotlib; the plot in
:func:`write_report` imports it lazily (Agg canvas, no pyplot global state).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelless.fileio import atomic_path, atomic_write_text

__all__ = ["ConfusionMatrix", "compute_metrics", "format_table", "write_report"]

_SUMMARY_KEYS = ("mIoU", "pAcc", "mAcc", "fwIoU")
_CORE_KEYS = set(_SUMMARY_KEYS) | {"per_class", "per_class_acc", "num_classes", "num_pixels"}


# --------------------------------------------------------------------------- #
# Confusion matrix
# --------------------------------------------------------------------------- #
def _to_long_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    """Convert a torch tensor / numpy array / nested list of ints to int64 on ``device``."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            raise ValueError(
                f"{name} must hold integer class indices, got a tensor of dtype {x.dtype} "
                "(did you forget an argmax?)"
            )
        return x.detach().to(device=device, dtype=torch.int64)
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must hold integer class indices, got an array of dtype {arr.dtype} "
            "(did you forget an argmax?)"
        )
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    return torch.from_numpy(arr).to(device)


class ConfusionMatrix:
    """Streaming K×K int64 confusion matrix, rows = ground truth, columns = prediction.

    >>> cm = ConfusionMatrix(3)
    >>> cm.update(pred, target)        # any number of times, any same-shape int inputs
    >>> cm.all_reduce()                # once, after the loop, under torch.distributed
    >>> compute_metrics(cm.matrix, class_names)

    Counts accumulate on ``device`` (``None``: the device of the first prediction given as a
    tensor, so a CUDA prediction is counted where it is) in a flat vector of ``K·K + 3``
    bins: the K×K cells, then ignored pixels, bad targets, bad predictions. On the CPU a bad
    value raises in :meth:`update`, naming the values. Elsewhere (``defer_checks``, default:
    on any device but the CPU) ``update`` never waits for the device: bad pixels are counted
    in their bins and reading :attr:`matrix` raises the ValueError, so only the final read
    moves data to the host.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device="cpu",
                 defer_checks: bool | None = None):
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._defer = defer_checks
        self._counts: torch.Tensor | None = None
        self.device = None if device is None else torch.device(device)
        if self.device is not None:
            self._allocate(self.device)

    def _allocate(self, device: torch.device) -> torch.Tensor:
        if self._counts is None:
            K = self.num_classes
            self.device = torch.device(device)
            self._counts = torch.zeros(K * K + 3, dtype=torch.int64, device=self.device)
        return self._counts

    @property
    def matrix(self) -> torch.Tensor:
        """The K×K counts (a view: in-place changes count). ValueError when a deferred check found bad values."""
        counts = self._allocate(self.device or torch.device("cpu"))
        K = self.num_classes
        if self._defers():
            bad_t, bad_p = counts[K * K + 1:].tolist()
            if bad_t or bad_p:
                raise ValueError(f"{bad_t} target pixel(s) outside [0, {K}) that are not the ignore index "
                                 f"({self.ignore_index}) and {bad_p} pred pixel(s) outside [0, {K}) were counted")
        return counts[: K * K].view(K, K)

    def _defers(self) -> bool:
        return self.device.type != "cpu" if self._defer is None else self._defer

    def __repr__(self) -> str:
        pixels = 0 if self._counts is None else int(self._counts[: self.num_classes ** 2].sum())
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"device='{self.device}', num_pixels={pixels})"
        )

    def reset(self) -> None:
        """Zero the matrix (and the bad-value counts)."""
        if self._counts is not None:
            self._counts.zero_()

    @torch.no_grad()
    def update(self, pred, target) -> None:
        """Add one prediction / ground-truth pair (any same shape, e.g. H×W or B×H×W).

        Pixels where ``target == ignore_index`` are skipped (their prediction is not
        checked). Raises ``ValueError`` on a shape mismatch, a non-integer dtype, and (now,
        or when :attr:`matrix` is read: class docstring) on a target value outside ``[0, K)``
        other than the ignore value or a prediction outside ``[0, K)`` on a non-ignored pixel.
        """
        if self.device is None:
            self._allocate(pred.device if isinstance(pred, torch.Tensor) else torch.device("cpu"))
        p = _to_long_tensor(pred, "pred", self.device)
        t = _to_long_tensor(target, "target", self.device)
        if p.shape != t.shape:
            raise ValueError(
                f"pred and target must have the same shape, got pred {tuple(p.shape)} "
                f"and target {tuple(t.shape)}"
            )
        if t.numel() == 0:
            return
        bins = self._bins(p.reshape(-1), t.reshape(-1))
        if self.device.type == "cpu":
            self._counts += torch.bincount(bins, minlength=self._counts.numel())
        else:  # CUDA's bincount reads the largest value back to the host; index_add_ does not wait
            self._counts.index_add_(0, bins, torch.ones_like(bins))

    def _bins(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Flat ``N`` pred / target → ``N`` bin indices: ``t·K + p``, ``K·K`` ignored, ``K·K+1``
        bad target, ``K·K+2`` bad prediction (those raise here unless checks are deferred)."""
        K = self.num_classes
        keep = torch.ones_like(t, dtype=torch.bool) if self.ignore_index is None else t != self.ignore_index
        bad_t = keep & ((t < 0) | (t >= K))
        bad_p = keep & ~bad_t & ((p < 0) | (p >= K))
        if not self._defers():
            if bool(bad_t.any()):
                vals = torch.unique(t[bad_t])[:10].tolist()
                raise ValueError(f"target has values outside [0, {K}) that are not the ignore index "
                                 f"({self.ignore_index}): {vals}")
            if bool(bad_p.any()):
                vals = torch.unique(p[bad_p])[:10].tolist()
                raise ValueError(f"pred has values outside [0, {K}): {vals}")
        bins = torch.where(keep, t * K + p, K * K)
        return bins.masked_fill_(bad_t, K * K + 1).masked_fill_(bad_p, K * K + 2)

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add another confusion matrix (same number of classes) into this one."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge confusion matrices with {other.num_classes} and "
                f"{self.num_classes} classes"
            )
        if other._counts is not None:
            counts = self._allocate(self.device or other.device)
            counts += other._counts.to(counts.device)

    @torch.no_grad()
    def all_reduce(self) -> None:
        """Sum the matrix over all ``torch.distributed`` ranks (no-op when not initialised).

        Call it exactly once, after the last ``update`` on every rank: calling it twice
        multiplies the counts by the world size. A rank that counted nothing takes part too.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        nccl = dist.get_backend() == "nccl"
        here = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        t = self._allocate(self.device or here)
        if nccl and t.device.type != "cuda":
            t = t.to(here)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if t is not self._counts:
            self._counts.copy_(t.to(self._counts.device))


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #
def _unique_names(class_names: list[str]) -> list[str]:
    """Key duplicated names as ``"name (i)"`` (i = class index) so none is lost."""
    names = [str(n) for n in class_names]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out = [f"{n} ({i})" if counts[n] > 1 else n for i, n in enumerate(names)]
    seen: set[str] = set()
    for i, n in enumerate(out):  # pathological: "a (3)" already a real class name
        while n in seen:
            n = f"{n} ({i})"
        seen.add(n)
        out[i] = n
    return out


def _pct_or_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x) * 100.0


def compute_metrics(matrix, class_names: list[str]) -> dict:
    """Metrics (percent) from a K×K confusion matrix (rows = GT, columns = prediction).

    ``matrix`` may be a torch tensor, a numpy array or a :class:`ConfusionMatrix`.
    Returns ``{"mIoU", "pAcc", "mAcc", "fwIoU", "per_class", "per_class_acc",
    "num_classes", "num_pixels"}``; summary values are floats (NaN when undefined,
    e.g. an empty matrix), per-class values are floats or ``None`` when excluded.
    """
    if isinstance(matrix, ConfusionMatrix):
        matrix = matrix.matrix
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    cm = np.asarray(matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square K×K, got shape {cm.shape}")
    K = cm.shape[0]
    class_names = list(class_names)
    if len(class_names) != K:
        raise ValueError(
            f"got {len(class_names)} class names for a {K}×{K} confusion matrix"
        )
    if (cm < 0).any():
        raise ValueError("confusion matrix has negative entries")

    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pr = cm.sum(axis=0)
    union = gt + pr - tp
    total = cm.sum()

    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)

    iou_valid = ~np.isnan(iou)
    acc_valid = ~np.isnan(acc)
    miou = float(iou[iou_valid].mean()) * 100.0 if iou_valid.any() else float("nan")
    macc = float(acc[acc_valid].mean()) * 100.0 if acc_valid.any() else float("nan")
    if total > 0:
        pacc = float(tp.sum() / total) * 100.0
        freq = gt / total
        fwiou = float((freq[acc_valid] * iou[acc_valid]).sum()) * 100.0
    else:
        pacc = fwiou = float("nan")

    names = _unique_names(class_names)
    return {
        "mIoU": miou,
        "pAcc": pacc,
        "mAcc": macc,
        "fwIoU": fwiou,
        "per_class": {n: _pct_or_none(v) for n, v in zip(names, iou.tolist())},
        "per_class_acc": {n: _pct_or_none(v) for n, v in zip(names, acc.tolist())},
        "num_classes": int(K),
        "num_pixels": int(round(total)),
    }


# --------------------------------------------------------------------------- #
# Reports
# --------------------------------------------------------------------------- #
def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v, digits: int = 2) -> str:
    if _is_missing(v):
        return "—"
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def _md_cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def format_table(results: dict) -> str:
    """Markdown text of a results dict: extra metadata lines, the summary row, then
    the per-class IoU (and accuracy) table in class-index order; ``—`` marks
    excluded classes / undefined values."""
    lines: list[str] = []
    for key, val in results.items():
        if key in _CORE_KEYS:
            continue
        if isinstance(val, dict):
            val = ", ".join(f"{k}={v}" for k, v in val.items())
        elif isinstance(val, (list, tuple, set)):
            val = f"{len(val)}"
        lines.append(f"- **{_md_cell(key)}**: {_md_cell(_fmt(val) if isinstance(val, float) else val)}")
    if lines:
        lines.append("")

    lines.append("| " + " | ".join(_SUMMARY_KEYS) + " |")
    lines.append("|" + "|".join(["---:"] * len(_SUMMARY_KEYS)) + "|")
    lines.append("| " + " | ".join(_fmt(results.get(k)) for k in _SUMMARY_KEYS) + " |")

    per_class = results.get("per_class") or {}
    per_class_acc = results.get("per_class_acc") or {}
    if per_class:
        lines.append("")
        has_acc = bool(per_class_acc)
        header = "| # | class | IoU |" + (" Acc |" if has_acc else "")
        sep = "|---:|:---|---:|" + ("---:|" if has_acc else "")
        lines.append(header)
        lines.append(sep)
        # dicts keep insertion order = class index order (also after a JSON round trip)
        for i, (name, v) in enumerate(per_class.items()):
            row = f"| {i} | {_md_cell(name)} | {_fmt(v)} |"
            if has_acc:
                row += f" {_fmt(per_class_acc.get(name))} |"
            lines.append(row)
    return "\n".join(lines) + "\n"


def _jsonable(obj):
    """NaN/inf -> None, numpy/torch scalars and arrays -> Python, Path -> str."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def _plot_per_class(results: dict, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_class = results.get("per_class") or {}
    names = list(per_class.keys())
    vals = [None if _is_missing(v) else float(v) for v in per_class.values()]
    n = max(len(names), 1)

    row_h = 0.18  # inches per class: ~13 pt, room for a 7 pt label
    height = min(max(2.5, 1.5 + row_h * n), 600.0)  # Agg caps images at 2**16 px
    fontsize = 9 if n <= 40 else 7
    fig = Figure(figsize=(8.0, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    ys = np.arange(len(names))
    present = [i for i, v in enumerate(vals) if v is not None]
    ax.barh(
        [ys[i] for i in present], [vals[i] for i in present],
        height=0.8, color="tab:blue",
    )
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=fontsize)
    for i, lab in enumerate(ax.get_yticklabels()):
        if vals[i] is None:  # excluded: no bar, greyed label
            lab.set_color("0.6")
    ax.set_ylim(len(names) - 0.5, -0.5)  # class 0 at the top
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    miou = results.get("mIoU")
    if not _is_missing(miou):
        ax.axvline(float(miou), color="tab:red", linestyle="--", linewidth=1,
                   label=f"mIoU {float(miou):.2f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{title}: per-class IoU" + ("" if present else " (no defined class)"),
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", top=True, labeltop=True)  # readable at both ends of tall plots
    fig.tight_layout()

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_report(results: dict, out_dir, title: str = "labelless evaluation") -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``per_class_iou.png`` into ``out_dir``.

    The JSON holds the dict as given (including any extra keys such as ``dataset``,
    ``model``, ``num_images``, ``skipped``) with NaN written as ``null``. All files
    are written atomically (temp file + ``os.replace``).
    Returns ``{"json": path, "markdown": path, "plot": path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        "plot": out_dir / "per_class_iou.png",
    }
    text = json.dumps(_jsonable(results), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(paths["json"], text + "\n")
    atomic_write_text(paths["markdown"], f"# {title}\n\n" + format_table(results))
    _plot_per_class(results, paths["plot"], title)
    return paths
