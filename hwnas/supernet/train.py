"""Weight-sharing training of a supernet: the sandwich rule with in-place distillation (BigNAS).

Why the sandwich rule rather than OFA's progressive shrinking: it is a single stage with one
learning-rate schedule (progressive shrinking needs a trained teacher and four phases with their
own schedules), so a short CPU budget goes entirely into one run that trains the largest and the
smallest subnets every step.  Each step:

1. the largest subnet at the largest resolution learns from the labels (label smoothing);
2. the smallest subnet at the smallest resolution and ``n_random`` random subnets (random
   resolutions) learn from the largest one's soft predictions (in-place distillation);
3. gradients are summed and one SGD step is taken.

Training is seeded and resumable: a checkpoint (model, optimizer, position in the epoch) is written
atomically every ``checkpoint_every`` steps and at each epoch's end; a restarted run replays the
data order to the same batch and continues.

Under torchrun (or ``hwnas supernet train --nproc W``) W processes share each global batch and train
what one process trains, writing the same checkpoint (``hwnas.supernet.distributed``), so a run
checkpointed by one world size resumes under another.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.errors import CheckpointError, OptionValueError
from hwnas.io import atomic_output, atomic_write_json
from hwnas.supernet.distributed import join
from hwnas.supernet.registry import create_supernet


@dataclass(frozen=True)
class TrainConfig:
    supernet: str = "mbv3_fmnist"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    warmup_steps: int = 200
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adamw" (betas 0.9/0.999; transformers)
    n_random: int = 1
    seed: int = 0
    checkpoint_every: int = 50
    limit_train: int = 0  # use only the first N training images (0 = all); for tests
    train_split: str = "train"  # tests train on the shipped 'calib' subset
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise OptionValueError(f"unknown optimizer {self.optimizer!r}; choose sgd or adamw")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_family(cls, supernet: str = "mbv3_fmnist", **overrides) -> "TrainConfig":
        """The config of ``supernet`` with its family's recipe defaults (``train_defaults``: a
        transformer family asks for AdamW) under the given overrides; ``None`` overrides are ignored."""
        from hwnas.supernet.registry import get_family

        kw = dict(getattr(get_family(supernet), "train_defaults", {}) or {})
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(supernet=supernet, **kw)


def _resize(x: torch.Tensor, r: int) -> torch.Tensor:
    if x.shape[-1] == r:
        return x
    y = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
    return y.contiguous(memory_format=torch.channels_last)


def _atomic_save(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _load_checkpoint(path: Path, cfg: TrainConfig, device: torch.device | str) -> dict:
    """The checkpoint at ``path``, or ``CheckpointError`` when another training config wrote it (the world
    size is no part of the config: any number of processes resumes any checkpoint)."""
    state = torch.load(path, map_location=device, weights_only=False)
    saved = state["config"]
    if any(saved.get(k, v) != v for k, v in cfg.to_dict().items()):
        raise CheckpointError(f"{path} was written with another training config; use a new --out directory")
    return state


def check_resumable(cfg: TrainConfig, out_dir: str | Path) -> None:
    """Raise ``CheckpointError`` if ``out_dir`` holds a checkpoint of another config (a launcher checks
    this before it starts the workers, so the error is one line rather than one per worker)."""
    path = Path(out_dir) / "checkpoint.pt"
    if path.is_file():
        _load_checkpoint(path, cfg, "cpu")


def train_supernet(cfg: TrainConfig, out_dir: str | Path, data_dir: str | None = None,
                   progress: Callable[[int, int, dict], None] | None = None,
                   max_steps: int | None = None) -> dict:
    """Train (or resume training) and write ``out_dir/{checkpoint.pt, supernet.pt, train_log.jsonl}``.

    ``max_steps`` stops after that many steps in this call (the checkpoint allows a later resume);
    used to test resumption.  Returns a summary dict.

    Launched by torchrun (``WORLD_SIZE`` > 1) or inside an existing process group, each process trains
    its slice of every global batch of ``cfg.batch_size`` images (a multiple of the world size); rank 0
    alone writes the outputs, evaluates and reports ``progress``; every rank returns rank 0's summary.
    """
    from hwnas.data.fashion_mnist import batches, load_split
    from hwnas.supernet.evaluate import EvalData, evaluate_arch

    out = Path(out_dir)
    world = join(cfg.device)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "train_log.jsonl"
    device = world.device
    torch.set_flush_denormal(True)  # tiny activations/gradients otherwise slow CPU kernels down
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    imgs, labels = load_split(cfg.train_split, data_dir)
    if cfg.limit_train:
        imgs, labels = imgs[: cfg.limit_train], labels[: cfg.limit_train]
    world.check_batches(cfg.batch_size, len(imgs))
    steps_per_epoch = math.ceil(len(imgs) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    net = create_supernet(cfg.supernet, pretrained=False).to(device).to(memory_format=torch.channels_last)
    space = net.space
    decay, no_decay = [], []
    for n_, p in net.named_parameters():
        (no_decay if p.ndim <= 1 or n_.endswith("_matrix") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    else:  # TrainConfig checks the name
        raise AssertionError(cfg.optimizer)
    start_epoch, start_step, elapsed = 0, 0, 0.0
    if ckpt_path.is_file():
        state = _load_checkpoint(ckpt_path, cfg, device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, start_step, elapsed = state["epoch"], state["step"], state["elapsed"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["np_rng"])
    world.broadcast_state(net)
    params = list(net.parameters())

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))

    def save(epoch: int, step: int) -> None:
        if not world.is_main:
            return
        _atomic_save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
                      "elapsed": elapsed, "config": cfg.to_dict(), "torch_rng": torch.get_rng_state(),
                      "np_rng": np.random.get_state()}, ckpt_path)

    steps_done_now = 0
    summary: dict = {}
    max_r = net.family.resolution(space.max_arch())
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t_epoch, loss_sum, n_loss = time.perf_counter(), 0.0, 0
        it = batches(imgs, labels, cfg.batch_size, resolution=28, shuffle=True, seed=cfg.seed * 1000 + epoch,
                     augment=True)
        with world.training(net):
            for step, (x, y) in enumerate(it):
                if epoch == start_epoch and step < start_step:
                    continue  # replay the data order up to where the checkpoint stopped
                if max_steps is not None and steps_done_now >= max_steps:
                    save(epoch, step)
                    world.barrier()  # the checkpoint is on disk when any rank returns
                    return {"stopped_at": {"epoch": epoch, "step": step}, "elapsed_s": elapsed}
                t0 = time.perf_counter()
                gstep = epoch * steps_per_epoch + step
                for g in opt.param_groups:
                    g["lr"] = lr_at(gstep)
                rng = np.random.default_rng([cfg.seed, gstep])  # per-step arch sampling: resume is exact
                x, y = world.shard(x, y)
                x = x.to(device).contiguous(memory_format=torch.channels_last)
                y = y.to(device)
                opt.zero_grad(set_to_none=True)
                net.set_active(space.max_arch())
                logits = net(_resize(x, max_r))
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                world.backward(loss)
                soft = F.softmax(logits.detach(), dim=1)
                archs = [space.min_arch()] + [space.sample(rng) for _ in range(cfg.n_random)]
                for a in archs:
                    net.set_active(a)
                    out_s = net(_resize(x, net.family.resolution(a)))
                    kd = torch.sum(-soft * F.log_softmax(out_s, dim=1), dim=1).mean()
                    world.backward(kd)
                loss_sum += world.reduce_gradients(params, float(loss.detach()))
                n_loss += 1
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                elapsed += time.perf_counter() - t0
                steps_done_now += 1
                if progress is not None and world.is_main:
                    progress(gstep + 1, total_steps, {"loss": loss_sum / n_loss, "epoch": epoch + 1})
                if (step + 1) % cfg.checkpoint_every == 0:
                    save(epoch, step + 1)
        net.eval()
        if world.is_main:  # end of epoch: evaluate the largest and smallest subnets on the validation split
            ev = EvalData.load("val", data_dir)
            eval_net = net if device.type == "cpu" else copy.deepcopy(net).cpu()
            acc_max = evaluate_arch(eval_net, space.max_arch(), ev)
            acc_min = evaluate_arch(eval_net, space.min_arch(), ev)
            row = {"epoch": epoch + 1, "train_loss_max": round(loss_sum / max(1, n_loss), 4),
                   "val_top1_max": acc_max, "val_top1_min": acc_min, "elapsed_s": round(elapsed, 1),
                   "epoch_wall_s": round(time.perf_counter() - t_epoch, 1)}
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            summary = row
            save(epoch + 1, 0)
        world.follow_main()
    summary = dict(summary, config=cfg.to_dict(), train_seconds=round(elapsed, 1), device=str(device),
                   **world.to_dict())
    if world.is_main:
        sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        _atomic_save(sd, out / "supernet.pt")
        atomic_write_json(out / "summary.json", summary, indent=2)
    return world.share(summary)
