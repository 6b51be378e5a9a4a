"""The engine's parts on their own: metrics, schedules, losses, strategies, models, transforms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from matrec.agent.training.augmentation import OPERATIONS, eval_transform, train_transform
from matrec.agent.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
)
from matrec.agent.training.descriptors import DESCRIPTOR_DIMS, describe_files, describe_image
from matrec.agent.training.evaluation import (
    Predictions,
    confusion_matrix,
    evaluation_report,
    macro_f1,
    per_class_scores,
    top_k_accuracy,
)
from matrec.agent.training.finetune import run_finetune
from matrec.agent.training.models import (
    HYBRID_DROPOUT,
    HYBRID_HIDDEN,
    ClassifierHead,
    block_groups,
    build_hybrid,
    build_model,
    head_name,
    load_pretrained,
    model_from_file,
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
from matrec.sdk.demo_dataset import DemoDatasetInfo
from PIL import Image
from test_training_runs import Reporter, tiny_config
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
    (100 * model(torch.ones(1, 4)).sum()).backward()  # gradient norm far above 0.5
    optimizer_step(model, optimizer, scheduler, grad_clip_norm=0.5)
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


@pytest.mark.parametrize(
    ("name", "head", "in_features"),
    [("resnet18", "fc", 512), ("mobilenet_v3_small", "classifier.3", 1024)],
)
def test_default_head_is_the_single_linear_layer_it_always_was(
    name: str, head: str, in_features: int
) -> None:
    model = build_model(name, 3)
    assert head_name(model) == head
    layer = model.get_submodule(head)
    assert type(layer) is nn.Linear
    assert (layer.in_features, layer.out_features) == (in_features, 3)
    # The same parameter names as torchvision's network: older checkpoints still load.
    reference = getattr(torchvision.models, name)(weights=None).state_dict()
    assert model.state_dict().keys() == reference.keys()
    assert build_model(name, 3, dense_units=0, dropout_rate=0.0).state_dict().keys() == (
        reference.keys()
    )


@pytest.mark.parametrize(
    ("name", "head", "in_features"),
    [
        ("resnet18", "fc", 512),
        ("mobilenet_v3_small", "classifier.3", 1024),
        ("efficientnet_b0", "classifier.1", 1280),
        ("convnext_tiny", "classifier.2", 768),
    ],
)
def test_dense_units_and_dropout_build_a_head_that_trains_as_a_whole(
    name: str, head: str, in_features: int
) -> None:
    torch.manual_seed(0)
    model = build_model(name, 3, dense_units=64, dropout_rate=0.3)
    assert head_name(model) == head
    layer = model.get_submodule(head)
    assert isinstance(layer, ClassifierHead)
    assert [child for child, _ in layer.named_children()] == ["hidden", "act", "dropout", "out"]
    assert (layer.hidden.in_features, layer.hidden.out_features) == (in_features, 64)
    assert isinstance(layer.act, nn.ReLU)
    assert isinstance(layer.dropout, nn.Dropout) and layer.dropout.p == 0.3
    assert (layer.out.in_features, layer.out.out_features) == (64, 3)

    groups = block_groups(model)
    for param_name, _ in model.named_parameters():
        owners = [
            i for i, g in enumerate(groups) if param_name.startswith(tuple(p + "." for p in g))
        ]
        assert len(owners) == (0 if param_name.startswith(head + ".") else 1), param_name

    apply_strategy(model, config(strategy="head_only"), epoch=0)
    head_params = {f"{head}.{n}" for n, _ in layer.named_parameters()}
    assert len(head_params) == 4
    for param_name, param in model.named_parameters():
        assert param.requires_grad == (param_name in head_params), param_name
    assert layer.training and not model.get_submodule(groups[-1][0]).training
    first = param_groups(model, config(strategy="discriminative"))[0]["params"]
    assert first == list(layer.parameters())

    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if n not in head_params)


@pytest.mark.parametrize(
    ("dense_units", "dropout_rate", "children", "out_in"),
    [(0, 0.5, ["dropout", "out"], 512), (32, 0.0, ["hidden", "act", "out"], 32)],
)
def test_a_head_setting_alone_adds_only_its_layer(
    dense_units: int, dropout_rate: float, children: list[str], out_in: int
) -> None:
    model = build_model("resnet18", 4, dense_units=dense_units, dropout_rate=dropout_rate)
    assert isinstance(model.fc, ClassifierHead) and head_name(model) == "fc"
    assert [child for child, _ in model.fc.named_children()] == children
    assert model.fc.out.in_features == out_in and model.fc.out.out_features == 4
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_hybrid_head_uses_dense_units_and_dropout_rate_when_given() -> None:
    default = build_hybrid("resnet18", 4, descriptor_dim=12)
    assert default.head[0].out_features == HYBRID_HIDDEN == 256
    assert default.head[2].p == HYBRID_DROPOUT == 0.2
    model = build_hybrid("resnet18", 4, descriptor_dim=12, dense_units=32, dropout_rate=0.5)
    assert (model.head[0].in_features, model.head[0].out_features) == (512 + 12, 32)
    assert isinstance(model.head[2], nn.Dropout) and model.head[2].p == 0.5
    assert (model.head[3].in_features, model.head[3].out_features) == (32, 4)
    assert head_name(model) == "head"
    assert model(torch.randn(2, 3, 32, 32), torch.randn(2, 12)).shape == (2, 4)
    apply_strategy(model, config(strategy="head_only"), epoch=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"head.{i}.{w}" for i in (0, 3) for w in ("weight", "bias")}


def test_pretrained_weights_skip_or_replace_a_classifier_head(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = build_model("resnet18", 3, dense_units=16, dropout_rate=0.1)
    path = tmp_path / "model.pt"
    torch.save({"model_state": source.state_dict(), "classes": ["a", "b", "c"]}, path)
    same = build_model("resnet18", 3, dense_units=16, dropout_rate=0.1)
    assert load_pretrained(same, path, ["a", "b", "c"]).startswith("loaded 124/124 tensors")
    torch.testing.assert_close(same.fc.hidden.weight, source.fc.hidden.weight)
    other = build_model("resnet18", 3, dense_units=16, dropout_rate=0.1)
    assert "new head" in load_pretrained(other, path, ["x", "y", "z"])
    torch.testing.assert_close(other.conv1.weight, source.conv1.weight)
    assert not torch.equal(other.fc.hidden.weight, source.fc.hidden.weight)
    # ImageNet-style weights (a plain `fc`) leave the new head as initialised.
    plain = tmp_path / "plain.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), plain)
    assert load_pretrained(build_model("resnet18", 3, dense_units=16), plain).startswith(
        "loaded 120/124 tensors"
    )


def _write_checkpoint(path: Path, saved_config: dict[str, object]) -> None:
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "classes": ["a", "b"],
            "train_size": 4,
            "config": saved_config,
        },
        path,
    )


def test_resume_needs_the_same_head_settings_and_accepts_older_checkpoints(
    tmp_path: Path,
) -> None:
    path = tmp_path / "last.pt"
    older = config().model_dump(mode="json")
    del older["dense_units"], older["dropout_rate"]  # written before the settings existed
    _write_checkpoint(path, older)
    load_checkpoint(path, config(), ["a", "b"], 4)
    with pytest.raises(ValueError, match=r"dense_units: 0 -> 64"):
        load_checkpoint(path, config(dense_units=64), ["a", "b"], 4)
    _write_checkpoint(path, config(dense_units=64, dropout_rate=0.3).model_dump(mode="json"))
    load_checkpoint(path, config(dense_units=64, dropout_rate=0.3), ["a", "b"], 4)
    with pytest.raises(ValueError, match=r"dropout_rate: 0.3 -> 0.2"):
        load_checkpoint(path, config(dense_units=64, dropout_rate=0.2), ["a", "b"], 4)


def test_finetune_with_a_dense_head_trains_and_checkpoints(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    cfg = tiny_config(
        small_dataset.path, strategy="head_only", batch_size=48, dense_units=64, dropout_rate=0.3
    )
    classes = len(small_dataset.classes)
    torch.manual_seed(cfg.seed)  # run_finetune builds its model right after this seeding
    before = build_model(cfg.model, classes, dense_units=64, dropout_rate=0.3).state_dict()
    reporter = Reporter()
    result = run_finetune(cfg, tmp_path, reporter)

    assert result.epochs == 1 and result.steps == 3
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and len(reporter.checkpoints) == 1
    model, saved = model_from_file(Path(result.model_path))
    assert isinstance(model.classifier[3], ClassifierHead)
    assert model.classifier[3].hidden.out_features == 64
    assert saved["config"]["dense_units"] == 64 and saved["config"]["dropout_rate"] == 0.3
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {
        f"classifier.3.{n}.{w}" for n in ("hidden", "out") for w in ("weight", "bias")
    }


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
