"""Job commands registered on the ``hwnas`` app (kept apart from main.py to keep imports lazy)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hwnas.cli.common import emit, progress_bar
from hwnas.cli.main import JSON_OPT, app, supernet_app


@supernet_app.command("train")
def supernet_train_cmd(
    out: Path = typer.Option(Path("runs/supernet"), "-o", "--out", help="Run directory (checkpoint, log, weights)."),
    supernet: str = typer.Option("mbv3_fmnist", help="Supernet family (a Fashion-MNIST family)."),
    epochs: int = typer.Option(7, help="Epochs over the 55,000-image training split."),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1),
    n_random: int = typer.Option(1, help="Random subnets per step besides the largest and smallest."),
    seed: int = typer.Option(0),
    data: Optional[Path] = typer.Option(None, help="Fashion-MNIST IDX directory."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    json_: bool = JSON_OPT,
) -> None:
    """Sandwich-rule training with in-place distillation; resumes from OUT/checkpoint.pt if present."""
    from hwnas.supernet.train import TrainConfig, train_supernet

    cfg = TrainConfig(supernet=supernet, epochs=epochs, batch_size=batch_size, lr=lr, n_random=n_random,
                      seed=seed, device=device)
    with progress_bar("training", None, enabled=not json_) as update:
        res = train_supernet(cfg, out, str(data) if data else None,
                             progress=lambda s, t, info: update(s, t, f"epoch {info['epoch']} loss {info['loss']:.3f}"))
    emit(res, json_, lambda r: typer.echo(
        f"trained in {r['train_seconds']:.0f} s: val top-1 largest {r['val_top1_max']:.4f}, smallest "
        f"{r['val_top1_min']:.4f}; weights {out / 'supernet.pt'}"))


@supernet_app.command("eval")
def supernet_eval_cmd(
    arch: Optional[str] = typer.Option(None, "--arch", help="Arch JSON file or inline JSON."),
    samples: int = typer.Option(0, help="Evaluate N sampled archs (plus min and max) and store them."),
    split: str = typer.Option("val", help="val | test (test: final figures only)."),
    supernet: str = typer.Option("mbv3_fmnist"),
    weights: Optional[Path] = typer.Option(None, help="Supernet weights (default: shipped)."),
    store: Path = typer.Option(Path("hwnas-out/store.sqlite"), help="Measurement/accuracy store."),
    seed: int = typer.Option(0),
    data: Optional[Path] = typer.Option(None, help="Fashion-MNIST IDX directory (for --split test)."),
    json_: bool = JSON_OPT,
) -> None:
    """BN recalibration then top-1 of one arch, or of N sampled archs written to the store."""
    from hwnas.supernet.accuracy import evaluate_job

    with progress_bar("evaluating", samples + 2 if samples else 1, enabled=not json_) as update:
        res = evaluate_job(supernet=supernet, weights=str(weights) if weights else None, arch=arch,
                           samples=samples, split=split, store_path=store, seed=seed,
                           data_dir=str(data) if data else None, progress=update)

    def human(r):
        if "accuracy" in r:
            typer.echo(f"{r['arch_id']}: top-1 {r['accuracy']:.4f} on {r['split']} ({r['n_images']} images)")
        else:
            typer.echo(f"evaluated {r['evaluated']} archs on {r['split']} ({r['skipped']} already stored) in "
                       f"{r['seconds']:.0f} s ({r['archs_per_minute']:.1f} archs/min); top-1 min/median/max "
                       f"{r['acc_min']:.4f}/{r['acc_median']:.4f}/{r['acc_max']:.4f}; store {r['store']}")

    emit(res, json_, human)
