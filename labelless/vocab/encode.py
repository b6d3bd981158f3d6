"""Vocabulary: class names (with synonyms) × templates → text embeddings.

A class is a list of synonyms. In dataset class lists and label files a line
``"person, people"`` holds synonyms separated by ``", "``; on the command line
(``--labels "road|street,car"``) classes are separated by commas and synonyms by ``|``.

Every prompt (template × synonym) is encoded and L2-normalised. Synonyms of a class
are combined in one of three ways (``reduce``):

- ``mean`` (PixelCLIP / CAT-Seg ``class_embeddings``): for each template, the synonyms'
  embeddings are averaged and normalised; the per-template class embeddings are then
  averaged and normalised. One row per class.
- ``mean_per_synonym``: each synonym's templates are averaged and normalised (the
  OpenAI zero-shot recipe per name), then the synonyms are averaged and normalised.
  One row per class. (labelless's ``mean`` before 0.2; no harness we know uses it.)
- ``max``: one template-averaged row per synonym; a class scores the highest cosine of
  its synonyms (taken wherever class scores are formed: per window in ``slide``).
- ``max_prob`` (the mmseg harness of SCLIP / ClearCLIP / NACLIP / ProxyCLIP, their
  ``get_cls_idx`` / ``query_idx`` and ``postprocess_result``): the same rows, kept as rows
  through the protocol (windows averaged and resized per synonym) until the labels, where
  a class's probability is the largest of its synonyms' probabilities under one softmax
  over every synonym of every class. The label is the class of the best synonym (as
  ``max`` gives it per location); what differs from ``max`` is the background threshold's
  confidence (the top of the softmax over all synonym rows, not over K class scores) and
  that the maximum is taken after window averaging and resizing. ``Vocabulary.per_row``
  tells the scorer to return row scores (``row_similarity``); ``similarity`` stays
  per class (the ``max`` of the rows).

For a class without synonyms the three are the same: the normalised mean of its
normalised template embeddings.

Prompt embeddings are cached per model instance and text-weight state, so the same
vocabulary is encoded once, and again after the text weights change
(``text_weights_fingerprint``); ``encode_text`` is the only call that runs the text tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from labelless.errors import MissingFileError, SettingError
from labelless.vocab.templates import get_templates

REDUCTIONS = ("mean", "mean_per_synonym", "max", "max_prob")


def split_synonyms(name: str) -> list[str]:
    """``"person, people"`` → ``["person", "people"]``."""
    parts = [p.strip() for p in name.split(", ")]
    return [p for p in parts if p] or [name.strip()]


def parse_labels(text: str) -> list[list[str]]:
    """Command-line labels: ``"road|street, car"`` → ``[["road", "street"], ["car"]]``."""
    classes = []
    for item in text.split(","):
        syns = [s.strip() for s in item.split("|") if s.strip()]
        if syns:
            classes.append(syns)
    return classes


def read_labels_file(path) -> list[list[str]]:
    """One class per line, synonyms separated by ``", "``; blank lines and ``#`` comments skipped."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"labels file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingError(f"cannot read labels file {path}: {type(e).__name__}: {e}") from e
    lines = [ln.strip() for ln in text.splitlines()]
    return [split_synonyms(ln) for ln in lines if ln and not ln.startswith("#")]


@dataclass
class Vocabulary:
    """Text embeddings of K classes.

    embeddings:  R×D L2-normalised rows: one per class (``mean``, ``mean_per_synonym``)
                 or one per synonym (``max``, ``max_prob``)
    class_index: R, the class of each row
    """

    names: list[str]  # K display names (first synonym of each class)
    embeddings: torch.Tensor
    class_index: torch.Tensor
    reduce: str = "mean"

    def __len__(self) -> int:
        return len(self.names)

    def to(self, device) -> "Vocabulary":
        return Vocabulary(self.names, self.embeddings.to(device), self.class_index.to(device), self.reduce)

    def class_embeddings(self) -> torch.Tensor:
        """K×D: each class's row (``max``: the normalised mean of its synonym rows)."""
        k, d = len(self.names), self.embeddings.shape[1]
        sums = torch.zeros(k, d, dtype=self.embeddings.dtype, device=self.embeddings.device)
        sums.index_add_(0, self.class_index, self.embeddings)
        return F.normalize(sums, dim=-1)

    @property
    def per_row(self) -> bool:
        """Whether scores stay per synonym row until the labels (``max_prob``)."""
        return self.reduce == "max_prob"

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of dense features ``B×D×h×w`` with every class → ``B×K×h×w``."""
        return class_similarity(features, self.embeddings, self.class_index, len(self.names), self.reduce)

    def row_similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of dense features ``B×D×h×w`` with every row → ``B×R×h×w``
        (row ``r`` belongs to class ``class_index[r]``)."""
        return torch.einsum("bdhw,rd->brhw", F.normalize(features.float(), dim=1), self.embeddings.float())


