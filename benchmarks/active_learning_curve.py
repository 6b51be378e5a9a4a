"""Active learning's label efficiency: accuracy against the number of labels, random sampling
against each selection strategy, on the built-in texture dataset.

    python benchmarks/active_learning_curve.py [--seeds 0,1,2,3,4] [--budget 45] [--batch 3]
                                               [--json OUT] [--workdir DIR]

1. Builds the demo dataset (64 px) and pretrains resnet18 with the engine (`run_finetune`,
   strategy full, dropout in the head) on the *source* classes fur, metal and wood: the
   direction in which benchmarks/transfer_vs_scratch.py found that the features transfer. By
   default as the hybrid model (`--model-type hybrid`: the pooled CNN features and the texture
   descriptors feed the head), the best frozen-feature model there; `--model-type cnn` for the
   plain one.
2. Scores the *target* classes' images (brick, grass, gravel) with that model through the
   scoring task's own code (`score_files`): per image the embedding its head sees (hybrid:
   512 pooled features and 64 descriptor values). The target training images are the unlabelled
   pool (--pool-per-class), their validation images, cut from another region of the source
   photographs, the test set (--test-per-class). The source head's probabilities are not used.
3. Per seed: a labelled start of --initial-per-class pool images per class, chosen by the seed
   and shared by every strategy; then rounds of --batch labels until --budget. Each round the
   model, the engine's head (models.new_head: Linear, ReLU, Dropout, Linear) on the frozen
   embeddings (standardised with the pool's statistics), is trained from scratch with the same
   seed, for the same fixed epochs, full batch; it scores the pool (probabilities, and
   --mc-passes MC-dropout passes for bald) and the strategy picks the next batch from the pool
   images not yet labelled (selection.select, whose coreset and hybrid treat the labelled ones
   as centres). The test accuracy is recorded at every label count.
4. Prints accuracy per label count and strategy (mean ± std over seeds), the area under each
   curve (mean accuracy over the label counts) and in how many seeds it beats random's, and the
   label saving: the fewest labels at which a strategy's mean accuracy reaches random
   sampling's mean accuracy at the full budget, and the budget minus that.

`--backbone imagenet` (needs matrec[imagenet]) takes the features from EfficientNet-Lite0's real
ImageNet-1k weights instead: step 1 then trains only the head on the source classes
(strategy head_only), so the embeddings are ImageNet's own (hybrid: and the descriptors).

One pretrained feature extractor serves every seed: the seeds vary the labelled start, the
head's initialisation and dropout, and the selection's own randomness. With --workdir the
dataset, the model and the embeddings are kept, and a rerun reuses the embeddings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

SOURCE_CLASSES = ("fur", "metal", "wood")
TARGET_CLASSES = ("brick", "grass", "gravel")
MODEL = "resnet18"
IMAGENET_MODEL = "efficientnet_lite0"
IMAGE_SIZE = 64
EMBEDDINGS_FILE = "embeddings.npz"


@dataclass
class Curve:
    strategy: str
    seed: int
    labels: list[int]  # label counts, ascending
    accuracy: list[float]  # test accuracy at each label count
    seconds: float


@dataclass
class Features:
    pool: NDArray[np.float32]
    pool_labels: NDArray[np.int64]
    test: NDArray[np.float32]
    test_labels: NDArray[np.int64]


class QuietReporter:
    """A Reporter that keeps only the engine's log lines (printed with --verbose)."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if self.verbose and "val/accuracy" in values:
            print(f"    epoch {values.get('epoch', 0):.0f}: val acc {values['val/accuracy']:.3f}")

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        pass

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"    {text}", flush=True)


