"""A text encoder trained from scratch (S-Seg's): CLIP's BPE tokenizer (open_clip's,
shipped with it), a causal transformer, the end-of-text token's feature, a 2-layer MLP
into the joint space.

S-Seg (Lai, CVPR 2025) states 12 layers, width 256, end-of-text feature → 2-layer MLP →
256-d; the tokenizer, context length, heads, MLP activation and norm placement are not
stated: CLIP's choices here (BPE, 77 tokens, 64-wide heads, pre-norm blocks, GELU), each a
field of ``TextConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TextConfig:
    width: int = 256
    layers: int = 12
    heads: int = 4  # width / 64 (CLIP's head width)
    context_length: int = 77
    vocab_size: int = 49408  # CLIP BPE
    mlp_ratio: float = 4.0
    embed_dim: int = 256  # joint space
    head_hidden: int = 256  # the 2-layer MLP's hidden width
    dropout: float = 0.0


def projection_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The 2-layer MLP into the joint space: Linear → GELU → Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class TextEncoder(nn.Module):
    """Strings → ``T×embed_dim`` (not normalised) through a causal transformer and the
    end-of-text token (the highest token id of each row, as CLIP pools)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        import open_clip

        self.cfg = cfg
        self.tokenizer = open_clip.SimpleTokenizer(context_length=cfg.context_length)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, int(cfg.width * cfg.mlp_ratio), cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.head = projection_mlp(cfg.width, cfg.head_hidden, cfg.embed_dim)
        mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:  # CLIP's text-tower init scales
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.positional_embedding.device)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``T×L`` token ids → ``T×embed_dim``."""
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = self.transformer(x, mask=self.attn_mask[:n, :n], is_causal=True)
        x = self.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # T×width
        return self.head(eot)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Strings → ``T×embed_dim`` L2-normalised (inference)."""
        out = [F.normalize(self(self.tokenize(texts[i:i + batch_size])).float(), dim=-1)
               for i in range(0, len(texts), batch_size)]
        dev = self.positional_embedding.device
        return torch.cat(out) if out else torch.zeros(0, self.cfg.embed_dim, device=dev)
