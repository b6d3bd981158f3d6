"""Official PixelCLIP checkpoints → labelless CLIP checkpoints, on fabricated checkpoints
in the official key layout (detectron2 ``{"model": state_dict}`` of the PixelCLIP
meta-architecture: ``sem_seg_head.predictor.clip_model.*``, ``teacher_encoder.*``,
``head.*``, ``dino.*``)."""

from __future__ import annotations

import pytest
import torch
from _train_fixtures import one_thread  # noqa: F401 (autouse: one intra-op thread)

from labelless.cli import main as labelless_main
from labelless.models.clip import WeightsError, build_clip, read_state_dict
from labelless.models.convert import (
    clip_arch,
    convert_pixelclip,
    guess_model_name,
    pixelclip_clip_state_dict,
)


def main(argv):
    return labelless_main(["convert", *argv])


def fabricate(dense, dino: bool = False, teacher_shift: float = 1.0) -> tuple[dict, dict, dict]:
    """An official-layout checkpoint around ``dense.clip``: returns (checkpoint, student, teacher)."""
    student = {k: v.clone() for k, v in dense.clip.state_dict().items()}
    teacher = {k: (v + teacher_shift if v.is_floating_point() else v.clone())
               for k, v in student.items() if not k.startswith("transformer.")}  # text transformer removed
    model = {f"sem_seg_head.predictor.clip_model.{k}": v for k, v in student.items()}
    # entries of OpenAI's state dict / old open_clip that are not model weights
    model["sem_seg_head.predictor.clip_model.input_resolution"] = torch.tensor(224)
    model["sem_seg_head.predictor.clip_model.attn_mask"] = torch.zeros(77, 77)
    model.update({f"teacher_encoder.{k}": v for k, v in teacher.items()})
    model["sem_seg_head.predictor.prompt_tokens"] = torch.randn(8, 4, 64)
    model["head.conv0.weight"] = torch.randn(64, 1, 3, 3)
    model["head.proj.bias"] = torch.randn(1)
    if dino:
        model["dino.blocks.0.attn.qkv.weight"] = torch.randn(1152, 384)
    return {"model": model, "iteration": 9999, "__author__": "fabricated"}, student, teacher


def _rebuilt(dense, quick_gelu: bool):
    """``dense``'s weights in an open_clip model of its config with the given activation."""
    import open_clip

    from labelless.models.clip import DenseCLIP, tiny_model_config

    clip = open_clip.CLIP(**{**tiny_model_config(dense.name), "quick_gelu": quick_gelu})
    clip.load_state_dict(dense.clip.state_dict())
    return DenseCLIP(clip, dense.tokenizer, dense.mean.flatten().tolist(), dense.std.flatten().tolist(), "ref").eval()


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-convnext"])
def test_convert_student_and_teacher(tmp_path, name, request):
    dense = request.getfixturevalue(name.replace("-", "_"))
    ckpt, student, teacher = fabricate(dense, dino=name == "tiny-vit")
    src = tmp_path / "pixelclip_official.pth"
    torch.save(ckpt, src)

    out = convert_pixelclip(src, tmp_path / "student.pt", model=name)
    state, meta = read_state_dict(out)
    assert meta["format"] == "labelless-clip" and meta["model"] == name and meta["which"] == "student"
    assert state.keys() == student.keys()
    assert all(torch.equal(state[k], student[k]) for k in student)
    # loadable as --pretrained PATH: the same weights, built as PixelCLIP ran them
    # (a ViT is an OpenAI CLIP: QuickGELU; a ConvNeXt as open_clip builds it)
    loaded = build_clip(name, str(out))
    assert loaded.quick_gelu == (dense.kind == "vit") and meta["model_cfg"]["quick_gelu"] == loaded.quick_gelu
    ref = _rebuilt(dense, quick_gelu=loaded.quick_gelu)
    x = torch.randn(1, 3, 64, 64)
    mode = "pixelclip" if dense.kind == "vit" else "vanilla"
    with torch.no_grad():
        assert torch.allclose(loaded.dense_features(x, mode), ref.dense_features(x, mode), atol=1e-6)

    out = convert_pixelclip(src, tmp_path / "teacher.pt", model=name, which="teacher")
    state, _ = read_state_dict(out)
    for k, v in state.items():
        ref = teacher[k] if k.startswith("visual.") else student[k]
        assert torch.equal(v, ref), k


def test_arch_detection_and_name_guess(tiny_vit, tiny_convnext):
    assert clip_arch(tiny_vit.clip.state_dict()) == "vit"
    assert clip_arch(tiny_convnext.clip.state_dict()) == "convnext"
    def e(*shape):
        return torch.empty(*shape, device="meta")

    vit_b16 = {"visual.proj": e(768, 512), "visual.conv1.weight": e(768, 3, 16, 16),
               "visual.positional_embedding": e(197, 768), "text_projection": e(512, 512),
               "positional_embedding": e(77, 512), "token_embedding.weight": e(49408, 512), "ln_final.weight": e(512),
               **{f"visual.transformer.resblocks.{i}.attn.in_proj_weight": e(0) for i in range(12)},
               **{f"transformer.resblocks.{i}.attn.in_proj_weight": e(0) for i in range(12)}}
    assert guess_model_name(vit_b16) == "ViT-B-16"
    convnext_b = {"visual.trunk.stem.0.weight": torch.empty(128, 3, 4, 4)}
    assert guess_model_name(convnext_b) == "convnext_base_w_320"
    with pytest.raises(ValueError, match="pass model=NAME"):
        guess_model_name(tiny_vit.clip.state_dict())


def test_errors_name_the_problem(tmp_path, tiny_vit):
    torch.save({"model": {"backbone.x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="sem_seg_head.predictor.clip_model"):
        convert_pixelclip(tmp_path / "other.pth", tmp_path / "o.pt", model="tiny-vit")
    ckpt, _, _ = fabricate(tiny_vit)
    torch.save(ckpt, tmp_path / "vit.pth")
    with pytest.raises(WeightsError, match="does not match"):
        convert_pixelclip(tmp_path / "vit.pth", tmp_path / "o.pt", model="tiny-convnext")
    with pytest.raises(ValueError, match="student or teacher"):
        pixelclip_clip_state_dict(ckpt, "ema")


def test_module_cli(tmp_path, tiny_vit, capsys):
    ckpt, _, _ = fabricate(tiny_vit)
    torch.save(ckpt, tmp_path / "vit.pth")
    assert main(["pixelclip", str(tmp_path / "vit.pth"), str(tmp_path / "out.pt"), "--model", "tiny-vit"]) == 0
    assert (tmp_path / "out.pt").is_file()
    assert main(["pixelclip", str(tmp_path / "missing.pth"), str(tmp_path / "x.pt")]) == 2
    assert "not found" in capsys.readouterr().err
