"""PixelCLIP's training model: student CLIP + momentum teacher + class prompts + decoder.

One step (``forward_train``), as ../shared/METHODS.md (the project's method notes) and the official code
(cvlab-kaist/PixelCLIP @ 42f5c9c, ``pixelclip/pixelclip.py``, ``PixelCLIP.forward``):

1. teacher (EMA copy of the image encoder, no grad) → dense features of the WEAK image;
2. masks nearest-resized to ``mask_size``, ≤ 1-pixel masks dropped; teacher features
   upsampled bilinearly to ``mask_size`` and averaged in every mask;
3. cluster embeddings = ``ClassPrompts()`` (k×D, through the frozen text tower);
   logits = ``logit_scale`` · cos(mask feature, cluster embedding);
4. Sinkhorn (3 iterations, equipartition over the global batch) → hard argmax;
   masks of an image with the same cluster merged (union) → targets ``B×k×S×S``;
5. student dense features of the STRONG image; per-cluster cosine maps
   ``[B·k, 1, h, w]`` (no temperature) → decoder → ``B×k×S×S`` logits;
6. loss = BCE-with-logits at pixels that some mask covers, all k channels.

The prompts get gradients only through step 5 (Sinkhorn and the assignment are
computed without gradients, as in the official code where they are argmaxed).

**Teacher update (who calls it).** ``forward_train`` never changes the teacher. The
training loop calls ``model.update_teacher()`` exactly once per optimizer step,
before that step's first ``forward_train`` (so after the previous
``optimizer.step()``): the teacher seen by step t is ``γ·teacher + (1−γ)·student`` with
the student weights after step t−1. This is the official order ("updated every step
before the teacher forward"); the official code does it inside its forward, which with
gradient accumulation would update once per micro-batch; here it is once per step.
``num_teacher_updates`` counts the calls (saved in the state dict; reported in the stats).

**Modes.** The teacher is an ordinary submodule and follows ``train()``/``eval()``, as in
the official code (only matters for towers with dropout / drop-path, e.g. the
ConvNeXt-B drop-path 0.1 of open_clip's ``convnext_base_w_320``).

**Images.** ``image_weak`` / ``image_strong`` are used at the size they come in (the
CLIP resolution, 320 for ViT-B/16, 640 for ConvNeXt-B; the data pipeline resizes);
ViT positional embeddings are resized bicubically on the fly, so the trainable
positional embedding keeps its original grid, as in the official code.

**Trainable parameters** (official ``CLIP_FINETUNE``): ViT "attention" = student visual
parameters whose name contains ``attn`` or ``position`` (in_proj, out_proj of every block,
the positional embedding; in a timm ViT tower, kind "timm-vit" such as a LiT DINOv2, the
blocks' ``attn.*`` and ``pos_embed``, and an attention-pool head ``attn_pool.*`` where there
is one); ConvNeXt "full" = the whole visual tower; the text tower and
``logit_scale`` frozen; the prompt vectors and the decoder trainable; the teacher frozen.

**Optimiser groups** (official ``train_net.py`` ``build_optimizer``): CLIP parameters
lr × ``clip_mult`` (0.01), prompt tokens lr × ``prompt_mult`` (10), decoder lr × 1; weight
decay 1e-4 except parameters of normalisation layers (GroupNorm, LayerNorm, …), which get
``norm_weight_decay`` (detectron2's ``WEIGHT_DECAY_NORM`` default 0.0).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import ConfigError, WeightsError
from labelless.masks.pooling import mask_pool, prepare_masks
from labelless.models.clip import DenseCLIP, save_checkpoint, visual_dense_features
from labelless.train.ema import ema_update, make_teacher
from labelless.train.pixelclip.clustering import assign_clusters, merge_masks, pixelclip_loss, sinkhorn
from labelless.train.pixelclip.decoder import UpsampleDecoder
from labelless.train.pixelclip.prompts import ClassPrompts

FINETUNE = ("attention", "full", "none")
NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)


def trainable_visual(name: str, finetune: str) -> bool:
    """Whether visual parameter ``name`` (relative to the tower) is trained."""
    if finetune == "full":
        return True
    if finetune == "attention":
        return "attn" in name or "position" in name or "pos_embed" in name
    return False


class PixelCLIPModel(nn.Module):
    """PixelCLIP training model around a ``DenseCLIP`` student.

    Args:
        dense_clip: the student (``build_clip(...)``); its text tower is frozen here.
        num_clusters: k learnable class prompts (64).
        prompt_len: learnable tokens per prompt (4).
        logit_scale: scale of the cosine logits before Sinkhorn; None → 100 (ViT), 1 (ConvNeXt).
        ema_gamma: teacher momentum (0.999).
        mask_size: side at which masks are pooled and merged (256).
        decoder_size: side of the decoder output and the loss; None → ``mask_size``
            (targets are nearest-resized when it differs).
        prompt_seed: seed of the random vocabulary ids that initialise the prompts.
        prompt_words: None (the paper) or words the initial prompt ids are drawn from
            (see ``ClassPrompts``).
        feature_mode: ViT dense mode of student and teacher; None → "pixelclip"
            (ConvNeXt and timm ViTs without a class token: "vanilla", the per-location head).
            ViT here and below: open_clip ViTs and timm ViT towers (kind "timm-vit") alike.
        sinkhorn_iters: Sinkhorn iterations (3).
        finetune: "attention" | "full" | "none"; None → "attention" (ViT), "full" (ConvNeXt).
        min_mask_pixels: masks with fewer pixels at ``mask_size`` are dropped (2).
    """

    def __init__(self, dense_clip: DenseCLIP, num_clusters: int = 64, prompt_len: int = 4,
                 logit_scale: float | None = None, ema_gamma: float = 0.999, mask_size: int = 256,
                 decoder_size: int | None = None, prompt_seed: int = 0, feature_mode: str | None = None,
                 sinkhorn_iters: int = 3, finetune: str | None = None, min_mask_pixels: int = 2,
                 prompt_words: list[str] | None = None):
        super().__init__()
        self.student = dense_clip
        self.kind = dense_clip.kind
        vit = self.kind in ("vit", "timm-vit")
        self.feature_mode = feature_mode or ("pixelclip" if "pixelclip" in dense_clip.modes else "vanilla")
        dense_clip.check_mode(self.feature_mode)
        self.logit_scale = float(logit_scale if logit_scale is not None else (100.0 if vit else 1.0))
        self.finetune = finetune or ("attention" if vit else "full")
        if self.finetune not in FINETUNE:
            raise ConfigError(f"finetune must be one of {FINETUNE}, got {self.finetune!r}")
        if self.finetune == "attention" and not vit:
            raise ConfigError("finetune='attention' selects ViT parameters; use 'full' for ConvNeXt")
        self.ema_gamma = float(ema_gamma)
        self.num_clusters = num_clusters
        self.mask_size = int(mask_size)
        self.decoder_size = int(decoder_size or mask_size)
        self.sinkhorn_iters = int(sinkhorn_iters)
        self.min_mask_pixels = int(min_mask_pixels)

        for p in dense_clip.clip.parameters():
            p.requires_grad_(False)
        for name, p in dense_clip.clip.visual.named_parameters():
            p.requires_grad_(trainable_visual(name, self.finetune))
        self.teacher = make_teacher(dense_clip.clip.visual)
        self.prompts = ClassPrompts(dense_clip.clip, dense_clip.tokenizer, num_clusters, prompt_len, prompt_seed,
                                    prompt_words)
        self.decoder = UpsampleDecoder(self.decoder_size)
        self.register_buffer("num_teacher_updates", torch.zeros((), dtype=torch.long))
        self.to(dense_clip.mean.device)

    # ------------------------------------------------------------------ parameters
    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of everything the optimiser updates."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates (student visual subset, prompts, decoder)."""
        return [p for _, p in self.named_trainable_parameters()]

    def param_groups(self, base_lr: float, clip_mult: float = 0.01, prompt_mult: float = 10.0,
                     weight_decay: float = 1e-4, norm_weight_decay: float = 0.0) -> list[dict]:
        """AdamW parameter groups with the paper's lr multipliers.

        Returns groups (empty ones left out) named ``clip``, ``clip_norm``, ``prompts``,
        ``decoder``, ``decoder_norm``; each has ``params``, ``lr`` (= base_lr × ``lr_mult``),
        ``lr_mult``, ``weight_decay`` and ``name``. A scheduler that scales ``lr`` per step
        should start from each group's own initial ``lr`` (e.g. ``LambdaLR``).
        """
        mults = {"clip": clip_mult, "prompts": prompt_mult, "decoder": 1.0}
        groups: dict[str, dict] = {}
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for _, p in module.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                top = module_name.split(".")[0]
                part = {"student": "clip", "prompts": "prompts", "decoder": "decoder"}.get(top)
                if part is None:
                    raise RuntimeError(f"trainable parameter in unexpected module {module_name!r}")
                norm = isinstance(module, NORM_TYPES)
                key = part + ("_norm" if norm else "")
                g = groups.setdefault(key, {"name": key, "params": [], "lr": base_lr * mults[part],
                                            "lr_mult": mults[part],
                                            "weight_decay": norm_weight_decay if norm else weight_decay})
                g["params"].append(p)
        order = ["clip", "clip_norm", "prompts", "decoder", "decoder_norm"]
        return [groups[k] for k in order if k in groups]

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def update_teacher(self) -> None:
        """One EMA step ``teacher ← γ·teacher + (1−γ)·student visual``. Call once per
        optimizer step, before that step's first ``forward_train`` (see module docstring)."""
        ema_update(self.teacher, self.student.clip.visual, self.ema_gamma)
        self.num_teacher_updates += 1

    # ------------------------------------------------------------------ features
    def _dense(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``B×3×H×W`` → dense features ``B×D×h×w`` of ``visual``."""
        return visual_dense_features(self.kind, visual, images, self.feature_mode)

    def cluster_embeddings(self) -> torch.Tensor:
        """``k×D`` L2-normalised embeddings of the class prompts."""
        return self.prompts()

    @torch.no_grad()
    def cluster_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Cosine of the student's dense features with every cluster: images in [0, 1]
        ``B×3×H×W`` → ``B×k×h×w`` (argmax over k = the cluster map)."""
        feats = F.normalize(self._dense(self.student.clip.visual, self.student.normalize(images)), dim=1)
        return torch.einsum("kd,bdhw->bkhw", self.prompts().to(feats.dtype), feats)

    # ------------------------------------------------------------------ training step
    def forward(self, batch: dict) -> dict:
        """Same as ``forward_train`` (so a ``DistributedDataParallel`` wrapper can call it)."""
        return self.forward_train(batch)

    def forward_train(self, batch: dict) -> dict:
        """One PixelCLIP training step (without the teacher update).

        Args:
            batch: ``image_weak``, ``image_strong``: float ``B×3×S×S`` in [0, 1] at the CLIP
                resolution; ``masks``: bool ``B×M×H×W`` (any H×W, resized here to
                ``mask_size``); ``valid``: bool ``B×M``.

        Returns:
            ``{"loss": scalar, "stats": {name: detached scalar tensor}, "assign": B×M long}``
            (``assign``: the cluster of every mask, 0 where not valid); stats:
            ``num_masks`` (masks used on this rank), ``clusters_used`` (distinct clusters
            assigned on this rank), ``coverage`` (fraction of covered pixels),
            ``assign_confidence`` (mean max of the Sinkhorn rows), ``teacher_updates``.
        """
        k = self.num_clusters
        weak = self.student.normalize(batch["image_weak"])
        strong = self.student.normalize(batch["image_strong"])
        masks, valid = prepare_masks(batch["masks"].to(weak.device), batch["valid"].to(weak.device),
                                     self.mask_size, self.min_mask_pixels)
        clusters = self.prompts()  # k×D, differentiable w.r.t. the prompt vectors

        with torch.no_grad():
            teacher_feats = self._dense(self.teacher, weak).float()  # B×D×h×w
        # clustering in float32 even under autocast; no gradients (Sinkhorn + argmax)
        with torch.no_grad(), torch.autocast(weak.device.type, enabled=False):
            pooled = mask_pool(teacher_feats, masks, valid)  # B×M×D
            logits = self.logit_scale * F.normalize(pooled[valid], dim=-1) @ clusters.detach().float().T
            q = sinkhorn(logits, self.sinkhorn_iters)  # collective under DDP: every rank calls it
            assign = torch.zeros(valid.shape, dtype=torch.long, device=weak.device)
            assign[valid] = assign_clusters(q)
            targets, covered = merge_masks(masks, valid, assign, k)
            if self.decoder_size != self.mask_size:
                size = (self.decoder_size, self.decoder_size)
                targets = F.interpolate(targets, size=size, mode="nearest")
                covered = F.interpolate(covered[:, None].float(), size=size, mode="nearest")[:, 0].bool()

        feats = F.normalize(self._dense(self.student.clip.visual, strong), dim=1)  # B×D×h×w
        b, _, h, w = feats.shape
        cos = torch.einsum("kd,bdhw->bkhw", clusters.to(feats.dtype), feats)  # B×k×h×w
        mask_logits = self.decoder(cos.reshape(b * k, 1, h, w))
        mask_logits = mask_logits.reshape(b, k, *mask_logits.shape[-2:])
        loss = pixelclip_loss(mask_logits, targets, covered)

        stats = {
            "num_masks": valid.sum().detach(),
            "clusters_used": assign[valid].unique().numel() * torch.ones((), device=weak.device),
            "coverage": covered.float().mean().detach(),
            "assign_confidence": q.max(dim=-1).values.mean() if q.numel() else torch.zeros((), device=weak.device),
            "teacher_updates": self.num_teacher_updates.detach().clone(),
        }
        return {"loss": loss, "stats": stats, "assign": assign}

    # ------------------------------------------------------------------ official weights
    @torch.no_grad()
    def load_official(self, parts: dict, source: str = "checkpoint") -> None:
        """EMA teacher, class prompts and decoder from an official PixelCLIP checkpoint
        (``models.convert.pixelclip_parts``; the student CLIP is built from the same file).
        Every part must be present and match exactly."""
        prompts = parts.get("prompts")
        if prompts is None or tuple(prompts.shape) != tuple(self.prompts.prompts.shape):
            got = None if prompts is None else tuple(prompts.shape)
            raise ConfigError(f"{source}: prompt tokens {got} do not fit this model's "
                             f"{tuple(self.prompts.prompts.shape)} (num_clusters × prompt_length × width)")
        for part, module in (("teacher", self.teacher), ("decoder", self.decoder)):
            missing, unexpected = module.load_state_dict(parts.get(part) or {}, strict=False)
            if missing or unexpected:
                raise WeightsError(f"{source}: the {part} weights do not match: {len(missing)} missing "
                                 f"{missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}")
        self.prompts.prompts.copy_(prompts)

    # ------------------------------------------------------------------ export
    def export_clip(self, path: str | os.PathLike, **meta) -> Path:
        """Write the student CLIP as a labelless checkpoint (``build_clip(name, path)``,
        ``labelless eval --pretrained PATH --mode pixelclip``). Returns the path."""
        meta = {"trained_with": "pixelclip", "dense_mode": self.feature_mode, **meta}
        return save_checkpoint(self.student, path, **meta)
