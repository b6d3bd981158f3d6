"""Masks of the images being segmented, for ``--refine masks`` (``labelless.refine``).

A mask source is called with a batch as ``eval`` and ``segment`` have it —
``source(images, names, labels)``: images ``3×H×W`` uint8 on the model's device, their
names (file stems), their labels (``H×W`` class indices, eval only, else None) — and gives
one ``N×H×W`` bool tensor per image, on the images' device. Sources
(:func:`build_mask_source`):

- ``gt``: the benchmark's ground-truth segments, one mask per class present in the label,
  ignored pixels in none (zero-shot mask classification, PixelCLIP Table 2);
- a mask source of ``labelless masks generate`` (``dino``, ``sam``, ``felzenszwalb``,
  ``slic``, ``rgb-kmeans``), computed on the fly for every image with the same parameters
  and defaults as ``masks generate`` (its model loaded once);
- a mask store folder (``masks generate`` / ``masks import``): the record named as the
  image; an image without a record is an error naming it and the store.
"""

from __future__ import annotations

from pathlib import Path

import torch

from labelless.errors import MaskStoreError, SettingError

__all__ = ["GroundTruthMasks", "OnlineMasks", "StoreMasks", "build_mask_source", "parse_mask_options"]


class GroundTruthMasks:
    """The label's class regions (``ignore_index`` pixels in no mask)."""

    needs_labels = True

    def __init__(self, ignore_index: int | None = 255):
        self.ignore_index = ignore_index

    def __call__(self, images, names, labels) -> list[torch.Tensor]:
        from labelless.masks.ops import labels_to_masks

        if labels is None:
            raise SettingError("ground-truth masks (--masks gt) need a benchmark's labels: use them with eval")
        return [labels_to_masks(torch.as_tensor(lab).to(im.device), ignore=self.ignore_index)
                for im, lab in zip(images, labels)]

    def info(self) -> dict:
        return {"source": "gt", "ignore_index": self.ignore_index}


class OnlineMasks:
    """A ``masks generate`` source run on every batch (``labelless.masks.generate.build_masker``)."""

    needs_labels = False

    def __init__(self, source: str, params: dict | None = None, device="cpu"):
        from labelless.masks.generate import build_masker, resolve_params

        self.source = source
        self.params = resolve_params(source, params)
        self.params.pop("batch_size", None)  # dino: batching is the segmenter's
        self.masker = build_masker(source, self.params, device)

    def __call__(self, images, names, labels) -> list[torch.Tensor]:
        found = self.masker(list(images))
        return [torch.as_tensor(m).to(im.device, torch.bool) for (m, _), im in zip(found, images)]

    def info(self) -> dict:
        return {"source": self.source, "params": self.params}


class StoreMasks:
    """The records of a mask store, by image name."""

    needs_labels = False

    def __init__(self, store_dir):
        from labelless.masks.store import open_store

        self.store = Path(store_dir).expanduser().resolve()
        self.meta = open_store(self.store)

    def __call__(self, images, names, labels) -> list[torch.Tensor]:
        from labelless.masks.store import has_masks, read_masks

        out = []
        for im, name in zip(images, names):
            if not has_masks(self.store, name):
                raise MaskStoreError(f"mask store {self.store} has no record for image {name!r} (make one with "
                                     f"`labelless masks generate ... --out {self.store}`)")
            masks, _ = read_masks(self.store, name)
            out.append(torch.from_numpy(masks).to(im.device))
        return out

    def info(self) -> dict:
        return {"source": "store", "store": str(self.store), "store_source": self.meta["source"],
                "store_params": self.meta.get("params")}


def parse_mask_options(text: str | None) -> dict:
    """``"k=8,size=448,model=/path"`` → ``{"k": 8, "size": 448, "model": "/path"}`` (ints, floats,
    true/false/none recognised; anything else a string)."""
    out: dict = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"--mask-options: {item!r} is not KEY=VALUE (e.g. k=8,size=448)")
        out[key.strip()] = _value(value.strip())
    return out


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def build_mask_source(spec: str, options: dict | None = None, device="cpu", ignore_index: int | None = 255):
    """The mask source named by ``spec`` (module doc): ``gt``, a ``masks generate`` source name
    (``options``: its parameters), or a mask store folder."""
    from labelless.masks.generate import SOURCES

    options = dict(options or {})
    if spec in SOURCES:
        return OnlineMasks(spec, options, device)
    if options:
        raise SettingError(f"--mask-options {options} apply to a computed mask source ({', '.join(SOURCES)}), "
                           f"not to --masks {spec}")
    if spec == "gt":
        return GroundTruthMasks(ignore_index)
    if not Path(spec).expanduser().exists():
        raise SettingError(f"--masks {spec!r}: not gt, a mask source ({', '.join(SOURCES)}) or a mask store folder")
    return StoreMasks(spec)