def image_files(root: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted((root / name).glob("*.png"))
        paths += files
        labels += [label] * len(files)
    return paths, labels


def build_features(args: argparse.Namespace, workdir: Path) -> Features:
    """Pretrain on the source classes and embed the target images; cached in workdir."""
    cached = workdir / EMBEDDINGS_FILE
    settings = (
        f"{args.backbone} {args.model_type} pool {args.pool_per_class} test "
        f"{args.test_per_class} pretrain {args.pretrain_epochs} head {args.hidden} "
        f"dropout {args.dropout}"
    )
    if cached.exists():
        saved = np.load(cached)
        if str(saved["settings"]) == settings:
            print(f"reusing the embeddings in {cached}", flush=True)
            return Features(**{key: saved[key] for key in Features.__dataclass_fields__})
    for stale in ("source", "pretrain"):  # run_finetune would resume from an old checkpoint
        shutil.rmtree(workdir / stale, ignore_errors=True)

    from matrec.agent.training.finetune import run_finetune
    from matrec.agent.training.models import model_from_file
    from matrec.agent.training.scoring import score_files
    from matrec.common.specs import FinetuneConfig
    from matrec.sdk.demo_dataset import make_demo_dataset

    demo = workdir / "demo"
    make_demo_dataset(
        demo,
        seed=0,
        patch_size=IMAGE_SIZE,
        train_per_class=args.pool_per_class,
        val_per_class=args.test_per_class,
    )
    source = workdir / "source"
    for split in ("train", "val"):
        for name in SOURCE_CLASSES:
            shutil.copytree(demo / split / name, source / split / name, dirs_exist_ok=True)
    model_name = backbone_model(args.backbone)
    # The ImageNet backbone stays as ImageNet trained it; only the head learns the sources.
    imagenet = (
        {"pretrained_weights": "imagenet", "strategy": "head_only"}
        if args.backbone == "imagenet"
        else {}
    )
    print(f"pretraining {model_name} on {', '.join(SOURCE_CLASSES)} ...", flush=True)
    started = time.perf_counter()
    config = FinetuneConfig(
        dataset_path=str(source),
        model=model_name,
        **imagenet,
        model_type=args.model_type,
        image_size=IMAGE_SIZE,
        epochs=args.pretrain_epochs,
        batch_size=32,
        learning_rate=1e-3,
        dropout_rate=args.dropout,
        dense_units=args.hidden,
        seed=0,
        num_workers=0,
        log_every_steps=1000,
        device="cpu",
    )
    result = run_finetune(config, workdir / "pretrain", QuietReporter(args.verbose))
    print(
        f"pretrained in {time.perf_counter() - started:.0f} s, source val accuracy "
        f"{result.val_accuracy:.3f}",
        flush=True,
    )
    model, description = model_from_file(Path(result.model_path))
    pool_paths, pool_labels = image_files(demo / "train", TARGET_CLASSES)
    test_paths, test_labels = image_files(demo / "val", TARGET_CLASSES)
    scores = score_files(model, description, pool_paths + test_paths, batch_size=64)
    if scores.skipped:
        raise RuntimeError(f"could not read {scores.skipped[:3]}")
    features = Features(
        pool=scores.embeddings[: len(pool_paths)],
        pool_labels=np.asarray(pool_labels, dtype=np.int64),
        test=scores.embeddings[len(pool_paths) :],
        test_labels=np.asarray(test_labels, dtype=np.int64),
    )
    np.savez(cached, settings=np.array(settings), **asdict(features))
    return features


def backbone_model(backbone: str) -> str:
    return IMAGENET_MODEL if backbone == "imagenet" else MODEL


class HeadTrainer:
    """Trains the engine's head on frozen embeddings; standardised by the pool's statistics
    (unlabelled data, so fair to use)."""

    def __init__(self, features: Features, args: argparse.Namespace) -> None:
        import torch

        self.torch = torch
        mean = features.pool.mean(axis=0)
        std = features.pool.std(axis=0) + 1e-6
        self.pool = torch.from_numpy((features.pool - mean) / std).float()
        self.test = torch.from_numpy((features.test - mean) / std).float()
        self.pool_labels = torch.from_numpy(features.pool_labels)
        self.test_labels = torch.from_numpy(features.test_labels)
        self.args = args

    def round(
        self, labelled: list[int], seed: int, mc_passes: int
    ) -> tuple[float, NDArray[np.float64], NDArray[np.float64] | None]:
        """Train from scratch on `labelled`; return the test accuracy, the pool probabilities
        [N, C] and (mc_passes > 0) MC-dropout probabilities [T, N, C]."""
        torch = self.torch
        from matrec.agent.training.models import new_head

        torch.manual_seed(seed)
        head = new_head(
            self.pool.shape[1],
            len(TARGET_CLASSES),
            dense_units=self.args.hidden,
            dropout_rate=self.args.dropout,
        )
        optimizer = torch.optim.AdamW(head.parameters(), lr=self.args.lr, weight_decay=1e-2)
        inputs = self.pool[labelled]
        targets = self.pool_labels[labelled]
        head.train()
        for _ in range(self.args.epochs):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(inputs), targets)
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            accuracy = float((head(self.test).argmax(1) == self.test_labels).float().mean())
            probabilities = torch.softmax(head(self.pool), dim=1).double().numpy()
            mc = None
            if mc_passes:
                head.train()  # the head has no BatchNorm: only its Dropout changes
                mc = np.stack(
                    [
                        torch.softmax(head(self.pool), dim=1).double().numpy()
                        for _ in range(mc_passes)
                    ]
                )
        return accuracy, probabilities, mc