def class_similarity(features: torch.Tensor, embeddings: torch.Tensor, class_index: torch.Tensor,
                     num_classes: int, reduce: str = "mean") -> torch.Tensor:
    """Cosine similarity ``B×K×h×w`` of features ``B×D×h×w`` with synonym rows ``S×D``.

    ``max`` / ``max_prob``: the best synonym; otherwise the similarity with each class's
    averaged rows (one row per class: that row).
    """
    feats = F.normalize(features.float(), dim=1)
    emb = embeddings.float()
    if reduce in ("mean", "mean_per_synonym"):
        sums = torch.zeros(num_classes, emb.shape[1], device=emb.device)
        sums.index_add_(0, class_index, emb)
        return torch.einsum("bdhw,kd->bkhw", feats, F.normalize(sums, dim=-1))
    if reduce in ("max", "max_prob"):  # per class: the best synonym
        sims = torch.einsum("bdhw,sd->bshw", feats, emb)
        out = torch.full((sims.shape[0], num_classes, *sims.shape[2:]), -2.0, device=sims.device)
        idx = class_index.view(1, -1, 1, 1).expand_as(sims)
        return out.scatter_reduce(1, idx, sims, reduce="amax")
    raise SettingError(f"unknown synonym reduction {reduce!r}; choose from {', '.join(REDUCTIONS)}")


def text_weights_fingerprint(model) -> tuple:
    """What identifies the current weights of ``model``'s text encoder: per parameter its
    storage, its in-place version counter and the float64 sum of its values (the sum also
    catches writes through ``.data``, which bypass the counter). ``model.text_parameters()``
    when it has one (``DenseCLIP``: every CLIP parameter outside the vision tower), else all
    parameters; a model without parameters gives ``()``."""
    params = model.text_parameters() if hasattr(model, "text_parameters") else \
        (model.parameters() if hasattr(model, "parameters") else [])
    with torch.no_grad():
        return tuple((p.data_ptr(), p._version, float(p.detach().sum(dtype=torch.float64))) for p in params)


def _prompt_cache(model) -> dict:
    """The model's prompt → embedding cache, emptied whenever its text weights changed."""
    fingerprint = text_weights_fingerprint(model)
    cache = getattr(model, "_prompt_cache", None)
    if cache is None or cache.get("fingerprint") != fingerprint:
        cache = {"fingerprint": fingerprint, "embeddings": {}}
        model._prompt_cache = cache
    return cache["embeddings"]


def encode_prompts(model, prompts: list[str]) -> torch.Tensor:
    """``N×D`` normalised embeddings of prompts, each encoded once per model instance and
    text-weight state (a trained text tower never gets stale embeddings back)."""
    cache = _prompt_cache(model)
    todo = list(dict.fromkeys(p for p in prompts if p not in cache))
    if todo:
        for p, e in zip(todo, model.encode_text(todo)):
            cache[p] = e
    return torch.stack([cache[p] for p in prompts]) if prompts else torch.zeros(0, model.embed_dim)


def _mean_rows(x: torch.Tensor) -> torch.Tensor:
    """Normalised mean over dim 0 of normalised rows (a single row is kept as it is)."""
    return x[0] if x.shape[0] == 1 else F.normalize(x.mean(0), dim=-1)


def _class_rows(e: torch.Tensor, reduce: str) -> torch.Tensor:
    """One class's prompt embeddings ``synonyms×templates×D`` (normalised) → its rows."""
    if reduce == "mean":  # per template over the synonyms, then over the templates
        return F.normalize(_mean_rows(e).mean(0), dim=-1)[None]
    per_synonym = F.normalize(e.mean(1), dim=-1)  # S×D: each synonym over its templates
    if reduce == "mean_per_synonym":
        return _mean_rows(per_synonym)[None]
    return per_synonym  # max, max_prob: one row per synonym


def build_vocabulary(model, classes: list, templates="imagenet_select", reduce: str = "mean") -> Vocabulary:
    """Encode ``classes`` (strings with ``", "`` synonyms, or lists of synonyms) with ``model``."""
    if reduce not in REDUCTIONS:
        raise SettingError(f"unknown synonym reduction {reduce!r}; choose from {', '.join(REDUCTIONS)}")
    classes = [split_synonyms(c) if isinstance(c, str) else [s.strip() for s in c if s.strip()]
               for c in classes]
    if not classes or any(not c for c in classes):
        raise SettingError("the vocabulary is empty: give at least one class name")
    templates = get_templates(templates)
    synonyms = [s for c in classes for s in c]
    prompts = [t.format(s) for s in synonyms for t in templates]
    emb = F.normalize(encode_prompts(model, prompts), dim=-1).view(len(synonyms), len(templates), -1)  # S×T×D
    rows, start = [], 0
    for c in classes:
        e = emb[start:start + len(c)]  # synonyms × templates × D
        start += len(c)
        rows.append(_class_rows(e, reduce))
    class_index = torch.tensor([i for i, r in enumerate(rows) for _ in range(r.shape[0])], dtype=torch.long)
    emb = torch.cat(rows)
    return Vocabulary([c[0] for c in classes], emb, class_index.to(emb.device), reduce)
