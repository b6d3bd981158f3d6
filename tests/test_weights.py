"""Weight formats and the activation rule (QuickGELU for OpenAI-trained towers).

An "OpenAI-compatible" tiny CLIP is used where open_clip's own OpenAI loader is the
reference: 64-wide heads in both towers (OpenAI's convention, which that loader assumes)
and fp16-representable weights (OpenAI ships fp16; the loader rounds through fp16).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from open_clip.transformer import QuickGELU

from labelless.models.clip import build_clip, list_models, save_checkpoint
from labelless.models.convert import builtin_name_for, convert_pixelclip, vit_model_cfg
from labelless.models.weights import read_weights

OPENAI_TINY = {"embed_dim": 64, "quick_gelu": True,
               "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 8},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}}


def _x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _activation(dense):
    return type(dense.clip.visual.transformer.resblocks[0].mlp.gelu)


def _openai_tiny():
    """An open_clip CLIP in OpenAI's layout with fp16-representable weights."""
    import open_clip

    torch.manual_seed(11)
    model = open_clip.CLIP(**OPENAI_TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def _openai_state(model) -> dict:
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(49408))
    return state


def _reference(path):
    """open_clip's own OpenAI loader (torch.jit.load for archives, QuickGELU) as a DenseCLIP."""
    from open_clip.openai import load_openai_model

    from labelless.models.clip import OPENAI_MEAN, OPENAI_STD, DenseCLIP, make_tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_openai_model(str(path), precision="fp32", device="cpu")
    return DenseCLIP(clip, make_tokenizer("x", OPENAI_TINY), OPENAI_MEAN, OPENAI_STD, "ref").eval()


def _same_features(a, b, modes=("vanilla", "pixelclip")):
    with torch.no_grad():
        for mode in modes:
            torch.testing.assert_close(a.dense_features(_x(), mode), b.dense_features(_x(), mode), rtol=0, atol=1e-5)
        torch.testing.assert_close(a.encode_text(["a photo of a cat."]), b.encode_text(["a photo of a cat."]))


# ----------------------------------------------------------------------------- tags

def _spy_create_model(monkeypatch):
    """open_clip.create_model, recording its kwargs and building without any download."""
    import open_clip

    calls, real = [], open_clip.create_model

    def spy(name, pretrained=None, **kw):
        calls.append({"name": name, "pretrained": pretrained, **kw})
        return real(name, pretrained=None, force_quick_gelu=kw.get("force_quick_gelu", False), pretrained_text=False)

    monkeypatch.setattr(open_clip, "create_model", spy)
    return calls


def test_tag_trained_with_quick_gelu_is_built_with_it(monkeypatch):
    calls = _spy_create_model(monkeypatch)
    dense = build_clip("ViT-B-32", "openai")
    assert calls[-1]["pretrained"] == "openai" and calls[-1]["force_quick_gelu"] is True
    assert _activation(dense) is QuickGELU and dense.quick_gelu and dense.model_cfg["quick_gelu"] is True


def test_tag_trained_with_gelu_stays_gelu(monkeypatch):
    calls = _spy_create_model(monkeypatch)
    dense = build_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert calls[-1]["force_quick_gelu"] is False
    assert _activation(dense) is torch.nn.GELU and not dense.quick_gelu


def test_models_list_says_which_tags_need_quick_gelu():
    rows = {r["name"]: r for r in list_models()}
    assert "openai" in rows["ViT-B-16"]["quick_gelu_tags"]
    assert "laion2b_s34b_b88k" in rows["ViT-B-16"]["tags"]
    assert "laion2b_s34b_b88k" not in rows["ViT-B-16"]["quick_gelu_tags"]
    assert set(rows["ViT-B-16-quickgelu"]["quick_gelu_tags"]) == set(rows["ViT-B-16-quickgelu"]["tags"])


# ----------------------------------------------------------------------------- files

def test_openai_state_dict_file_loads_like_open_clips_openai_loader(tmp_path):
    path = tmp_path / "openai_tiny.pt"
    torch.save(_openai_state(_openai_tiny()), path)
    assert read_weights(path).format == "openai"
    dense = build_clip(None, str(path))  # architecture told from the shapes
    assert _activation(dense) is QuickGELU and dense.model_cfg == OPENAI_TINY
    _same_features(dense, _reference(path))


