"""The worker that tests/supernet/test_distributed.py starts under ``torch.distributed.run`` (not a test module).

``python -m torch.distributed.run --standalone --nproc-per-node W ddp_worker.py SPEC.json`` runs, on every
rank, the unit checks of the global-batch layers and the gradient reduction (rank 0 writes their figures
to ``spec["checks"]``, when given), then each training job of ``spec["jobs"]`` (``{"out", "config",
"max_steps", "control"}``) through ``train_supernet``, all in the one process group that
``hwnas.supernet.distributed.join`` makes.  ``control`` breaks one part on purpose, so that the tests show
their bounds catch it: ``"no_bn_sync"`` (process-local batch norm), ``"no_grad_average"`` (each rank steps
on its own gradients), ``"die"`` (rank 1 exits during its second step).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hwnas.supernet import distributed as D
from hwnas.supernet.train import TrainConfig, train_supernet


def _max_all(values: dict[str, float]) -> dict[str, float]:
    """The largest of each figure over the ranks (every figure is a difference or a failure flag)."""
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return dict(zip(values, t.tolist()))


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def check_batch_norm(world: D.DistributedWorld) -> dict[str, float]:
    """Synced BN on each rank's rows against ``F.batch_norm`` on the concatenated batch (sliced running
    stats, as the elastic layers pass them; and without affine parameters or running stats), and the
    process-local BN as the control."""
    g = torch.Generator().manual_seed(0)
    rows, c, c_max = 10, 6, 8
    x = (torch.randn(rows, c, 5, 5, generator=g) * 3 + 2).contiguous(memory_format=torch.channels_last)
    up = torch.randn(rows, c, 5, 5, generator=g)
    w, b = torch.randn(c, generator=g), torch.randn(c, generator=g)
    rm0, rv0 = torch.randn(c_max, generator=g), torch.rand(c_max, generator=g) + 0.5

    xf, wf, bf = (t.clone().requires_grad_() for t in (x, w, b))
    rmf, rvf = rm0.clone(), rv0.clone()
    yf = F.batch_norm(xf, rmf[:c], rvf[:c], wf, bf, True, 0.1, 1e-5)
    (yf * up).sum().backward()

    with world.training(nn.Identity()):
        xs, ups = world.shard(x, up)
        lo, hi = world._batch.lo, world._batch.hi
        xl, wl, bl = (t.clone().requires_grad_() for t in (xs, w, b))
        rml, rvl = rm0.clone(), rv0.clone()
        yl = D.batch_norm(xl, rml[:c], rvl[:c], wl, bl, True, 0.1, 1e-5)
        (yl * ups).sum().backward()
        xn = xs.clone().requires_grad_()  # no affine parameters, no running statistics
        (D.batch_norm(xn, None, None, None, None, True) * ups).sum().backward()
    for t in (wl.grad, bl.grad):  # the parameters are shared: their gradients add up over the ranks
        dist.all_reduce(t)
    xnf = x.clone().requires_grad_()
    (F.batch_norm(xnf, None, None, None, None, True) * up).sum().backward()
    local = F.batch_norm(xs, None, None, w, b, True, 0.1, 1e-5)
    return {"bn_out": _diff(yl, yf[lo:hi]), "bn_dx": _diff(xl.grad, xf.grad[lo:hi]),
            "bn_plain_dx": _diff(xn.grad, xnf.grad[lo:hi]),
            "bn_dw": _diff(wl.grad, wf.grad), "bn_db": _diff(bl.grad, bf.grad),
            "bn_running_mean": _diff(rml, rmf), "bn_running_var": _diff(rvl, rvf),
            "bn_local_out_control": _diff(local, yf[lo:hi].detach())}


def check_layers(world: D.DistributedWorld) -> dict[str, float]:
    """A network of plain BatchNorm2d and Dropout modules, switched to global-batch layers: its output rows,
    running stats, batch counter and RNG state against one process on the whole batch."""
    torch.manual_seed(1)
    one = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 5))
    many = copy.deepcopy(one)
    x = torch.randn(12, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(7)
    y_full = one(x)
    rng_full = torch.get_rng_state()
    torch.manual_seed(7)
    with world.training(many):
        types = [type(m).__name__ for m in many]
        xs, _ = world.shard(x, x)
        y = many(xs)
    lo, hi = world._batch.lo, world._batch.hi
    restored = all(type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.Flatten, nn.Dropout, nn.Linear) for m in many)
    return {"layers_out": _diff(y, y_full[lo:hi]),
            "layers_running_var": _diff(many[1].running_var, one[1].running_var),
            "layers_batches_tracked": float(many[1].num_batches_tracked != one[1].num_batches_tracked),
            "layers_rng_differs": float(not torch.equal(torch.get_rng_state(), rng_full)),
            "layers_not_switched": float(types[1] != "GlobalBatchNorm2d" or types[3] != "GlobalBatchDropout"),
            "layers_not_restored": float(not restored)}


def check_elastic_bn(world: D.DistributedWorld) -> dict[str, float]:
    """The ResNet50 family's elastic BN (its full width through the module, a narrower one through the
    sliced ``batch_norm``), which no Fashion-MNIST training here exercises."""
    from hwnas.supernet.families.resnet50 import ElasticBatchNorm2d

    torch.manual_seed(4)
    one = ElasticBatchNorm2d(8).train()
    many = copy.deepcopy(one)
    xs = [torch.randn(6, c, 4, 4) * 2 + 1 for c in (8, 5)]
    ys = [one(x) for x in xs]
    with world.training(many):
        out = [many(world.shard(x, x)[0]) for x in xs]
    lo, hi = world._batch.lo, world._batch.hi
    return {"elastic_bn_out": max(_diff(o, y[lo:hi]) for o, y in zip(out, ys)),
            "elastic_bn_running_var": _diff(many.bn.running_var, one.bn.running_var)}


def check_gradients(world: D.DistributedWorld) -> dict[str, float]:
    """``reduce_gradients`` on a linear model over an uneven global batch (5 rows: 3 + 2): the averaged
    gradients and the loss are those of the whole batch; a gradient missing on every rank stays missing,
    one missing on a single rank counts as zero there."""
    torch.manual_seed(3)
    lin, unused, one_sided = nn.Linear(4, 3), nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    ref = nn.Linear(4, 3)
    ref.load_state_dict(lin.state_dict())
    loss_full = F.cross_entropy(ref(x), y)
    loss_full.backward()
    xs, ys = world.shard(x, y)
    loss = F.cross_entropy(lin(xs), ys)
    world.backward(loss)
    if world.rank == 0:
        (one_sided * 2.0).sum().backward()
    params = [lin.weight, lin.bias, unused, one_sided]
    loss_global = world.reduce_gradients(params, float(loss.detach()))
    expected_one_sided = torch.full((3,), 2.0 / world.size)
    return {"grad_weight": _diff(lin.weight.grad, ref.weight.grad), "grad_bias": _diff(lin.bias.grad, ref.bias.grad),
            "grad_loss": abs(loss_global - float(loss_full.detach())),
            "grad_unused_filled": float(unused.grad is not None),
            "grad_one_sided": _diff(one_sided.grad, expected_one_sided)}


def run_checks(path: str) -> None:
    world = D.join("cpu")
    figures = _max_all({**check_batch_norm(world), **check_layers(world), **check_elastic_bn(world),
                         **check_gradients(world)})
    if world.is_main:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)


@contextlib.contextmanager
def _broken(control: str | None):
    """Break one part of the distributed training for a control run, and mend it afterwards."""
    saved = D.sync_batch_norm, D.DistributedWorld.reduce_gradients
    reduce = D.DistributedWorld.reduce_gradients
    if control == "no_bn_sync":
        D.sync_batch_norm = lambda x, rm, rv, w, b, m, eps, group=None: F.batch_norm(x, rm, rv, w, b, True, m, eps)
    elif control == "no_grad_average":
        D.DistributedWorld.reduce_gradients = lambda self, params, loss: loss
    elif control == "die":
        calls = []

        def die_in_second_step(self, params, loss):
            calls.append(1)
            if self.rank == 1 and len(calls) == 2:
                os._exit(3)
            return reduce(self, params, loss)

        D.DistributedWorld.reduce_gradients = die_in_second_step
    try:
        yield
    finally:
        D.sync_batch_norm, D.DistributedWorld.reduce_gradients = saved


def run_job(job: dict) -> None:
    with _broken(job.get("control")):
        train_supernet(TrainConfig(**job["config"]), job["out"], max_steps=job.get("max_steps"))


def main() -> None:
    torch.set_num_threads(1)
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec.get("checks"):
        run_checks(spec["checks"])
    for job in spec.get("jobs", []):
        run_job(job)


if __name__ == "__main__":
    main()
