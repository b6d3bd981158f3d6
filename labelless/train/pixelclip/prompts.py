"""Learnable class prompts of PixelCLIP: k cluster embeddings from the frozen text tower.

Each of the k prompts is the template ``'A photo of a {} {} {} {} in the scene'`` whose
four ``{}`` token embeddings are replaced by learnable vectors. The sequence goes
through the frozen open_clip text tower (positional embedding, transformer, ln_final),
is pooled at the end-of-text token and projected: ``k×D``, L2-normalised here.

What follows the official code (cvlab-kaist/PixelCLIP @ 42f5c9c,
``pixelclip/modeling/transformer/pixelclip_predictor.py``):
- the template is ``'A photo of a {}in the scene'.format('{} ' * length)`` and the
  placeholders are found as the token id of ``{}`` (39025 in the CLIP BPE);
- initial vectors: ``token_embedding(randint(vocab_size - 10, (k, length)))`` drawn
  right after ``torch.manual_seed(0)``; here the ids come from a CPU
  ``torch.Generator`` seeded with ``seed``, which draws the same ids for seed 0;
- pooling as open_clip's ``encode_text`` (``text_global_pool`` on the template's token
  ids: argmax = the end-of-text token, which the placeholder id does not exceed);
- training uses the single template (``PROMPT_ENSEMBLE_TYPE: single``).

The official code normalises the embeddings where it uses them; here they are
returned normalised.

``words`` (labelless option, not in the paper): draw the initial ids from the tokens of
these words instead of the whole vocabulary. For a CLIP trained from scratch on a small
caption vocabulary (the tiny CamVid CLIP knows only the class names and the caption
template) most of the 49k ids are untrained embeddings, so the paper's init gives k nearly
identical prompts (mean cosine 0.97 between them on the CamVid CLIP); random words of the
vocabulary the text tower was trained on are the same recipe for such a model (0.72).
In the CamVid experiment it trained no better than the paper's draw
(experiments/pixelclip_camvid/NOTES.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import ConfigError, SettingError

TEMPLATE = "A photo of a {}in the scene"  # .format("{} " * length)
PLACEHOLDER = "{}"


def text_tower(clip: nn.Module) -> nn.Module:
    """The module holding the text tower's parts (open_clip ``CLIP`` or ``CustomTextCLIP.text``)."""
    tower = clip if hasattr(clip, "token_embedding") else getattr(clip, "text", None)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    if tower is None or not all(hasattr(tower, a) for a in needed) or getattr(tower, "cls_emb", None) is not None:
        raise SettingError(f"{type(clip).__name__}: class prompts need an open_clip causal text transformer "
                         "(token_embedding, positional_embedding, transformer, ln_final, text_projection)")
    return tower


class ClassPrompts(nn.Module):
    """k learnable prompts → ``k×D`` normalised text embeddings.

    Only ``self.prompts`` (``k×length×width``) is a parameter of this module. The text
    tower is held by reference (not registered: it belongs to the CLIP model that owns
    it, so it is neither duplicated in ``state_dict`` nor moved separately) and is set to
    ``requires_grad=False``; gradients reach the prompts through it.

    Args:
        clip: the open_clip CLIP model (its text tower is used, frozen).
        tokenizer: the open_clip tokenizer of that model (callable on a list of strings,
            with ``encode``).
        num_prompts: k.
        length: learnable tokens per prompt.
        seed: seed of the random vocabulary ids of the initial vectors.
        words: None (the paper: ids uniform over the vocabulary) or words whose token ids
            the initial ids are drawn from (uniformly over the distinct ids).
    """

    def __init__(self, clip: nn.Module, tokenizer, num_prompts: int = 64, length: int = 4, seed: int = 0,
                 words: list[str] | None = None):
        super().__init__()
        tower = text_tower(clip)
        for p in tower.parameters() if tower is not clip else _text_parameters(clip):
            p.requires_grad_(False)
        self.__dict__["_tower"] = tower  # by reference, not a submodule
        self.num_prompts = num_prompts
        self.length = length

        ids = tokenizer.encode(PLACEHOLDER)
        if len(ids) != 1:
            raise ValueError(f"the tokenizer splits {PLACEHOLDER!r} into {len(ids)} tokens")
        tokens = tokenizer([TEMPLATE.format(f"{PLACEHOLDER} " * length)])[:1].long()  # 1×L
        slots = (tokens[0] == ids[0]).nonzero().flatten()
        if len(slots) != length:
            raise ValueError(f"found {len(slots)} placeholder slots in the template, expected {length}")
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("slots", slots, persistent=False)

        emb = tower.token_embedding
        gen = torch.Generator().manual_seed(seed)
        if words:
            pool = sorted({i for w in words for i in tokenizer.encode(w)})
            if not pool:
                raise ConfigError(f"prompt init words {list(words)!r} give no tokens")
            ids = torch.tensor(pool)[torch.randint(len(pool), (num_prompts, length), generator=gen)]
        else:
            ids = torch.randint(emb.num_embeddings - 10, (num_prompts, length), generator=gen)
        with torch.no_grad():
            init = emb(ids.to(emb.weight.device)).float()  # k×length×width
        self.prompts = nn.Parameter(init)

    @property
    def tower(self) -> nn.Module:
        return self.__dict__["_tower"]

    def forward(self) -> torch.Tensor:
        """``k×D`` L2-normalised cluster embeddings (differentiable w.r.t. the prompts)."""
        tower = self.tower
        cast = tower.transformer.get_cast_dtype() if hasattr(tower.transformer, "get_cast_dtype") \
            else tower.token_embedding.weight.dtype
        k = self.num_prompts
        text = self.tokens.expand(k, -1)  # k×L
        x = tower.token_embedding(self.tokens).to(cast).expand(k, -1, -1).clone()  # k×L×W
        x[:, self.slots] = self.prompts.to(cast)
        x = x + tower.positional_embedding.to(cast)
        x = tower.transformer(x, attn_mask=tower.attn_mask)
        x = tower.ln_final(x)
        x = _pool(tower, x, text)  # k×W
        proj = tower.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Module) else x @ proj
        return F.normalize(x.float(), dim=-1)


def _text_parameters(clip: nn.Module):
    """Parameters of an open_clip ``CLIP`` that belong to the text side (all but visual)."""
    for name, p in clip.named_parameters():
        if not name.startswith("visual."):
            yield p


def _pool(tower: nn.Module, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    from open_clip.transformer import text_global_pool

    pooled = text_global_pool(x, text, getattr(tower, "text_pool_type", "argmax"),
                              eos_token_id=getattr(tower, "text_eos_id", None))
    return pooled[0] if isinstance(pooled, tuple) else pooled