def test_torchscript_archive_loads_without_running_its_code(tmp_path, monkeypatch):
    model = _openai_tiny()
    mask = model.attn_mask
    del model.attn_mask, model.context_length, model.vocab_size
    model.attn_mask = mask  # a plain attribute, as in OpenAI's model (a constant of the trace)
    # OpenAI's archives hold these three as tensors
    for k in ("input_resolution", "context_length", "vocab_size"):
        model.register_buffer(k, torch.tensor({"input_resolution": 64}.get(k, 77 if k == "context_length" else 49408)))
    text = torch.randint(0, 49408, (1, 77))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (torch.randn(1, 3, 64, 64), text), check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    ref = _reference(path)  # open_clip: torch.jit.load

    def refuse(*a, **k):
        raise AssertionError("the archive was loaded as TorchScript")

    monkeypatch.setattr(torch.jit, "load", refuse)
    wf = read_weights(path)
    assert wf.format == "openai" and "input_resolution" not in wf.state
    dense = build_clip(None, str(path))
    assert _activation(dense) is QuickGELU
    _same_features(dense, ref)


def test_torchscript_archive_with_foreign_globals_is_refused(tmp_path):
    import zipfile

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.")
        z.writestr("evil/constants.pkl", b"\x80\x02).")
    from labelless.models.clip import WeightsError

    with pytest.raises(WeightsError, match="os.system"):
        build_clip(None, str(path))


def test_labelless_checkpoint_is_rebuilt_from_its_recorded_config(tmp_path):
    path = tmp_path / "openai_tiny.pt"
    torch.save(_openai_state(_openai_tiny()), path)
    dense = build_clip(None, str(path))
    saved = save_checkpoint(dense, tmp_path / "labelless.pt")
    meta = read_weights(saved).meta
    assert meta["model_cfg"]["quick_gelu"] is True and len(meta["mean"]) == 3
    for name in (None, "tiny-vit"):  # the recorded config wins over a name
        again = build_clip(name, str(saved))
        assert _activation(again) is QuickGELU
        _same_features(again, dense)


def test_plain_open_clip_file_follows_the_named_config(tmp_path, tiny_vit):
    torch.save(tiny_vit.clip.state_dict(), tmp_path / "plain.pt")
    assert read_weights(tmp_path / "plain.pt").format == "open_clip"
    assert _activation(build_clip("tiny-vit", str(tmp_path / "plain.pt"))) is torch.nn.GELU


def test_model_name_told_from_an_openai_vit_b16():
    def e(*shape):
        return torch.empty(*shape, device="meta")

    state = {"visual.conv1.weight": e(768, 3, 16, 16), "visual.positional_embedding": e(197, 768),
             "text_projection": e(512, 512), "positional_embedding": e(77, 512),
             "token_embedding.weight": e(49408, 512), "ln_final.weight": e(512),
             **{f"visual.transformer.resblocks.{i}.attn.in_proj_weight": e(1) for i in range(12)},
             **{f"transformer.resblocks.{i}.attn.in_proj_weight": e(1) for i in range(12)}}
    cfg = vit_model_cfg(state, quick_gelu=True)
    assert builtin_name_for(cfg) == "ViT-B-16" and cfg["quick_gelu"] is True
    state["visual.positional_embedding"] = e(577, 768)
    state["visual.conv1.weight"] = e(1024, 3, 14, 14)
    state.update({f"visual.transformer.resblocks.{i}.attn.in_proj_weight": e(1) for i in range(24)})
    state.update(text_projection=e(768, 768), ln_final_weight=e(768))
    state["ln_final.weight"] = e(768)
    assert builtin_name_for(vit_model_cfg(state, True)) == "ViT-L-14-336"


# ----------------------------------------------------------------------------- PixelCLIP

def _official(dense, k: int = 6, seed: int = 0) -> dict:
    """An official-layout PixelCLIP checkpoint around ``dense``: student, teacher, prompts,
    ConvHead (official key names: ``convN.double_conv.i``)."""
    from labelless.train.pixelclip.decoder import UpsampleDecoder

    g = torch.Generator().manual_seed(seed)
    student = {k_: v.clone() for k_, v in dense.clip.state_dict().items()}
    model = {f"sem_seg_head.predictor.clip_model.{k_}": v for k_, v in student.items()}
    model.update({f"teacher_encoder.{k_}": v + 0.5 for k_, v in student.items() if k_.startswith("visual.")})
    width = dense.clip.token_embedding.weight.shape[1]
    model["sem_seg_head.predictor.prompt_tokens"] = torch.randn(k, 4, width, generator=g)
    dec = UpsampleDecoder(256)
    for k_, v in dec.state_dict().items():
        name = k_.replace("conv1.", "conv1.double_conv.", 1) if k_.startswith("conv1.") else k_
        name = name.replace("conv2.", "conv2.double_conv.", 1) if name.startswith("conv2.") else name
        model[f"head.{name}"] = torch.randn(v.shape, generator=g)
    return {"model": model, "iteration": 9999}


