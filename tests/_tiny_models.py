"""Tiny test models beyond the shipped CLIPs: a mask-classification model with the
``scorers.MaskClassifier`` interface (N mask logits + N mask embeddings, a text encoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyMaskClassifier(nn.Module):
    """A 4-stride conv stem; N mask logits from a 1×1 head; each mask's embedding is the
    sigmoid-weighted mean of the stem features, projected to D; texts are bags of CLIP BPE
    tokens."""

    image_size = (32, 32)
    stride = 4
    logit_scale = 10.0

    def __init__(self, num_masks: int = 5, dim: int = 16, seed: int = 0):
        super().__init__()
        import open_clip

        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Conv2d(8, num_masks, 1)
        self.proj = nn.Linear(8, dim)
        self.tokenizer = open_clip.SimpleTokenizer(context_length=16)
        self.words = nn.EmbeddingBag(49408, dim, mode="mean")
        self.embed_dim = dim
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)

    def mask_predictions(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.relu(self.stem(images))  # B×8×h×w
        logits = self.head(f)  # B×N×h×w
        w = logits.sigmoid().flatten(2)  # B×N×hw
        pooled = torch.einsum("bnp,bcp->bnc", w, f.flatten(2)) / w.sum(-1, keepdim=True).clamp(min=1e-6)
        return logits, self.proj(pooled)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.mean.device)
        offsets, flat = [], []
        for row in tokens:
            ids = row[row > 0]
            offsets.append(len(flat))
            flat.extend(ids.tolist())
        e = self.words(torch.tensor(flat, device=tokens.device), torch.tensor(offsets, device=tokens.device))
        return F.normalize(e, dim=-1)


def save_tiny_dino_vit(folder, patch: int = 8):
    """A random 2-layer DINO (v1) ``ViTModel`` (width 32, patch ``patch``) written with
    ``save_pretrained`` to ``folder``, for ``masks.dino.load_dino``."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=patch)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder
