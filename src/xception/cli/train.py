"""xception train: train or fine-tune Xception on an image folder, or on Fashion-MNIST by default."""

from __future__ import annotations

import argparse
from typing import Any

EXAMPLES = """\
examples:
  xception train                                   # small-input Xception on Fashion-MNIST (CPU-friendly)
  xception train data/flowers --recipe modern --epochs 30
  xception train data/flowers --weights xception.safetensors --freeze-epochs 2   # fine-tune, new head
  xception train --recipe paper --show-recipe > my.toml    # copy a recipe, edit it, then:
  xception train data/imagenet --recipe my.toml
  xception train --resume runs/fashion-mnist-20250101-120000    # continue an interrupted run

data layout: DATA/<class>/<image> (10 % of each class held out for validation, --val-fraction), or
DATA/train/<class>/... with DATA/val/<class>/..., or --val FOLDER. Unreadable images are skipped, warned
about and counted (--strict fails instead). Ctrl-C (exit status 130) or SIGTERM (143) stops after the
current step and saves a checkpoint; last.pt is also saved every 10 minutes within an epoch
(--checkpoint-minutes), and model.safetensors at every new best epoch, so a stopped run leaves its best
model so far. One training at a time writes into a run folder; --resume continues from its newest intact
checkpoint (and says so when the run had finished).
"""

# Flags that override one recipe setting each: (flag, setting, type, help).
OVERRIDES: list[tuple[str, str, Any, str]] = [
    ("--epochs", "epochs", int, "passes over the training data"),
    ("--batch-size", "batch_size", int, "images per step"),
    ("--accum-steps", "accum_steps", int, "steps whose gradients are summed before each update"),
    ("--lr", "lr", float, "peak learning rate (for the recipe's lr_base_batch; scaled by lr_scaling)"),
    ("--optimizer", "optimizer", str, "sgd, adamw or rmsprop"),
    ("--schedule", "schedule", str, "step, cosine or constant"),
    ("--warmup-epochs", "warmup_epochs", float, "linear warm-up length"),
    ("--weight-decay", "weight_decay", float, "decay of conv and linear weights"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing of the loss"),
    ("--mixup", "mixup", float, "mixup's Beta α: blend image pairs of a batch, labels alike (0: off; 0.2 usual)"),
    ("--cutmix", "cutmix", float, "CutMix's Beta α: paste a box of another image, labels by area (0: off; 1.0 usual)"),
    ("--grad-clip", "grad_clip", float, "clip the gradient norm (0: off)"),
    ("--ema-decay", "ema_decay", float, "Polyak averaging decay per update (0: off)"),
    ("--freeze-epochs", "freeze_epochs", int, "fine-tuning: train only the new head for N epochs"),
    ("--checkpoint-minutes", "checkpoint_minutes", float, "also save last.pt within an epoch every X minutes "
     "(default 10; 0: at epoch ends only)"),
    ("--input-size", "input_size", int, "network input side in pixels (when the weights bring none)"),
    ("--val-fraction", "val_fraction", float, "share of each class held out for validation (0: none)"),
    ("--workers", "workers", int, "image decoding processes (-1: automatic)"),
    ("--seed", "seed", int, "seed for initialisation, shuffling, augmentation and the split"),
    ("--device", "device", str, "auto, cpu, cuda, cuda:N, mps"),
    ("--amp", "amp", str, "mixed precision: auto (bf16 on GPU), bf16, fp16, off"),
    ("--channels-last", "channels_last", str, "NHWC memory layout: auto (on for CUDA and CPU), on, off"),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train or fine-tune on an image folder (default: Fashion-MNIST)",
        description="Train Xception with a named recipe (paper, modern, fashion-mnist) or your own TOML file. "
        "Writes a run folder: config.toml, metrics.jsonl, TensorBoard events, checkpoints (last.pt, best.pt), "
        "loss/accuracy plots and model.safetensors (the best model) for 'xception evaluate' and 'predict'.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="?", help="image folder, or 'fashion-mnist' (the default)")
    p.add_argument("--val", metavar="FOLDER", help="validation folder (same class sub-folders)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the Fashion-MNIST IDX files (downloaded there "
                   "if missing; default: Debian's /usr/share/datasets/fashion-mnist, then ~/.cache/xception)")
    p.add_argument("--recipe", help="paper, modern, fashion-mnist, or a .toml file (default: fashion-mnist for "
                   "Fashion-MNIST, modern for folders)")
    p.add_argument("--model", help="registered model name (overrides the recipe's)")
    p.add_argument("--weights", metavar="FILE", help="start from these weights (a file, URL, tag or "
                   "hf-hub:ORG/NAME; fine-tuning); the classifier is replaced when the class count differs")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<recipe>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (or from this .pt file)")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping")
    group = p.add_argument_group("recipe overrides")
    for flag, _, kind, text in OVERRIDES:
        group.add_argument(flag, type=kind, help=text, metavar={int: "N", float: "X"}.get(kind, "NAME"))
    group.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    group.add_argument("--deterministic", action="store_true", default=None,
                       help="deterministic algorithms only (bit-exact reruns and resumes)")
    group.add_argument("--freeze-bn", action="store_true", default=None,
                       help="fine-tuning: keep the backbone's BatchNorm statistics (eval-mode BN); small datasets")
    group.add_argument("--sync-bn", action="store_true", default=None,
                       help="under torchrun: BatchNorm statistics over all processes' batches")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any recipe setting, e.g. --set model.width=0.5 --set hflip=0 (repeatable)")
    p.add_argument("--show-recipe", action="store_true", help="print the resolved recipe as TOML and exit: every "
                   "setting and model option, each with its documentation (unset model options commented out)")
    p.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..distributed import is_main_process
    from ..train import list_recipes, load_recipe
    from ..train.folder import claim_for_resume
    from ._output import setup_logging

    setup_logging()
    if args.list_recipes:
        for name in list_recipes():
            print(f"{name:15s} {load_recipe(name).description}")
        return 0
    # A folder another training holds is refused before its checkpoint is read (verifying one takes a while).
    lock = claim_for_resume(args.resume) if args.resume and is_main_process() and not args.show_recipe else None
    try:
        return _train(args)  # a second Ctrl-C or SIGTERM raises Aborted: main() says so and exits 128 + it
    finally:
        if lock is not None:
            lock.release()


def _train(args: argparse.Namespace) -> int:
    from ..data import FASHION_MNIST
    from ..distributed import is_main_process
    from ..train import apply_overrides, load_recipe, note_changes, resume_settings, train
    from ._common import print_json, stop_status

    if args.resume:
        recipe, _ = resume_settings(args.resume)
    else:
        fashion = args.data is None or args.data == FASHION_MNIST
        recipe = load_recipe(args.recipe or ("fashion-mnist" if fashion else "modern"))
    base = recipe
    changes = {setting: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, setting, _, _ in OVERRIDES}
    changes.update(compile=args.compile, deterministic=args.deterministic, model=args.model, sync_bn=args.sync_bn,
                   freeze_bn=args.freeze_bn)
    recipe = apply_overrides(recipe.replace(**{k: v for k, v in changes.items() if v is not None}), args.set)
    if not args.resume:
        recipe = note_changes(base, recipe)
    if args.show_recipe:
        print(recipe.to_toml(), end="")
        return 0
    result = train(recipe, args.data, val=args.val, data_dir=args.data_dir, out=args.out, weights=args.weights,
                   resume=args.resume, strict=args.strict, progress=not args.no_progress)
    status = stop_status(result.stop_signal) if result.interrupted else 0
    if not is_main_process():
        return status  # under torchrun, rank 0 reports
    if args.json:
        print_json({"run_dir": result.run_dir, "weights": result.weights, "epochs": result.epochs_done,
                    "best": result.best, "interrupted": result.interrupted, "nothing_to_do": result.nothing_to_do,
                    "skipped": result.skipped, "elapsed_s": round(result.elapsed_s, 1)})
    elif result.best and "val_top1" in result.best and not result.interrupted:
        print(f"best validation top-1: {100 * result.best['val_top1']:.2f} % (epoch {result.best['epoch']}); "
              f"model: {result.weights}")
    elif result.weights:
        print(f"model: {result.weights}")
    return status
