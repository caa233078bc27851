"""Data-parallel supernet training on ``torch.distributed``: W processes train what one process trains.

``torchrun --nproc-per-node W -m hwnas supernet train ...`` (or ``hwnas supernet train --nproc W``, which
launches exactly that) runs :func:`hwnas.supernet.train.train_supernet` in W processes sharing one *global*
batch of B images: gloo on CPU, nccl on GPUs (``cuda:LOCAL_RANK``).  They train the weights one process
with batch B trains, up to float reduction order, and write the same checkpoint, so a run checkpointed
under one world size resumes under another.  What that takes:

* **data**: every rank draws the same seeded global batch order and augmentation and keeps its
  contiguous slice of each global batch (B must be a multiple of W; a smaller last batch is split as
  evenly as it goes, and the losses are weighted so that the step still averages over the global
  batch).  Subnet sampling is seeded by (seed, step), so every rank picks the same subnets;
* **gradients**: the sandwich rule runs several forward/backward passes over different parameter
  subsets each step, which ``DistributedDataParallel``'s reducer (one backward per step; unused
  parameters found by a graph walk per pass) is not built for.  Instead the summed gradients are
  all-reduced once per step in flat buckets and averaged over W -- DDP's averaging, done once --
  before gradient clipping and the optimizer step (:meth:`DistributedWorld.reduce_gradients`);
* **batch norm** in train mode normalizes with the statistics of the global batch, else W
  processes would train something else: :func:`sync_batch_norm` all-reduces the per-channel sums;
  the families' sliced BNs call :func:`batch_norm`, which is ``F.batch_norm`` unless a distributed
  epoch is running.  torch's ``nn.SyncBatchNorm`` needs CUDA, so it is not used;
* **dropout** draws the mask of the whole global batch from the shared RNG state and applies its
  slice, so the masks and the RNG state saved in the checkpoint are the single-process ones;
* **outputs**: only rank 0 writes checkpoints, weights, the log and the summary and evaluates at
  each epoch's end; the others wait, then take over its RNG states.

Plain ``nn.BatchNorm2d`` and ``nn.Dropout`` modules become global-batch subclasses (same parameters,
buffers and state-dict keys) only while a distributed training epoch runs
(:meth:`DistributedWorld.training`); single-process training and every inference path run torch's own
layers unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hwnas.errors import DeviceUnavailableError, DistributedError, OptionValueError

#: how long a collective waits for the other ranks.  A rank that dies is noticed by torchrun, which
#: stops the others at once; this bounds the rest (a rank stopped or stuck without dying).  The longest
#: wait of a healthy run is rank 0's end-of-epoch evaluation, well under a minute for the Fashion-MNIST
#: families on a laptop CPU.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=10)

_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


# ---------------------------------------------------------------------------------- global-batch layers
@dataclass
class _GlobalBatch:
    """The rows of the current global batch this rank holds (set per step by ``shard``)."""

    lo: int = 0
    hi: int = 0
    rows: int = 0


_ACTIVE: _GlobalBatch | None = None  # set while a distributed training epoch runs


class _GlobalBatchNorm(torch.autograd.Function):
    """Train-mode batch norm over the rows of every rank; returns ``(y, mean, biased variance, count)``.

    Forward: per image and channel, the sum and the sum of squared deviations from that image's mean (float32
    over a few hundred values, good to ~1e-7 relative, and the same numbers however the batch is split over
    the ranks), combined in float64 into per-channel sums of x and x^2 and merged over the ranks in one
    all-reduce; then torch's fused normalization with that mean and variance.  (torch's own train-mode
    batch norm on channels-last CPU tensors gets them ~1e-5 wrong.)

    Backward: torch's fused eval-mode BN backward for this rank's terms, plus one all-reduce of the
    per-channel sums of ``dy`` and ``dy * x_hat`` for the terms through the mean and variance, so the input
    gradients are those of the concatenated batch.  The weight and bias gradients stay this rank's own sums,
    as every parameter's do until the once-per-step gradient reduction.  (Differentiating through an
    autograd-aware all-reduce of the sums gives the same in a dozen unfused ops, twice torch's BN time.)
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                group: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, c = x.shape[:2]
        x3 = x.reshape(rows, c, -1)  # a view of a contiguous or channels-last tensor
        n = x3.size(2)
        s1 = x3.sum(2)  # per image and channel: the same float32 sums whatever rows this rank holds
        m = s1 / n
        q = (x3 - m.unsqueeze(2)).square_().sum(2)
        sd, md = s1.double(), m.double()
        sum_sq = (q.double() + md * (2 * sd - n * md)).sum(0)  # sum(x^2) = sum((x - m)^2) + 2 m sum(x) - n m^2
        stats = torch.cat([sd.sum(0), sum_sq, sd.new_full((1,), rows * n)])
        dist.all_reduce(stats, group=group)
        count = stats[2 * c]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_(min=0)
        stat_dtype = torch.promote_types(x.dtype, torch.float32)
        mean_s, var_s = mean.to(stat_dtype), var.to(stat_dtype)
        w = weight if weight is not None else torch.ones(c, dtype=x.dtype, device=x.device)
        y = F.batch_norm(x, mean_s, var_s, weight, bias, False, 0.0, eps)
        ctx.save_for_backward(x, w, mean_s, var_s, count)
        ctx.eps, ctx.group, ctx.affine = eps, group, (weight is not None, bias is not None)
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: torch.Tensor, *_stats: Any) -> tuple:
        x, w, mean, var, count = ctx.saved_tensors
        c = x.size(1)
        shape = [1, c] + [1] * (x.dim() - 2)
        # eval-mode backward: dx = dy * w * invstd, dw = sum(dy * x_hat), db = sum(dy) (this rank's rows)
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(dy, x, w, mean, var, None, None, False, ctx.eps,
                                                               [True, True, True])
        sums = torch.cat([db, dw]).double()
        dist.all_reduce(sums, group=ctx.group)
        invstd = torch.rsqrt(var.double() + ctx.eps)
        k0 = (w.double() * invstd * sums[:c] / count).to(x.dtype)
        k1 = (w.double() * invstd * invstd * sums[c:] / count).to(x.dtype)
        dx.sub_(k0.view(shape)).addcmul_(x - mean.to(x.dtype).view(shape), k1.view(shape), value=-1)
        wa, ba = ctx.affine
        return dx, dw if wa else None, db if ba else None, None, None


