"""The engine's parts on their own: metrics, schedules, losses, strategies, models, transforms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from matrec.agent.training.augmentation import OPERATIONS, eval_transform, train_transform
from matrec.agent.training.descriptors import DESCRIPTOR_DIMS, describe_files, describe_image
from matrec.agent.training.evaluation import (
    Predictions,
    confusion_matrix,
    evaluation_report,
    macro_f1,
    per_class_scores,
    top_k_accuracy,
)
from matrec.agent.training.models import (
    block_groups,
    build_hybrid,
    build_model,
    head_name,
    load_pretrained,
    resolve_torchvision_weights,
)
from matrec.agent.training.optim import (
    build_optimizer,
    build_scheduler,
    lr_factor,
    optimizer_step,
    training_loss,
)
from matrec.agent.training.strategies import apply_strategy, param_groups
from matrec.common.specs import KNOWN_MODELS, FinetuneConfig
from PIL import Image
from torch import nn
from torch.nn import functional as F


def config(**overrides: object) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"dataset_path": "/d", **overrides})


# --- evaluation -------------------------------------------------------------------------------

# 3 classes, 6 samples. Labels 0 0 0 1 1 2; predictions 0 1 0 1 2 2 (argmax of the logits).
LOGITS = torch.tensor(
    [
        [3.0, 2.0, 1.0],
        [1.0, 3.0, 2.0],  # true 0, predicted 1, second choice 2
        [3.0, 1.0, 2.0],
        [1.0, 3.0, 2.0],
        [1.0, 2.0, 3.0],  # true 1, predicted 2, second choice 1
        [2.0, 1.0, 3.0],
    ]
)
LABELS = torch.tensor([0, 0, 0, 1, 1, 2])


def test_confusion_matrix_rows_are_true_classes() -> None:
    matrix = confusion_matrix(LOGITS.argmax(dim=1), LABELS, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_per_class_scores_and_macro_f1_by_hand() -> None:
    matrix = confusion_matrix(LOGITS.argmax(dim=1), LABELS, 3)
    scores = per_class_scores(matrix)
    # class 0: tp 2, predicted 2, support 3 -> p 1, r 2/3, f1 0.8
    # class 1: tp 1, predicted 2, support 2 -> p 1/2, r 1/2, f1 1/2
    # class 2: tp 1, predicted 2, support 1 -> p 1/2, r 1, f1 2/3
    expected = [(1.0, 2 / 3, 0.8, 3), (0.5, 0.5, 0.5, 2), (0.5, 1.0, 2 / 3, 1)]
    for score, (p, r, f1, support) in zip(scores, expected, strict=True):
        assert score["precision"] == pytest.approx(p)
        assert score["recall"] == pytest.approx(r)
        assert score["f1"] == pytest.approx(f1)
        assert score["support"] == support
    assert macro_f1(matrix) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_a_class_never_predicted_scores_zero() -> None:
    matrix = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    assert per_class_scores(matrix)[1] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_top_k_accuracy_by_hand() -> None:
    assert top_k_accuracy(LOGITS, LABELS, 1) == pytest.approx(4 / 6)
    assert top_k_accuracy(LOGITS, LABELS, 2) == pytest.approx(5 / 6)  # row 2 misses: 0 is 3rd
    assert top_k_accuracy(LOGITS, LABELS, 3) == 1.0
    assert top_k_accuracy(LOGITS, LABELS, 10) == 1.0  # k capped at the number of classes


def test_evaluation_report() -> None:
    report = evaluation_report(Predictions(LOGITS, LABELS), ["a", "b", "c"], top_k=5)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["top_k"] == 3 and report["top_k_accuracy"] == 1.0
    assert report["per_class"]["c"]["recall"] == 1.0
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert Predictions(LOGITS, LABELS).loss == pytest.approx(F.cross_entropy(LOGITS, LABELS).item())


# --- schedules, loss, clipping ----------------------------------------------------------------


def lrs(cfg: FinetuneConfig, steps_per_epoch: int) -> list[float]:
    param = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([{"params": [param], "lr": cfg.learning_rate}], cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    seen = []
    for _ in range(steps_per_epoch * cfg.epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_cosine_with_warmup() -> None:
    cfg = config(epochs=2, learning_rate=1.0, warmup_epochs=1.0, schedule="cosine")
    expected = [min(1.0, (s + 1) / 4) * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert lrs(cfg, 4) == pytest.approx(expected)
    assert lrs(cfg, 4)[:4] == pytest.approx([0.25 * 1.0, 0.5 * 0.9619, 0.75 * 0.8536, 0.6913], 1e-3)


def test_step_and_constant_schedules() -> None:
    step = config(epochs=3, learning_rate=1.0, schedule="step", step_size_epochs=1, gamma=0.5)
    assert lrs(step, 2) == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    warm = config(epochs=2, learning_rate=0.1, schedule="constant", warmup_epochs=0.5)
    assert lrs(warm, 4) == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert lr_factor(0, config(schedule="constant"), 10) == 1.0


def test_label_smoothing_changes_the_loss_as_defined() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    log_p = F.log_softmax(logits, dim=1)[0]
    expected = 0.9 * -log_p[0] + 0.1 * -log_p.mean()
    assert training_loss(logits, labels, 0.1).item() == pytest.approx(expected.item())
    assert training_loss(logits, labels, 0.0).item() == pytest.approx(-log_p[0].item())


def test_gradient_clipping_bounds_the_step() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    cfg = config(optimizer="sgd", momentum=0.0, weight_decay=0.0, learning_rate=1.0)
    optimizer = build_optimizer([{"params": list(model.parameters()), "lr": 1.0}], cfg)
    scheduler = build_scheduler(optimizer, cfg, 1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = 100 * model(torch.ones(1, 4)).sum()  # gradient norm far above 0.5
    optimizer_step(loss, model, optimizer, scheduler, grad_clip_norm=0.5)
    moved = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
    )
    assert moved.norm().item() == pytest.approx(0.5, rel=1e-4)  # SGD, lr 1: the step is -grad


# --- models and strategies --------------------------------------------------------------------


@pytest.mark.parametrize("name", KNOWN_MODELS)
def test_block_groups_cover_every_parameter_but_the_head_once(name: str) -> None:
    model = build_model(name, 3)
    groups = block_groups(model)
    head = head_name(model) + "."
    for param_name, _ in model.named_parameters():
        owners = [
            i for i, g in enumerate(groups) if param_name.startswith(tuple(p + "." for p in g))
        ]
        assert len(owners) == (0 if param_name.startswith(head) else 1), param_name


def test_last_n_on_resnet18_trains_layer4_and_fc_only() -> None:
    model = build_model("resnet18", 3)
    apply_strategy(model, config(strategy="last_n", trainable_blocks=1), epoch=0)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}
    assert not model.layer3.training and not model.bn1.training and model.layer4.training


def test_head_only_and_gradual_trainable_sets() -> None:
    model = build_model("resnet18", 3)
    apply_strategy(model, config(strategy="head_only"), epoch=5)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"fc"}
    gradual = config(strategy="gradual", unfreeze_every_epochs=2)
    tops = []
    for epoch in range(12):
        apply_strategy(model, gradual, epoch)
        tops.append(
            sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})
        )
    assert tops[0] == tops[1] == ["fc"]
    assert tops[2] == tops[3] == ["fc", "layer4"]
    assert tops[4] == ["fc", "layer3", "layer4"]
    assert tops[10] == tops[11] == ["bn1", "conv1", "fc", "layer1", "layer2", "layer3", "layer4"]


def test_discriminative_param_groups_decay_from_the_top() -> None:
    model = build_model("resnet18", 3)
    groups = param_groups(model, config(strategy="discriminative", learning_rate=1.0, lr_decay=0.5))
    assert [g["lr"] for g in groups] == [1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]
    assert groups[0]["params"] == list(model.fc.parameters())
    assert groups[1]["params"] == list(model.layer4.parameters())
    flat = param_groups(model, config(strategy="full", learning_rate=1.0))
    assert {g["lr"] for g in flat} == {1.0}
    assert sum(len(g["params"]) for g in flat) == len(list(model.parameters()))


def test_hybrid_model_shapes_and_groups() -> None:
    model = build_hybrid("mobilenet_v3_small", 4, descriptor_dim=64)
    logits = model(torch.randn(2, 3, 32, 32), torch.randn(2, 64))
    assert logits.shape == (2, 4)
    assert model.head[0].in_features == 1024 + 64
    assert block_groups(model)[-1] == ["backbone.features.12", "backbone.classifier.0"]
    assert sum(DESCRIPTOR_DIMS.values()) == 64


def test_pretrained_matrec_model_for_other_classes_loads_all_but_the_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_model("resnet18", 3)
    path = tmp_path / "model.pt"
    torch.save({"model_state": source.state_dict(), "classes": ["a", "b", "c"]}, path)
    model = build_model("resnet18", 3)
    summary = load_pretrained(model, path, ["x", "y", "z"])
    assert "new head" in summary
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    assert not torch.equal(model.fc.weight, source.fc.weight)

    hybrid = build_hybrid("resnet18", 2, descriptor_dim=12)
    load_pretrained(hybrid, path, ["x", "y"])  # a cnn model's backbone into a hybrid
    torch.testing.assert_close(
        hybrid.backbone.layer4[0].conv1.weight, source.layer4[0].conv1.weight
    )


def test_ddp_and_timm_resnet_names_load(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = build_model("resnet18", 5)
    assert load_pretrained(model, path).startswith("loaded 120/122 tensors")


def test_torchvision_weight_names_resolve_without_download() -> None:
    assert (
        str(resolve_torchvision_weights("resnet18", "DEFAULT")) == "ResNet18_Weights.IMAGENET1K_V1"
    )
    assert resolve_torchvision_weights("convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1")
    with pytest.raises(ValueError, match="no 'IMAGENET9K' weights for resnet18"):
        resolve_torchvision_weights("resnet18", "IMAGENET9K")
    with pytest.raises(ValueError, match="not weights for resnet18"):
        resolve_torchvision_weights("resnet18", "ResNet50_Weights.IMAGENET1K_V2")


# --- augmentation and descriptors -------------------------------------------------------------


@pytest.mark.parametrize(
    "augmentation",
    ["none", "light", "strong", [], ["hflip"], list(OPERATIONS), ["blur", "rotation"]],
    ids=str,
)
def test_augmentations_build_and_run(augmentation: str | list[str]) -> None:
    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    out = train_transform(32, augmentation)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert eval_transform(32)(image).shape == (3, 32, 32)


def test_descriptors_tell_textures_apart_and_are_cached(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    flat = Image.fromarray(np.full((48, 48, 3), 120, np.uint8))
    noisy = Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8))
    a = describe_image(flat, ["lbp", "gabor", "color"])
    b = describe_image(noisy, ["lbp", "gabor", "color"])
    assert a.shape == b.shape == (64,)
    assert not np.allclose(a[:28], b[:28]) and not np.allclose(a[28:52], b[28:52])
    assert a[:10].sum() == pytest.approx(1.0)  # an LBP histogram is normalised
    paths = []
    for i, image in enumerate((flat, noisy)):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    table = describe_files(paths, ["gabor"], tmp_path / "cache")
    assert table.shape == (2, 24)
    (cached,) = (tmp_path / "cache").glob("*.npy")
    np.testing.assert_array_equal(np.load(cached), table)


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"pretrained_path": "/w.pt", "pretrained_weights": "DEFAULT"}, "pretrained_weights"),
        ({"pretrained_weights": "not a name!"}, "pretrained_weights"),
        ({"model_type": "hybrid", "descriptors": []}, "descriptors"),
        ({"augmentation": ["hflip", "hflip"]}, "augmentation"),
        ({"augmentation": ["sharpen"]}, "augmentation"),
        ({"strategy": "freeze"}, "strategy"),
        ({"freeze_backbone": True}, "freeze_backbone"),
        ({"lr_decay": 0}, "lr_decay"),
    ],
)
def test_config_rejects(overrides: dict[str, object], field: str) -> None:
    from matrec.common.specs import SpecError, parse_job_spec

    with pytest.raises(SpecError) as caught:
        parse_job_spec({"config": {"dataset_path": "/d", **overrides}})
    assert caught.value.field.startswith(f"config.{field}")
