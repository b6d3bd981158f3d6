"""Run configs: flat YAML → typed dataclass, key=value overrides, the shipped configs
hold the paper's schedule, the resolved config round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelless.train.clip.config import ClipConfig
from labelless.train.config import load_config, make_config, parse_overrides, save_config
from labelless.train.pixelclip.config import PixelCLIPConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = {
    "pixelclip_vitb16_sam.yaml": ("ViT-B-16", "openai", 320, 100.0, "attention", "sa1b"),
    "pixelclip_vitb16_dino.yaml": ("ViT-B-16", "openai", 320, 100.0, "attention", "dino"),
    "pixelclip_convnextb_sam.yaml": ("convnext_base_w_320", "laion_aesthetic_s13b_b82k", 640, 1.0, "full", "sa1b"),
    "pixelclip_convnextb_dino.yaml": ("convnext_base_w_320", "laion_aesthetic_s13b_b82k", 640, 1.0, "full", "dino"),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_hold_the_paper_schedule(name):
    cfg = load_config(PixelCLIPConfig, CONFIGS / name)
    model, pretrained, resolution, scale, finetune, masks = PAPER[name]
    assert (cfg.model, cfg.pretrained, cfg.resolution, cfg.cluster_scale, cfg.finetune, cfg.masks) == \
        (model, pretrained, resolution, scale, finetune, masks)
    assert (cfg.batch_size, cfg.max_steps, cfg.lr, cfg.clip_lr_mult, cfg.prompt_lr_mult) == \
        (48, 10000, 2e-4, 0.01, 10.0)
    assert (cfg.weight_decay, cfg.lr_end, cfg.warmup_steps, cfg.grad_clip) == (1e-4, 0.5, 0, 0.01)
    assert (cfg.tf32, cfg.amp, cfg.num_clusters, cfg.prompt_length, cfg.mask_size, cfg.ema) == \
        (True, "none", 64, 4, 256, 0.999)
    assert (cfg.short_side, cfg.crop_size, cfg.strong_aug, cfg.sinkhorn_iters) == (1024, 640, True, 3)
    assert cfg.sa1b_tars and cfg.load_short_side == 750
    if masks == "dino":
        assert (cfg.dino_model, cfg.dino_k) == ("facebook/dino-vits16", 16)


def test_defaults_are_the_vit_sam_row():
    defaults = PixelCLIPConfig(mask_store="x")
    row = load_config(PixelCLIPConfig, CONFIGS / "pixelclip_vitb16_sam.yaml")
    for key in ("batch_size", "max_steps", "lr", "clip_lr_mult", "prompt_lr_mult", "weight_decay", "lr_end",
                "grad_clip", "num_clusters", "mask_size", "ema", "resolution", "short_side", "crop_size"):
        assert getattr(defaults, key) == getattr(row, key), key


def test_tiny_configs_load():
    tiny = load_config(PixelCLIPConfig, CONFIGS / "pixelclip_tiny_cpu.yaml")
    assert tiny.model == "tiny-vit" and tiny.device == "cpu" and tiny.masks == "dino"
    clip = load_config(ClipConfig, CONFIGS / "clip_tiny_camvid.yaml")
    assert clip.dataset == "camvid" and clip.data == "benchmark"


def test_overrides_are_typed():
    assert parse_overrides(["lr=1e-4", "exit_at=null", "name=x=y"]) == {"lr": "1e-4", "exit_at": None, "name": "x=y"}
    cfg = load_config(PixelCLIPConfig, CONFIGS / "pixelclip_vitb16_sam.yaml",
                      ["lr=1e-4", "max_steps=20", "tf32=false", "sa1b_tars=a.tar,b.tar", "grad_clip=none",
                       "max-masks=100", "exit_at=5", "pretrained=none"])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.max_steps == 20 and cfg.tf32 is False and cfg.sa1b_tars == ["a.tar", "b.tar"]
    assert cfg.grad_clip is None and cfg.max_masks == 100 and cfg.exit_at == 5
    assert cfg.pretrained is None  # "none" / "null": random weights


@pytest.mark.parametrize("override, message", [
    (["lrr=1"], "unknown key"),
    (["max_steps=ten"], "max_steps: expected an integer"),
    (["tf32=maybe"], "tf32: expected true/false"),
    (["lr"], "not key=value"),
    (["masks=sam"], "masks must be store, sa1b or dino"),
    (["masks=store", "mask_store=null"], "needs mask_store"),
    (["batch_size=50", "masks=store", "mask_store=s"], None),
])
def test_bad_values_are_named(override, message):
    if message is None:
        load_config(PixelCLIPConfig, CONFIGS / "pixelclip_vitb16_sam.yaml", override)
        return
    with pytest.raises(ValueError, match=message):
        load_config(PixelCLIPConfig, CONFIGS / "pixelclip_vitb16_sam.yaml", override)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(PixelCLIPConfig, tmp_path / "missing.yaml")
    (tmp_path / "nested.yaml").write_text("optim:\n  lr: 1\n")
    with pytest.raises(ValueError, match="flat mapping"):
        load_config(PixelCLIPConfig, tmp_path / "nested.yaml")
    with pytest.raises(ValueError, match="caption_template"):
        make_config(ClipConfig, {"data_root": "x", "caption_template": "no placeholder"})


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(PixelCLIPConfig, CONFIGS / "pixelclip_convnextb_dino.yaml", ["lr=3e-4", f"run_dir={tmp_path}"])
    path = save_config(cfg, tmp_path)
    assert path == tmp_path / "config.yaml"
    assert load_config(PixelCLIPConfig, path) == cfg


def test_prompt_words_reach_the_model():
    import torch

    from labelless.train.pixelclip.build import build_model

    cfg = load_config(PixelCLIPConfig, CONFIGS / "pixelclip_tiny_cpu.yaml",
                      ["prompt_words=road,sign symbol", "pretrained=none", "num_clusters=6"])
    assert cfg.prompt_words == ["road", "sign symbol"]
    torch.manual_seed(0)
    model = build_model(cfg)
    tok = model.student.tokenizer
    pool = model.student.clip.token_embedding.weight.detach()[sorted({i for w in cfg.prompt_words
                                                                     for i in tok.encode(w)})]
    slots = model.prompts.prompts.detach().reshape(-1, pool.shape[1])
    assert (slots[:, None] == pool[None]).all(dim=-1).any(dim=1).all()
    paper = build_model(load_config(PixelCLIPConfig, CONFIGS / "pixelclip_tiny_cpu.yaml",
                                    ["pretrained=none", "num_clusters=6"]))
    assert load_config(PixelCLIPConfig, CONFIGS / "pixelclip_tiny_cpu.yaml").prompt_words == []
    assert not (paper.prompts.prompts.detach().reshape(-1, pool.shape[1])[:, None] == pool[None]).all(-1).any(1).all()


def test_options_maps_are_the_one_nesting_allowed(tmp_path):
    from labelless.train.selftrain.config import SelfTrainConfig

    (tmp_path / "s.yaml").write_text("dataset: camvid\ndata_root: x\nstore: y\nbackbone_options: {width: 32}\n")
    cfg = load_config(SelfTrainConfig, tmp_path / "s.yaml", ["backbone_options={width: 8, img_size: 64}"])
    assert cfg.backbone_options == {"width": 8, "img_size": 64}
    with pytest.raises(ValueError, match="one-level"):
        load_config(SelfTrainConfig, tmp_path / "s.yaml", ["backbone_options=7"])


def test_every_shipped_config_loads():
    """configs/*.yaml parse into their method's config (store/data paths need not exist)."""
    from labelless.train.selftrain.config import SelfTrainConfig
    from labelless.train.sseg.config import SSegTrainConfig

    kinds = {"pixelclip": PixelCLIPConfig, "clip": ClipConfig, "sseg": SSegTrainConfig, "selftrain": SelfTrainConfig}
    needs = {"sseg": ["shards=[x.tar]"]}  # what the paper configs leave to the command line
    for path in sorted(CONFIGS.glob("*.yaml")):
        kind = path.stem.split("_")[0]
        if kind == "compare":  # labelless compare configs, not a training run: tests/test_compare.py
            continue
        cls = kinds[kind]
        try:
            cfg = load_config(cls, path)
        except ValueError:
            cfg = load_config(cls, path, needs.get(kind, []))
        assert isinstance(cfg, cls), path
