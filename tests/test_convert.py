"""Official PixelCLIP checkpoints → labelless CLIP checkpoints, on fabricated checkpoints
in the official key layout (detectron2 ``{"model": state_dict}`` of the PixelCLIP
meta-architecture: ``sem_seg_head.predictor.clip_model.*``, ``teacher_encoder.*``,
``head.*``, ``dino.*``)."""

from __future__ import annotations

import pytest
import torch
from _train_fixtures import one_thread  # noqa: F401 (autouse: one intra-op thread)

from labelless.models.clip import WeightsError, build_clip, read_state_dict
from labelless.models.convert import (
    clip_arch,
    convert_pixelclip,
    guess_model_name,
    main,
    pixelclip_clip_state_dict,
)


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
    # loadable as --pretrained PATH: same dense features as the original model
    loaded = build_clip(name, str(out))
    x = torch.randn(1, 3, 64, 64)
    mode = "pixelclip" if dense.kind == "vit" else "vanilla"
    assert torch.allclose(loaded.dense_features(x, mode), dense.dense_features(x, mode), atol=1e-6)

    out = convert_pixelclip(src, tmp_path / "teacher.pt", model=name, which="teacher")
    state, _ = read_state_dict(out)
    for k, v in state.items():
        ref = teacher[k] if k.startswith("visual.") else student[k]
        assert torch.equal(v, ref), k


def test_arch_detection_and_name_guess(tiny_vit, tiny_convnext):
    assert clip_arch(tiny_vit.clip.state_dict()) == "vit"
    assert clip_arch(tiny_convnext.clip.state_dict()) == "convnext"
    vit_b16 = {"visual.proj": torch.empty(0), "visual.conv1.weight": torch.empty(768, 3, 16, 16),
               **{f"visual.transformer.resblocks.{i}.attn.in_proj_weight": torch.empty(0) for i in range(12)}}
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