def initial_labels(labels: NDArray[np.int64], per_class: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        picks += rng.choice(members, size=per_class, replace=False).tolist()
    return sorted(int(i) for i in picks)


def run_curve(trainer: HeadTrainer, strategy: str, seed: int, args: argparse.Namespace) -> Curve:
    from matrec.common.active_learning.selection import select

    started = time.perf_counter()
    labelled = initial_labels(trainer.pool_labels.numpy(), args.initial_per_class, seed)
    pool = trainer.pool.numpy()
    counts: list[int] = []
    accuracies: list[float] = []
    round_index = 0
    while True:
        passes = args.mc_passes if strategy == "bald" else 0
        accuracy, probabilities, mc = trainer.round(labelled, seed, passes)
        counts.append(len(labelled))
        accuracies.append(accuracy)
        if len(labelled) >= args.budget:
            break
        batch = min(args.batch, args.budget - len(labelled))
        chosen = select(
            strategy,
            batch,
            probabilities,
            embeddings=pool,
            mc_probabilities=mc,
            exclude=labelled,
            seed=seed * 1000 + round_index,
        )
        labelled = sorted(labelled + chosen.indices)
        round_index += 1
    return Curve(strategy, seed, counts, accuracies, time.perf_counter() - started)


def labels_to_reach(labels: list[int], accuracy: list[float], target: float) -> int | None:
    for count, value in zip(labels, accuracy, strict=True):
        if value >= target - 1e-9:
            return count
    return None


def summarise(curves: list[Curve], strategies: list[str], budget: int) -> dict[str, Any]:
    by_strategy: dict[str, list[Curve]] = {
        s: [c for c in curves if c.strategy == s] for s in strategies
    }
    labels = by_strategy[strategies[0]][0].labels
    mean = {s: np.mean([c.accuracy for c in cs], axis=0) for s, cs in by_strategy.items()}
    std = {s: np.std([c.accuracy for c in cs], axis=0) for s, cs in by_strategy.items()}
    target = float(mean["random"][-1])
    summary: dict[str, Any] = {"labels": labels, "random_final_mean": target, "strategies": {}}
    random_area = {c.seed: float(np.mean(c.accuracy)) for c in by_strategy["random"]}
    for strategy, curves_of in by_strategy.items():
        above = sum(float(np.mean(c.accuracy)) > random_area[c.seed] for c in curves_of)
        reach = labels_to_reach(labels, mean[strategy].tolist(), target)
        per_seed = [labels_to_reach(c.labels, c.accuracy, target) for c in curves_of]
        summary["strategies"][strategy] = {
            "mean": mean[strategy].tolist(),
            "std": std[strategy].tolist(),
            "area": float(mean[strategy].mean()),
            "seeds_above_random": f"{above}/{len(curves_of)}",
            "labels_to_reach_random_final": reach,
            "label_saving": None if reach is None else budget - reach,
            "per_seed_labels_to_reach": per_seed,
            "seconds": sum(c.seconds for c in curves_of),
        }
    return summary


def print_results(summary: dict[str, Any], strategies: list[str], budget: int) -> None:
    labels = summary["labels"]
    stats = summary["strategies"]
    print()
    print("| labels | " + " | ".join(strategies) + " |")
    print("|---" * (len(strategies) + 1) + "|")
    for row, count in enumerate(labels):
        cells = [f"{stats[s]['mean'][row]:.3f} ± {stats[s]['std'][row]:.3f}" for s in strategies]
        print(f"| {count} | " + " | ".join(cells) + " |")
    print(
        "\ncells: test accuracy, mean ± std over seeds. Label saving: labels needed for the mean "
        f"curve to reach random's mean accuracy at {budget} labels "
        f"({summary['random_final_mean']:.3f}); per seed: what each seed's own curve needed "
        "('-': not within the budget). Area: mean accuracy over the label counts; above random: "
        "seeds whose area is larger than random's on the same seed."
    )
    print()
    print("| strategy | area | above random | labels to reach | label saving | per seed |")
    print("|---|---|---|---|---|---|")
    for strategy in strategies:
        entry = stats[strategy]
        reach = entry["labels_to_reach_random_final"]
        per_seed = ", ".join(
            "-" if r is None else str(r) for r in entry["per_seed_labels_to_reach"]
        )
        print(
            f"| {strategy} | {entry['area']:.3f} | {entry['seeds_above_random']} | "
            f"{'not reached' if reach is None else reach} | "
            f"{'-' if reach is None else f'{budget - reach} ({(budget - reach) / budget:.0%})'} | "
            f"{per_seed} |"
        )


def main(argv: list[str] | None = None) -> int:
    from matrec.common.active_learning.selection import STRATEGIES

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="random is always run")
    parser.add_argument("--budget", type=int, default=45, help="labels at the end")
    parser.add_argument("--batch", type=int, default=3, help="labels per round")
    parser.add_argument("--initial-per-class", type=int, default=1, help="labelled start")
    parser.add_argument("--pool-per-class", type=int, default=100, help="pool images per class")
    parser.add_argument("--test-per-class", type=int, default=100, help="test images per class")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument(
        "--model-type",
        choices=("cnn", "hybrid"),
        default="hybrid",
        help="feature extractor: cnn (pooled resnet18 features) or hybrid (those and the "
        "texture descriptors)",
    )
    parser.add_argument(
        "--backbone",
        choices=("in-house", "imagenet"),
        default="in-house",
        help="in-house: resnet18 pretrained on the source classes; imagenet: efficientnet_lite0's "
        "ImageNet features, frozen (needs matrec[imagenet])",
    )
    parser.add_argument("--hidden", type=int, default=64, help="head's hidden units")
    parser.add_argument("--dropout", type=float, default=0.3, help="head's dropout")
    parser.add_argument("--epochs", type=int, default=100, help="head epochs per round")
    parser.add_argument("--lr", type=float, default=3e-3, help="head learning rate")
    parser.add_argument("--mc-passes", type=int, default=20, help="bald's MC-dropout passes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--workdir", type=Path, help="keep the dataset, model and embeddings")
    parser.add_argument("--json", type=Path, help="also write the curves and summary here")
    parser.add_argument("--verbose", action="store_true", help="print the engine's logs")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    strategies = ["random"] + [
        s.strip() for s in args.strategies.split(",") if s.strip() and s.strip() != "random"
    ]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"--strategies: unknown {sorted(unknown)}; known: {', '.join(STRATEGIES)}")
    start = args.initial_per_class * len(TARGET_CLASSES)
    if not start < args.budget <= args.pool_per_class * len(TARGET_CLASSES):
        parser.error(f"--budget must be above the labelled start ({start}) and within the pool")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="matrec-al-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        features = build_features(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    prepared = time.perf_counter() - started
    pretrain_threads = torch.get_num_threads()
    # The head is tiny: one thread is as fast, and does not fight other processes for cores.
    torch.set_num_threads(1)
    trainer = HeadTrainer(features, args)
    curves: list[Curve] = []
    for seed in seeds:
        for strategy in strategies:
            curve = run_curve(trainer, strategy, seed, args)
            curves.append(curve)
            print(
                f"seed {seed} {strategy:>16}: accuracy {curve.accuracy[0]:.3f} at "
                f"{curve.labels[0]} labels -> {curve.accuracy[-1]:.3f} at {curve.labels[-1]} "
                f"({curve.seconds:.1f} s)",
                flush=True,
            )
    summary = summarise(curves, strategies, args.budget)
    total = time.perf_counter() - started
    print_results(summary, strategies, args.budget)
    print(
        f"\npool {len(features.pool)} images ({', '.join(TARGET_CLASSES)}), test "
        f"{len(features.test)}; embeddings {features.pool.shape[1]}-d from "
        f"{backbone_model(args.backbone)} ({args.backbone}) "
        f"({args.model_type}) pretrained on "
        f"{', '.join(SOURCE_CLASSES)}; head {args.hidden} hidden, dropout {args.dropout}, "
        f"{args.epochs} epochs; seeds {args.seeds}; torch {torch.__version__}, "
        f"{pretrain_threads} threads pretraining, 1 for the head; {prepared:.0f} s preparing, "
        f"{total:.0f} s in all"
    )
    if args.json is not None:
        payload = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "curves": [asdict(curve) for curve in curves],
            "summary": summary,
            "seconds": total,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