def sync_batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                    weight: torch.Tensor | None, bias: torch.Tensor | None, momentum: float, eps: float,
                    group: Any = None) -> torch.Tensor:
    """Train-mode ``F.batch_norm`` over the batch of all ranks of ``group`` together (:class:`_GlobalBatchNorm`).

    ``running_mean``/``running_var`` (views of a larger buffer are updated in place) move by ``momentum``
    towards the global mean and unbiased variance, as ``F.batch_norm`` moves them.
    """
    y, mean, var, count = _GlobalBatchNorm.apply(x, weight, bias, eps, group)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.copy_(momentum * mean + (1 - momentum) * running_mean.double())
        if running_var is not None:
            running_var.copy_(momentum * var * count / (count - 1) + (1 - momentum) * running_var.double())
    return y


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm`` (same arguments), over the global batch in train mode while a distributed
    training epoch runs.  The families' elastic BNs (sliced parameters) call this."""
    if training and _ACTIVE is not None:
        return sync_batch_norm(input, running_mean, running_var, weight, bias, momentum, eps)
    return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that normalizes over the global batch while a distributed epoch runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _ACTIVE is None or not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats
        return sync_batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                               self.weight, self.bias, momentum, self.eps)


class GlobalBatchDropout(nn.Dropout):
    """``nn.Dropout`` that, while a distributed epoch runs, draws the mask of the whole global batch
    (the draws one process makes) and applies this rank's rows of it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = _ACTIVE
        if a is None or not self.training or self.p == 0:
            return super().forward(x)
        if x.shape[0] != a.hi - a.lo:
            raise RuntimeError(f"dropout over {x.shape[0]} rows, but this rank holds {a.hi - a.lo} of the batch")
        # a tensor of ones laid out in memory as x is (what dropout's mask takes its layout from)
        order = sorted(range(x.dim()), key=lambda d: x.stride(d), reverse=True)
        full = (a.rows, *x.shape[1:])
        ones = torch.ones([full[d] for d in order], dtype=x.dtype, device=x.device)
        ones = ones.permute([order.index(d) for d in range(x.dim())])
        mask = F.dropout(ones, self.p, True)[a.lo:a.hi]
        return x.mul_(mask) if self.inplace else x * mask


_GLOBAL_LAYERS: dict[type, type] = {nn.BatchNorm2d: GlobalBatchNorm2d, nn.Dropout: GlobalBatchDropout}


@contextlib.contextmanager
def _global_layers(net: nn.Module) -> Iterator[None]:
    """Switch ``net``'s plain BatchNorm2d / Dropout modules to their global-batch subclasses, and back."""
    modules = list(net.modules())
    for m in modules:
        if type(m) not in _GLOBAL_LAYERS and isinstance(m, (nn.modules.batchnorm._BatchNorm,
                                                            nn.modules.dropout._DropoutNd)):
            raise TypeError(f"{type(m).__name__} layers cannot be trained across processes (only BatchNorm2d "
                            "and Dropout have global-batch versions)")
    swapped = [(m, type(m)) for m in modules if type(m) in _GLOBAL_LAYERS]
    for m, cls in swapped:
        m.__class__ = _GLOBAL_LAYERS[cls]
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls


