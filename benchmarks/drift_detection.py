"""Drift detection on the built-in texture dataset: false alarms on clean windows of fresh
images, detection on blurred, darkened and unseen-texture windows.

    python benchmarks/drift_detection.py [--window 50] [--windows 20] [--json OUT] [--workdir DIR]

(--window takes a comma-separated list, e.g. 20,50,100: one model, every window size.)

1. Builds the demo dataset (seed 0) and trains resnet18 at 64 px on the *trained* classes
   (--unseen names the others, default fur and metal) with the engine itself (`run_finetune`,
   cnn, strategy full, random initial weights: no weights can be downloaded here).
2. Builds a second demo dataset with another seed (--fresh-seed): new random crops, rotations
   and flips of the same photographs, i.e. fresh images from the training distribution, never
   trained on. From it, `--windows` disjoint windows of `--window` images each:
   * clean: fresh images of the trained classes (mixed classes, seeded shuffle);
   * blurred: the clean windows' images after a Gaussian blur (--blur, radius in pixels);
   * darkened: the clean windows' images with brightness times --darken;
   * unseen texture: fresh images of the classes the model was not trained on;
   * 20 % unseen: clean windows with a fifth of their images (--mix) replaced by unseen
     textures, a partial shift;
   * other region: the second dataset's *validation* images of the trained classes, cut from
     a region of each photograph that no training image overlaps: a mild, real shift, shown
     for information (it is neither clean nor one of the synthetic shifts).
3. Scores every image with `matrec.agent.training.scoring.score_files` (softmax
   probabilities and the embedding the head sees, 512-D for resnet18), exactly what the
   `score` job stores, and runs `matrec.common.active_learning.drift.detect_drift` on each
   window against two references:
   * train: the model's own training images (the training data, scored without augmentation);
   * held-out: as many fresh images of the trained classes from the second dataset, disjoint
     from every window (what the model makes of new images of its training distribution).
4. Prints, per kind of window and reference, the alarm rate (a false-alarm rate on clean
   windows, a detection rate on shifted ones), how often each of the two tests fired, the
   median p-values, and the model's accuracy on the windows' images (trained classes).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ALL_CLASSES = ("brick", "fur", "grass", "gravel", "metal", "wood")
UNSEEN_CLASSES = ("fur", "metal")
MODEL = "resnet18"
IMAGE_SIZE = 64
REFERENCES = ("train", "held-out")
#: Kinds of window, in the order they are printed; the first is the clean one.
KINDS = ("clean", "blurred", "darkened", "unseen texture", "mixed", "other region")


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


@dataclass
class WindowResult:
    kind: str
    reference: str
    window_size: int
    index: int
    drifted: bool
    output_p_value: float
    embedding_p_value: float
    mmd2: float
    accuracy: float | None  # the model's accuracy on the window (trained classes only)
    seconds: float  # the detect_drift call


@dataclass
class Scored:
    """Scores of a list of images: probabilities [N, C], embeddings [N, D], true labels
    (index into the model's classes, or -1 for a class the model does not know)."""

    probabilities: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray

    def take(self, rows: list[int]) -> Scored:
        return Scored(self.probabilities[rows], self.embeddings[rows], self.labels[rows])

    def join(self, other: Scored) -> Scored:
        return Scored(
            np.concatenate([self.probabilities, other.probabilities]),
            np.concatenate([self.embeddings, other.embeddings]),
            np.concatenate([self.labels, other.labels]),
        )


def images_of(root: Path, classes: tuple[str, ...]) -> list[tuple[Path, str]]:
    return [(path, name) for name in classes for path in sorted((root / name).glob("*.png"))]


def copy_classes(src: Path, dst: Path, classes: tuple[str, ...]) -> None:
    for name in classes:
        shutil.copytree(src / name, dst / name)


def transformed(images: list[tuple[Path, str]], out: Path, kind: str, args: Any) -> list[Path]:
    """Write a blurred or darkened copy of each image under `out`; return the copies' paths."""
    from PIL import Image, ImageEnhance, ImageFilter

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (path, _) in enumerate(images):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        if kind == "blurred":
            rgb = rgb.filter(ImageFilter.GaussianBlur(args.blur))
        else:
            rgb = ImageEnhance.Brightness(rgb).enhance(args.darken)
        target = out / f"{index:05d}_{path.name}"
        rgb.save(target)
        paths.append(target)
    return paths


def score(
    model: Any, description: dict[str, Any], paths: list[Path], names: list[str], device: Any
) -> Scored:
    from matrec.agent.training.scoring import score_files

    scores = score_files(model, description, paths, batch_size=128, device=device)
    if scores.skipped:
        raise RuntimeError(f"unreadable images: {scores.skipped[:3]}")
    classes = list(description["classes"])
    labels = np.array([classes.index(n) if n in classes else -1 for n in names])
    return Scored(scores.probabilities, scores.embeddings, labels)


def windows_of(count: int, size: int, total: int) -> list[list[int]]:
    """`count` disjoint, consecutive windows of `size` rows out of `total`."""
    if count * size > total:
        raise ValueError(f"{count} windows of {size} need {count * size} images; have {total}")
    return [list(range(i * size, (i + 1) * size)) for i in range(count)]


def make_windows(
    pools: dict[str, Scored], kind: str, count: int, size: int, mix: float
) -> list[Scored]:
    """The windows of one kind; 'mixed': clean windows with a `mix` share of unseen images."""
    if kind != "mixed":
        pool = pools[kind]
        return [pool.take(rows) for rows in windows_of(count, size, len(pool.labels))]
    unseen_count = round(mix * size)
    clean = windows_of(count, size - unseen_count, len(pools["clean"].labels))
    unseen = windows_of(count, unseen_count, len(pools["unseen texture"].labels))
    return [
        pools["clean"].take(c).join(pools["unseen texture"].take(u))
        for c, u in zip(clean, unseen, strict=True)
    ]


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[WindowResult], dict[str, Any]]:
    import torch
    from matrec.agent.training.finetune import run_finetune
    from matrec.agent.training.models import model_from_file
    from matrec.common.active_learning.drift import detect_drift
    from matrec.common.specs import FinetuneConfig
    from matrec.sdk.demo_dataset import make_demo_dataset

    timings: dict[str, float] = {}
    trained_classes = tuple(c for c in ALL_CLASSES if c not in args.unseen)
    started = time.perf_counter()
    demo = workdir / "demo"
    make_demo_dataset(
        demo,
        seed=0,
        patch_size=IMAGE_SIZE,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
    )
    training_set = workdir / "trained-classes"
    for split in ("train", "val"):
        copy_classes(demo / split, training_set / split, trained_classes)

    # Fresh images: enough for every window and the held-out reference.
    needed = args.windows * max(args.window)
    reference_size = len(images_of(training_set / "train", trained_classes))
    per_class = max(
        math.ceil((needed + reference_size) / len(trained_classes)),
        math.ceil(needed / len(args.unseen)),
    )
    fresh = workdir / "fresh"
    make_demo_dataset(
        fresh,
        seed=args.fresh_seed,
        patch_size=IMAGE_SIZE,
        train_per_class=per_class,
        val_per_class=math.ceil(needed / len(trained_classes)),
    )
    timings["datasets"] = time.perf_counter() - started

    print(
        f"training {MODEL} at {IMAGE_SIZE} px on {', '.join(trained_classes)} "
        f"({args.train_per_class}/class, {args.epochs} epochs) ...",
        flush=True,
    )
    started = time.perf_counter()
    config = FinetuneConfig(
        dataset_path=str(training_set),
        model=MODEL,
        image_size=IMAGE_SIZE,
        epochs=args.epochs,
        batch_size=32,
        learning_rate=1e-3,
        seed=args.seed,
        num_workers=0,
        log_every_steps=1000,
        device=args.device,
    )
    result = run_finetune(config, workdir / "model", QuietReporter(args.verbose))
    timings["training"] = time.perf_counter() - started
    print(f"  val accuracy {result.val_accuracy:.3f} ({timings['training']:.0f} s)", flush=True)

    started = time.perf_counter()
    model, description = model_from_file(Path(result.model_path))
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    rng = random.Random(args.seed)
    fresh_known = images_of(fresh / "train", trained_classes)
    rng.shuffle(fresh_known)
    unseen = images_of(fresh / "train", args.unseen)
    rng.shuffle(unseen)
    other_region = images_of(fresh / "val", trained_classes)
    rng.shuffle(other_region)
    clean_images = fresh_known[:needed]
    held_out_images = fresh_known[needed : needed + reference_size]
    training_images = images_of(training_set / "train", trained_classes)

    def scored(images: list[tuple[Path, str]], paths: list[Path] | None = None) -> Scored:
        names = [name for _, name in images]
        return score(model, description, paths or [p for p, _ in images], names, device)

    references = {"train": scored(training_images), "held-out": scored(held_out_images)}
    pools = {
        "clean": scored(clean_images),
        "blurred": scored(
            clean_images, transformed(clean_images, workdir / "blurred", "blurred", args)
        ),
        "darkened": scored(
            clean_images, transformed(clean_images, workdir / "darkened", "darkened", args)
        ),
        "unseen texture": scored(unseen[:needed]),
        "other region": scored(other_region[:needed]),
    }
    timings["scoring"] = time.perf_counter() - started
    scored_count = sum(len(s.labels) for s in [*references.values(), *pools.values()])
    print(f"  scored {scored_count} images in {timings['scoring']:.0f} s", flush=True)

    started = time.perf_counter()
    results: list[WindowResult] = []
    for size in args.window:
        for kind in KINDS:
            for index, window in enumerate(make_windows(pools, kind, args.windows, size, args.mix)):
                known = window.labels >= 0
                predicted = window.probabilities[known].argmax(1)
                accuracy = (
                    float((predicted == window.labels[known]).mean()) if known.any() else None
                )
                for name, reference in references.items():
                    call_started = time.perf_counter()
                    report = detect_drift(
                        reference.probabilities,
                        window.probabilities,
                        reference_embeddings=reference.embeddings,
                        current_embeddings=window.embeddings,
                        alpha=args.alpha,
                        pca_components=args.pca_components,
                        permutations=args.permutations,
                        seed=index,
                    )
                    assert report.embedding_p_value is not None and report.mmd2 is not None
                    results.append(
                        WindowResult(
                            kind=kind,
                            reference=name,
                            window_size=size,
                            index=index,
                            drifted=report.drifted,
                            output_p_value=report.output_p_value,
                            embedding_p_value=report.embedding_p_value,
                            mmd2=report.mmd2,
                            accuracy=accuracy,
                            seconds=time.perf_counter() - call_started,
                        )
                    )
    timings["detection"] = time.perf_counter() - started
    info = {
        "trained_classes": list(trained_classes),
        "val_accuracy": result.val_accuracy,
        "reference_size": reference_size,
        "embedding_dim": int(references["train"].embeddings.shape[1]),
        "timings": timings,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return results, info


def summarise(results: list[WindowResult], alpha: float, mix: float) -> list[dict[str, Any]]:
    rows = []
    sizes = sorted({r.window_size for r in results})
    for size in sizes:
        for kind in KINDS:
            for reference in REFERENCES:
                group = [
                    r
                    for r in results
                    if r.kind == kind and r.reference == reference and r.window_size == size
                ]
                if not group:
                    continue
                accuracies = [r.accuracy for r in group if r.accuracy is not None]
                rows.append(
                    {
                        "window_size": size,
                        "kind": f"{round(mix * 100)} % unseen" if kind == "mixed" else kind,
                        "reference": reference,
                        "windows": len(group),
                        "alarms": sum(r.drifted for r in group),
                        "output_test_fired": sum(r.output_p_value < alpha / 2 for r in group),
                        "embedding_test_fired": sum(r.embedding_p_value < alpha / 2 for r in group),
                        "median_output_p": statistics.median(r.output_p_value for r in group),
                        "median_embedding_p": statistics.median(r.embedding_p_value for r in group),
                        "accuracy": statistics.mean(accuracies) if accuracies else None,
                    }
                )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        "| window | kind | reference | alarms | output test fired | embedding test fired | "
        "median p (output / embedding) | model accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        n = row["windows"]
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        print(
            f"| {row['window_size']} | {row['kind']} | {row['reference']} | {row['alarms']}/{n} | "
            f"{row['output_test_fired']}/{n} | {row['embedding_test_fired']}/{n} | "
            f"{row['median_output_p']:.3g} / {row['median_embedding_p']:.3g} | {accuracy} |"
        )
    print(
        "\nalarms on clean windows are false alarms; on the others, detections ('other region' "
        "is a mild real shift, for information). A test fired: its p-value < alpha/2. Model "
        "accuracy: on the window's images of trained classes."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--window", default="50", help="images per window; several: comma-separated (50)"
    )
    parser.add_argument("--windows", type=int, default=20, help="windows of each kind")
    parser.add_argument(
        "--unseen",
        default=",".join(UNSEEN_CLASSES),
        help="classes left out of training, the unseen textures (default %(default)s)",
    )
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--val-per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="training and window shuffle seed")
    parser.add_argument("--fresh-seed", type=int, default=1, help="the fresh dataset's seed")
    parser.add_argument("--blur", type=float, default=2.0, help="Gaussian blur radius (px)")
    parser.add_argument("--darken", type=float, default=0.5, help="brightness factor")
    parser.add_argument(
        "--mix", type=float, default=0.2, help="share of unseen images in a mixed window"
    )
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--pca-components", type=int, default=10)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--workdir", type=Path, help="keep datasets, model and images here")
    parser.add_argument("--json", type=Path, help="also write every window's result here")
    parser.add_argument("--verbose", action="store_true", help="print epochs and engine logs")
    args = parser.parse_args(argv)
    args.unseen = tuple(c.strip() for c in args.unseen.split(",") if c.strip())
    if set(args.unseen) - set(ALL_CLASSES) or not args.unseen or len(args.unseen) > 4:
        parser.error(f"--unseen: one to four of {', '.join(ALL_CLASSES)}")
    try:
        args.window = sorted({int(w) for w in args.window.split(",") if w.strip()})
    except ValueError:
        parser.error("--window: whole numbers, comma-separated")
    if not args.window or min(args.window) < 10 or args.windows < 1:
        parser.error("--window sizes must be at least 10 and --windows at least 1")
    if not 0.0 < args.mix < 1.0:
        parser.error("--mix must lie strictly between 0 and 1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="matrec-drift-bench-"))
    if args.workdir is not None and workdir.exists() and any(workdir.iterdir()):
        parser.error(f"--workdir {workdir} is not empty; give a new or empty directory")
    try:
        results, info = run(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started
    rows = summarise(results, args.alpha, args.mix)
    print_table(rows)
    calls = [r.seconds for r in results]
    print(
        f"model: {MODEL} at {IMAGE_SIZE} px trained on {', '.join(info['trained_classes'])} "
        f"(val accuracy {info['val_accuracy']:.3f}); reference {info['reference_size']} images, "
        f"embeddings {info['embedding_dim']}-D; {args.windows} windows of each kind and size; "
        f"alpha {args.alpha}, {args.pca_components} PCA components, {args.permutations} "
        f"permutations; detect_drift median {statistics.median(calls) * 1000:.0f} ms per "
        f"window; torch {info['torch']}, {info['device']}, {info['threads']} threads; "
        f"{total:.0f} s in all ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in info["timings"].items())
        + ")"
    )
    if args.json is not None:
        payload = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "info": info,
            "summary": rows,
            "windows": [asdict(r) for r in results],
            "seconds": total,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
