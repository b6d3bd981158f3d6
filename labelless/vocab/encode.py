"""Vocabulary: class names (with synonyms) × templates → text embeddings.

A class is a list of synonyms. In dataset class lists and label files a line
``"person, people"`` holds synonyms separated by ``", "``; on the command line
(``--labels "road|street,car"``) classes are separated by commas and synonyms by ``|``.

Each synonym's embedding is the mean of its L2-normalised template embeddings,
normalised again (the OpenAI zero-shot recipe). Synonyms of a class are combined
either by averaging their embeddings (``reduce="mean"``, PixelCLIP/CAT-Seg) or by
taking the maximum of their similarities (``reduce="max"``).

Prompt embeddings are cached per model instance, so the same vocabulary is encoded
once (``DenseCLIP.encode_text`` is the only call that runs the text tower).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from labelless.vocab.templates import get_templates

REDUCTIONS = ("mean", "max")


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
        raise FileNotFoundError(f"labels file not found: {path}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [split_synonyms(ln) for ln in lines if ln and not ln.startswith("#")]


@dataclass
class Vocabulary:
    """Text embeddings of K classes.

    embeddings:  S×D L2-normalised, one row per synonym (template-averaged)
    class_index: S, the class of each row
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
        """K×D: the normalised mean of each class's synonym embeddings."""
        k, d = len(self.names), self.embeddings.shape[1]
        sums = torch.zeros(k, d, dtype=self.embeddings.dtype, device=self.embeddings.device)
        sums.index_add_(0, self.class_index, self.embeddings)
        return F.normalize(sums, dim=-1)

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of dense features ``B×D×h×w`` with every class → ``B×K×h×w``."""
        return class_similarity(features, self.embeddings, self.class_index, len(self.names), self.reduce)


def class_similarity(features: torch.Tensor, embeddings: torch.Tensor, class_index: torch.Tensor,
                     num_classes: int, reduce: str = "mean") -> torch.Tensor:
    """Cosine similarity ``B×K×h×w`` of features ``B×D×h×w`` with synonym rows ``S×D``.

    ``mean``: similarity with each class's averaged embedding; ``max``: the best synonym.
    """
    feats = F.normalize(features.float(), dim=1)
    emb = embeddings.float()
    if reduce == "mean":
        sums = torch.zeros(num_classes, emb.shape[1], device=emb.device)
        sums.index_add_(0, class_index, emb)
        return torch.einsum("bdhw,kd->bkhw", feats, F.normalize(sums, dim=-1))
    if reduce == "max":
        sims = torch.einsum("bdhw,sd->bshw", feats, emb)
        out = torch.full((sims.shape[0], num_classes, *sims.shape[2:]), -2.0, device=sims.device)
        idx = class_index.view(1, -1, 1, 1).expand_as(sims)
        return out.scatter_reduce(1, idx, sims, reduce="amax")
    raise ValueError(f"unknown synonym reduction {reduce!r}; choose from {', '.join(REDUCTIONS)}")


def _prompt_cache(model) -> dict:
    cache = getattr(model, "_prompt_cache", None)
    if cache is None:
        cache = {}
        model._prompt_cache = cache
    return cache


def encode_prompts(model, prompts: list[str]) -> torch.Tensor:
    """``N×D`` normalised embeddings of prompts, each encoded once per model instance.

    Call ``model._prompt_cache.clear()`` after changing the text tower's weights.
    """
    cache = _prompt_cache(model)
    todo = list(dict.fromkeys(p for p in prompts if p not in cache))
    if todo:
        for p, e in zip(todo, model.encode_text(todo)):
            cache[p] = e
    return torch.stack([cache[p] for p in prompts]) if prompts else torch.zeros(0, model.embed_dim)


def build_vocabulary(model, classes: list, templates="imagenet_select", reduce: str = "mean") -> Vocabulary:
    """Encode ``classes`` (strings with ``", "`` synonyms, or lists of synonyms) with ``model``."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown synonym reduction {reduce!r}; choose from {', '.join(REDUCTIONS)}")
    classes = [split_synonyms(c) if isinstance(c, str) else [s.strip() for s in c if s.strip()]
               for c in classes]
    if not classes or any(not c for c in classes):
        raise ValueError("the vocabulary is empty: give at least one class name")
    templates = get_templates(templates)
    synonyms = [s for c in classes for s in c]
    class_index = torch.tensor([i for i, c in enumerate(classes) for _ in c], dtype=torch.long)
    prompts = [t.format(s) for s in synonyms for t in templates]
    emb = encode_prompts(model, prompts).view(len(synonyms), len(templates), -1)
    emb = F.normalize(F.normalize(emb, dim=-1).mean(1), dim=-1)  # S×D
    return Vocabulary([c[0] for c in classes], emb, class_index.to(emb.device), reduce)