# ---------------------------------------------------------------------------------- worlds
def check_launch(device: str, batch_size: int, nproc: int) -> None:
    """What a launcher can refuse before it starts ``nproc`` workers, as one line: a global batch they
    cannot share, or fewer GPUs than workers."""
    check_batch_split(batch_size, nproc)
    _device(device, nproc - 1)


def check_batch_split(batch_size: int, world_size: int, n_images: int | None = None) -> None:
    """Refuse a global batch that ``world_size`` processes cannot share (a one-line ``OptionValueError``)."""
    if batch_size % world_size:
        raise OptionValueError(f"batch size {batch_size} cannot be shared by {world_size} processes: each "
                               f"takes an equal slice of the global batch, so give a multiple of {world_size}")
    last = n_images % batch_size if n_images else 0
    if 0 < last < world_size:
        raise OptionValueError(f"the epoch's last batch holds {last} of the {n_images} training images, fewer "
                               f"than the {world_size} processes; choose another batch size")


class World:
    """One process training alone: every method leaves training as it would be without this class."""

    size: int = 1
    rank: int = 0
    backend: str | None = None

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def is_main(self) -> bool:
        """Whether this rank writes the outputs and evaluates (rank 0)."""
        return self.rank == 0

    def to_dict(self) -> dict:
        return {"world_size": self.size, "backend": self.backend}

    def check_batches(self, batch_size: int, n_images: int) -> None:
        check_batch_split(batch_size, self.size, n_images)

    def broadcast_state(self, net: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers."""

    @contextlib.contextmanager
    def training(self, net: nn.Module) -> Iterator[None]:
        """The span of a training epoch (global-batch layers in a distributed world)."""
        yield

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the global batch ``(x, y)``."""
        return x, y

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate this rank's mean loss over its rows."""
        loss.backward()

    def reduce_gradients(self, params: Sequence[nn.Parameter], loss: float) -> float:
        """Make every rank's gradients those of the global batch; returns ``loss`` of the global batch."""
        return loss

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def follow_main(self) -> None:
        """After work only rank 0 did: wait for it and take its torch and numpy RNG states."""

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj


class DistributedWorld(World):
    """One rank of a ``torch.distributed`` training job (the default process group)."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.size = dist.get_world_size()
        self.rank = dist.get_rank()
        self.backend = str(dist.get_backend())
        self._batch = _GlobalBatch()
        self._loss_weight = 1.0 / self.size  # this rank's share of the current global batch

    def _coalesced(self, tensors: Sequence[torch.Tensor], collective: Callable[[torch.Tensor], None]) -> None:
        """Run ``collective`` on ``tensors`` flattened into buckets of one dtype, and copy the results back."""
        bucket: list[torch.Tensor] = []

        def flush() -> None:
            flat = torch.cat([t.reshape(-1) for t in bucket])
            collective(flat)
            o = 0
            for t in bucket:
                t.copy_(flat[o:o + t.numel()].view(t.shape))
                o += t.numel()
            bucket.clear()

        size = 0
        for t in tensors:
            if bucket and (t.dtype != bucket[0].dtype or size + t.numel() * t.element_size() > _BUCKET_BYTES):
                flush()
                size = 0
            bucket.append(t)
            size += t.numel() * t.element_size()
        if bucket:
            flush()

    def broadcast_state(self, net: nn.Module) -> None:
        self._coalesced(list(net.state_dict().values()), lambda t: dist.broadcast(t, 0))

    @contextlib.contextmanager
    def training(self, net: nn.Module) -> Iterator[None]:
        global _ACTIVE
        with _global_layers(net):
            _ACTIVE = self._batch
            try:
                yield
            finally:
                _ACTIVE = None

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x.shape[0]
        q, r = divmod(rows, self.size)  # torch.tensor_split's sizes: the first r ranks take one more
        lo = self.rank * q + min(self.rank, r)
        hi = lo + q + (self.rank < r)
        self._batch.lo, self._batch.hi, self._batch.rows = lo, hi, rows
        self._loss_weight = (hi - lo) / rows
        return x[lo:hi], y[lo:hi]

    def backward(self, loss: torch.Tensor) -> None:
        # gradients are averaged over the ranks, so a rank whose share is not 1/W scales its mean loss
        # (W * share = 1 for equal shares, so the usual case backpropagates the loss as it is)
        scale = self.size * self._loss_weight
        (loss if scale == 1.0 else loss * scale).backward()

    def reduce_gradients(self, params: Sequence[nn.Parameter], loss: float) -> float:
        """All-reduce and average the gradients in flat buckets; a gradient that is ``None`` here but not
        on another rank counts as zero, one that is ``None`` on every rank stays ``None`` (the optimizer
        skips it, as it does in one process)."""
        meta = torch.tensor([p.grad is not None for p in params] + [loss * self._loss_weight],
                            dtype=torch.float64, device=self.device)
        dist.all_reduce(meta)
        grads = []
        for p, seen in zip(params, meta[:-1].tolist()):
            if seen:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)

        def average(flat: torch.Tensor) -> None:
            dist.all_reduce(flat)
            flat.div_(self.size)

        self._coalesced(grads, average)
        return float(meta[-1])

    def barrier(self) -> None:
        dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def follow_main(self) -> None:
        states = [torch.get_rng_state(), np.random.get_state()]
        dist.broadcast_object_list(states, 0, device=self.device)
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])

    def share(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, 0, device=self.device)
        return box[0]


def _device(name: str, local_rank: int | None = None) -> torch.device:
    """``name`` (auto, cpu, cuda, cuda:N) as a device; in a distributed job CUDA means ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda" or local_rank is None:
        return device
    n = torch.cuda.device_count()
    if n == 0:
        raise DeviceUnavailableError(f"device {name!r} asked for, but torch sees no GPU here; use --device cpu")
    if local_rank >= n:
        raise DeviceUnavailableError(f"each process needs a GPU of its own and torch sees {n} here; "
                                     f"start at most {n} processes")
    return torch.device("cuda", local_rank)


def launched_rank() -> tuple[int, int]:
    """``(world size, rank)`` that torchrun gave this process (``WORLD_SIZE``, ``RANK``); ``(1, 0)`` without it."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def join(device: str) -> World:
    """This process's :class:`World`: a :class:`DistributedWorld` when a process group exists or torchrun
    launched it (``WORLD_SIZE`` > 1), else a single-process :class:`World` on ``device``.

    Under torchrun the process group (nccl for CUDA, gloo for CPU) is made on first use and kept until
    the process exits, so later trainings in the same process reuse it: a gloo group made again on the
    same torchrun store can pick up the previous group's stale addresses and fail to connect.
    """
    if dist.is_available() and dist.is_initialized():
        return DistributedWorld(_device(device, int(os.environ.get("LOCAL_RANK", dist.get_rank()))))
    if launched_rank()[0] <= 1:
        return World(_device(device))
    if not dist.is_available():
        raise DeviceUnavailableError("this torch build has no torch.distributed; install a build with it")
    dev = _device(device, int(os.environ["LOCAL_RANK"]))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", timeout=PROCESS_GROUP_TIMEOUT, device_id=dev)
    else:
        dist.init_process_group("gloo", timeout=PROCESS_GROUP_TIMEOUT)
    atexit.register(_leave)
    return DistributedWorld(dev)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- launching
def launch(nproc: int, module_args: Sequence[str]) -> None:
    """Run ``python -m hwnas MODULE_ARGS`` in ``nproc`` processes under ``torch.distributed.run --standalone``.

    Each worker gets ``OMP_NUM_THREADS`` = cores / ``nproc`` unless it is set (torchrun would set 1 and
    say so).  A failed worker is one ``DistributedError`` (its own messages are above it); Ctrl-C or
    SIGTERM here stop torchrun, which stops its workers, before this returns.
    """
    if nproc < 1:
        raise OptionValueError(f"--nproc {nproc} is out of range: give a whole number >= 1")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "hwnas", *module_args]
    proc = subprocess.Popen(cmd, env=env)
    try:
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    if rc != 0:
        raise DistributedError(f"distributed training on {nproc} processes failed (torchrun exit code {rc}); "
                               "the workers' messages are above")