def test_converted_official_vit_is_quick_gelu(tmp_path):
    dense = build_clip(None, str(_save(tmp_path, _openai_state(_openai_tiny()))))
    torch.save(_official(dense), tmp_path / "pixelclip_vit.pth")
    out = convert_pixelclip(tmp_path / "pixelclip_vit.pth", tmp_path / "converted.pt")
    converted = build_clip(None, str(out))
    assert _activation(converted) is QuickGELU and read_weights(out).meta["model_cfg"]["quick_gelu"]
    _same_features(converted, dense)
    direct = build_clip(None, str(tmp_path / "pixelclip_vit.pth"))  # --pretrained official.pth
    assert _activation(direct) is QuickGELU
    _same_features(direct, dense)


def test_official_convnext_stays_gelu(tmp_path, tiny_convnext):
    torch.save(_official(tiny_convnext), tmp_path / "pixelclip_convnext.pth")
    dense = build_clip("tiny-convnext", str(tmp_path / "pixelclip_convnext.pth"))
    assert dense.model_cfg.get("quick_gelu", False) is False
    _same_features(dense, tiny_convnext, modes=("vanilla",))


def _save(tmp_path, state):
    path = tmp_path / "openai_tiny.pt"
    torch.save(state, path)
    return path


def test_training_starts_from_an_official_checkpoint(tmp_path):
    from labelless.train.pixelclip.build import build_model, load_run
    from labelless.train.pixelclip.config import PixelCLIPConfig

    dense = build_clip(None, str(_save(tmp_path, _openai_state(_openai_tiny()))))
    official = _official(dense, k=6)
    torch.save(official, tmp_path / "pixelclip_vit.pth")
    o = official["model"]
    cfg = PixelCLIPConfig(model=None, pretrained="openai", init=str(tmp_path / "pixelclip_vit.pth"), num_clusters=6,
                      mask_size=32, resolution=64)
    model = build_model(cfg)
    assert _activation(model.student) is QuickGELU
    assert torch.equal(model.prompts.prompts, o["sem_seg_head.predictor.prompt_tokens"])
    assert torch.equal(model.decoder.conv1[0].weight, o["head.conv1.double_conv.0.weight"])
    assert torch.equal(model.decoder.proj.bias, o["head.proj.bias"])
    assert torch.equal(model.teacher.conv1.weight, o["teacher_encoder.visual.conv1.weight"])
    assert torch.equal(model.student.clip.visual.conv1.weight, o["sem_seg_head.predictor.clip_model.visual.conv1.weight"])
    # show-prompts reads the official file as a run: k and prompt length from its tokens
    shown, shown_cfg, _ = load_run(tmp_path / "pixelclip_vit.pth")
    assert shown_cfg.num_clusters == 6 and shown_cfg.resolution == 320
    torch.testing.assert_close(shown.cluster_embeddings(), model.cluster_embeddings())
    with pytest.raises(ValueError, match="prompt tokens"):
        build_model(PixelCLIPConfig(model=None, init=str(tmp_path / "pixelclip_vit.pth"), num_clusters=8))


def test_eval_with_an_openai_file_and_no_model_name(tmp_path):
    """The user's path: `labelless eval --pretrained FILE` without --model."""
    import json

    import numpy as np
    from PIL import Image

    from labelless.cli import main

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("sky\nroad\n")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 2, (24, 32), dtype=np.uint8)).save(root / "labels" / "a.png")
    weights = _save(tmp_path, _openai_state(_openai_tiny()))
    out = tmp_path / "out"
    assert main(["eval", "--dataset", "folder", "--data-root", str(root), "--pretrained", str(weights),
                 "--out", str(out), "--templates", "a photo of {}"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["activation"] == "quick_gelu" and res["model"].startswith("ViT-") and res["num_images"] == 1
