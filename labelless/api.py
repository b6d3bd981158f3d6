"""The Python API: load a model once, then segment any image with any words.

.. code-block:: python

    import labelless

    seg = labelless.load("ViT-B-16", "openai", mode="pixelclip")
    result = seg("photo.jpg", ["sky", "road|street", "cyclist"])
    result.labels          # H×W int64, indices into result.names
    result.shares          # {"sky": 0.31, "road": 0.52, "cyclist": 0.17}
    result.overlay()       # PIL image: colours + legend
    result.save("out/")    # out/photo.png (index PNG), out/photo_overlay.png, out/labels.txt

``load`` takes what the command line takes (``loader.load_scorer``: an open_clip name +
tag, ``hf-hub:`` / ``local-dir:``, a checkpoint file of any method: CLIP, PixelCLIP,
S-Seg, a self-trained segmenter; ``segment.Segmenter``: protocol, background threshold,
batch size), with the CLI's defaults. Options it does not name are passed on by name to
``load_scorer``, ``segment.Protocol`` or ``Segmenter`` (whichever has a parameter of that
name), so what those gain (e.g. a ``refine=`` of the Segmenter, a ``vfm=`` of the loader)
works here unchanged.

Choices made here:

- Images: a path, a PIL image (converted to RGB), an ``H×W×3`` uint8 array, or a ``3×H×W``
  tensor (uint8, or float in [0, 1]); a list of them is one batched ``Segmenter.predict``
  call. Anything else is an ``ImageError`` naming the image and what was expected.
- Words: a list of classes, each a string with synonyms separated by ``|`` (``"road|street"``)
  or a list of synonyms, or one string of comma-separated classes (``parse_labels``). Only
  ``|`` separates synonyms in a list item (a comma stays part of the name there).
- The vocabulary of each word list is built once and kept (the last 32 word lists); the
  prompt embeddings are cached per model as well (``vocab/encode.py``).
- ``scores=True`` adds the ``K×H×W`` score maps (``Segmenter.similarity``: cosines for CLIP
  scorers, probabilities for S-Seg and segmenters), at the cost of a second forward pass
  and K×H×W memory per image; the labels always come from ``Segmenter.predict``.
- ``--pretrained none`` weights are drawn from ``seed`` without touching the caller's
  global RNG state (``torch.random.fork_rng``); the same seed gives the CLI's model.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from labelless.errors import ImageError, SettingError

VOCAB_CACHE_SIZE = 32


def parse_words(words) -> list[list[str]]:
    """Words → classes (lists of synonyms): a comma string, or a list of ``"a|b"`` strings /
    synonym lists. SettingError for an empty vocabulary or an item that is not text."""
    from labelless.vocab.encode import parse_labels

    if isinstance(words, str):
        classes = parse_labels(words)
    elif isinstance(words, (list, tuple)):
        classes = []
        for item in words:
            syns = item.split("|") if isinstance(item, str) else item
            if not isinstance(syns, (list, tuple)) or not all(isinstance(s, str) for s in syns):
                raise SettingError(f"class {item!r}: give a string ('road|street') or a list of strings")
            syns = [s.strip() for s in syns if s.strip()]
            if syns:
                classes.append(syns)
    else:
        raise SettingError(f"words must be a list of class names or a comma-separated string, got {type(words)}")
    if not classes:
        raise SettingError('the vocabulary is empty: give at least one class name, e.g. "sky, road|street" '
                           'or ["sky", "road|street"]')
    return classes


def as_image(image, where: str = "image") -> torch.Tensor:
    """Any supported image (module doc) → ``3×H×W`` tensor, uint8 or float in [0, 1], on its
    own device. ImageError names ``where`` (and the file for a path) and what was expected."""
    from PIL import Image

    from labelless.io import load_image

    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ImageError(f"{where}: an array of shape {image.shape} and dtype {image.dtype}; "
                             "expected H×W×3 uint8 (RGB)")
        image = np.ascontiguousarray(image) if image.flags.writeable else image.copy()  # PIL's are read-only
        image = torch.from_numpy(image).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise ImageError(f"{where}: cannot use a {type(image).__name__} as an image; give a file path, a PIL "
                         "image, an H×W×3 uint8 array or a 3×H×W tensor")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ImageError(f"{where}: a tensor of shape {tuple(image.shape)}; expected 3×H×W")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise ImageError(f"{where}: a {image.dtype} tensor; expected uint8 or float in [0, 1]")
    if image.is_floating_point() and image.numel() and not (0 <= image.min() and image.max() <= 1):
        raise ImageError(f"{where}: float values in [{image.min():.3g}, {image.max():.3g}]; expected [0, 1] "
                         "(or give a uint8 tensor)")
    if min(image.shape[-2:]) == 0:
        raise ImageError(f"{where}: an empty image ({tuple(image.shape)})")
    return image


def _display(image: torch.Tensor) -> torch.Tensor:
    """``3×H×W`` uint8 on the CPU (floats in [0, 1] rounded), for overlays."""
    image = image.detach().cpu()
    return image if image.dtype == torch.uint8 else (image.float() * 255).round().clamp(0, 255).to(torch.uint8)


@dataclasses.dataclass
class Segmentation:
    """One image's result.

    image:  ``3×H×W`` uint8 (CPU), as segmented
    labels: ``H×W`` int64 (CPU), indices into ``names``
    names:  the class names, the first synonym of each class; with a background threshold
            ``names[0]`` is ``"background"`` and the words are ``names[1:]``
    scores: ``K×H×W`` float32 score maps of the K words (``scores=True``), else None
    stem:   file stem for ``save`` (a path's stem, else ``image`` / ``image_<i>``)
    """

    image: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    scores: torch.Tensor | None = None
    stem: str = "image"

    @property
    def shares(self) -> dict[str, float]:
        """Each class's fraction of the image's pixels (every class, in ``names`` order; sums to 1)."""
        counts = torch.bincount(self.labels.flatten(), minlength=len(self.names))[: len(self.names)]
        return {n: float(c) / max(1, self.labels.numel()) for n, c in zip(self.names, counts.tolist())}

    def overlay(self, alpha: float = 0.5):
        """The image blended with the class colours (``visualize.palette``), a legend of the
        classes present on the right: a PIL image."""
        from labelless.visualize import overlay

        return overlay(self.image, self.labels, self.names, alpha)

    def save(self, out, stem: str | None = None) -> dict[str, Path]:
        """Write ``<stem>.png`` (index PNG: pixel value = class index), ``<stem>_overlay.png``
        and ``labels.txt`` (``index name`` lines) into folder ``out`` (created); the paths."""
        from labelless.visualize import save_index_png, save_overlay

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or self.stem
        names = out / "labels.txt"
        names.write_text("".join(f"{i} {n}\n" for i, n in enumerate(self.names)))
        return {"labels": save_index_png(self.labels, out / f"{stem}.png", len(self.names)),
                "overlay": save_overlay(self.image, self.labels, self.names, out / f"{stem}_overlay.png"),
                "names": names}


def _parameters(fn) -> set[str]:
    return {n for n, p in inspect.signature(fn).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _route(options: dict) -> tuple[dict, dict, dict]:
    """Split extra options into (load_scorer, Protocol, Segmenter) keyword arguments by parameter
    name; SettingError for a name none of them takes."""
    from labelless.loader import load_scorer
    from labelless.segment import Protocol, Segmenter

    targets = [_parameters(load_scorer), {f.name for f in dataclasses.fields(Protocol)} - {"name"},
               _parameters(Segmenter.__init__) - {"scorer", "vocab", "protocol"}]
    out: tuple[dict, dict, dict] = ({}, {}, {})
    for key, value in options.items():
        hit = next((i for i, names in enumerate(targets) if key in names), None)
        if hit is None:
            known = sorted(set().union(*targets))
            raise SettingError(f"unknown option {key}=; labelless.load takes {', '.join(known)}")
        out[hit][key] = value
    return out


class SegmentationModel:
    """A loaded scorer + segmentation settings; call it on images and words (module doc).

    ``scorer``: the loaded scorer (``scorer.model`` its model); ``protocol``: the resolved
    ``segment.Protocol``; ``variant(**options)``: the same loaded model with other
    segmentation settings.
    """

    def __init__(self, scorer, protocol, templates="imagenet_select", synonyms: str = "mean",
                 segmenter_options: dict | None = None):
        from labelless.segment import Protocol

        self.scorer = scorer
        self.device = scorer.device
        self.templates, self.synonyms = templates, synonyms
        self.segmenter_options = dict(segmenter_options or {})
        self._protocol = Protocol(protocol) if isinstance(protocol, str) else protocol  # as given
        self.protocol = self._protocol.resolved(scorer.image_size)
        self._segmenters: OrderedDict = OrderedDict()

    @property
    def batch_size(self) -> int:
        """Images (squash) or windows (slide) per batch; not given: ``segment.default_batch_size``
        for this device and protocol (so a variant with another protocol gets its own default)."""
        from labelless.segment import default_batch_size

        given = self.segmenter_options.get("batch_size")
        return default_batch_size(self.device, self.protocol.name) if given is None else given

    def variant(self, protocol=None, templates=None, synonyms=None, **options) -> "SegmentationModel":
        """The same loaded model (no reload) with other settings: ``protocol`` a name (with its
        defaults) or a ``Protocol`` (None: this one), ``options`` as ``load``'s that go to
        ``Protocol`` or ``Segmenter`` (the others are model settings: refused)."""
        from labelless.segment import Protocol

        loader, proto, segment = _route(options)
        if loader:
            raise SettingError(f"{', '.join(loader)}: model settings; load another model with labelless.load")
        base = Protocol(protocol) if isinstance(protocol, str) else (protocol or self._protocol)
        return SegmentationModel(self.scorer, dataclasses.replace(base, **proto), templates or self.templates,
                                 synonyms or self.synonyms, {**self.segmenter_options, **segment})

    def segmenter(self, words):
        """The ``Segmenter`` for ``words`` (built once per word list, the last 32 kept)."""
        from labelless.segment import Segmenter

        classes = parse_words(words)
        key = tuple(map(tuple, classes))
        if key in self._segmenters:
            self._segmenters.move_to_end(key)
            return self._segmenters[key]
        vocab = self.scorer.vocabulary(classes, self.templates, self.synonyms)
        seg = Segmenter(self.scorer, vocab, self.protocol, **{**self.segmenter_options, "batch_size": self.batch_size})
        self._segmenters[key] = seg
        if len(self._segmenters) > VOCAB_CACHE_SIZE:
            self._segmenters.popitem(last=False)
        return seg

    def names(self, words) -> list[str]:
        """The class names of a result for ``words`` (``"background"`` first with a threshold)."""
        names = [c[0] for c in parse_words(words)]
        return (["background"] + names) if self.segmenter_options.get("bg_threshold") is not None else names

    def __call__(self, images, words, scores: bool = False, **predict_options):
        """Segment one image (→ ``Segmentation``) or a list (→ list, one batched call).
        ``predict_options`` go to ``Segmenter.predict``."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            return []
        where = ["image"] if single else [f"image {i} of {len(items)}" for i in range(len(items))]
        tensors = [as_image(im, w) for im, w in zip(items, where)]
        seg = self.segmenter(words)
        labels = seg.predict(tensors, **predict_options)
        maps = [s.cpu() for s in seg.similarity(tensors)] if scores else [None] * len(tensors)
        stems = [Path(im).stem if isinstance(im, (str, Path)) else ("image" if single else f"image_{i}")
                 for i, im in enumerate(items)]
        names = self.names(words)
        out = [Segmentation(_display(t), lab, names, s, stem) for t, lab, s, stem in zip(tensors, labels, maps, stems)]
        return out[0] if single else out

    def info(self) -> dict:
        """The model and settings, as ``eval``'s results record them."""
        info = self.scorer.info() if hasattr(self.scorer, "info") else {}
        plain = {k: v for k, v in self.segmenter_options.items() if isinstance(v, (int, float, str, type(None)))}
        return {**info, "protocol": dataclasses.asdict(self.protocol), "templates": self.templates,
                "synonyms": self.synonyms, **plain, "batch_size": self.batch_size}


def load(model: str | None = None, pretrained: str | None = "openai", mode: str = "auto", *, device="auto",
         protocol: str = "squash", templates="imagenet_select", synonyms: str = "mean", logit_scale: float = 100.0,
         bg_threshold: float | None = None, batch_size: int | None = None, precision: str = "auto",
         compile: bool = False, seed: int = 0, cache_dir: str | None = None, **options) -> SegmentationModel:
    """Load a model for segmenting images with any words (module doc); the CLI's defaults.

    model, pretrained, mode, device, cache_dir: as ``--model`` … (``loader.load_scorer``);
    protocol: squash / slide / whole; ``options`` named ``short_side``, ``input_size``,
    ``stride``, ``feature_size``, ``max_long_side`` set the protocol, other names go to
    ``load_scorer`` or ``Segmenter``; batch_size None: ``segment.default_batch_size``.
    """
    from labelless.loader import load_scorer
    from labelless.segment import Protocol

    loader, proto, segment = _route(options)
    protocol = Protocol(protocol, **proto)
    protocol.resolved((1, 1))  # an unknown protocol fails before the model loads
    with torch.random.fork_rng(devices=[]):  # models are built on the CPU, then moved
        torch.manual_seed(seed)
        scorer = load_scorer(model, pretrained, mode, device, cache_dir, **loader)
    scorer.configure(precision, compile)
    return SegmentationModel(scorer, protocol, templates, synonyms,
                             dict(logit_scale=logit_scale, bg_threshold=bg_threshold, batch_size=batch_size, **segment))
