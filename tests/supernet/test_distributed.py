"""Supernet training on several processes (torch.distributed, gloo on 127.0.0.1) trains what one process trains.

The two-process runs go through ``python -m torch.distributed.run --standalone`` and ``ddp_worker.py``, once
for the whole module (startup is most of their cost).  Bounds on the max abs difference of the weights and,
apart, of the BN statistics after 3 steps of mbv3_fmnist and vit_fmnist at a global batch of 32 (the
recipes' warm-up, so the first steps' learning rates are small):

* ``EXACT`` against one process on the same arithmetic (a gloo group of one: the global-batch BN's
  statistics, the same dropout draws): what is left is float reduction order (weight gradients summed
  over two half batches, BN gradient sums).  Measured: mbv3 4.7e-7 (weights) / 6.0e-7 (BN statistics),
  resumed runs up to 7.8e-7, ViT 4.3e-8;
* ``PLAIN`` against one process on the untouched single-process path, whose float32 batch norm on
  channels-last CPU tensors is itself ~1e-5 off the exact statistics; a freshly initialized net amplifies
  such noise 3-20x a step, so one process does not agree with itself better: on 1 vs 2 threads it differs
  by 1.7e-5 after 3 steps (bench/bench_ddp.py).  Measured: mbv3 1.1e-5 / 2.9e-5 -- as much as one process
  on the two arithmetics differs from itself (1.1e-5 / 2.9e-5) -- ViT 3.0e-6 / 2.6e-6.

The controls end 4.0e-4 (process-local BN) and 6.4e-4 (each rank stepping on its own gradients) away in
the weights, beyond both bounds: the bounds catch a missing BN sync or gradient average.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from hwnas.cli.main import main
from hwnas.errors import OptionValueError
from hwnas.supernet.distributed import check_batch_split
from hwnas.supernet.train import TrainConfig, train_supernet

WORKER = Path(__file__).with_name("ddp_worker.py")
SMALL = dict(epochs=1, batch_size=32, limit_train=160, train_split="calib", checkpoint_every=1)
CFG = TrainConfig.for_family("mbv3_fmnist", **SMALL).to_dict()
VIT = TrainConfig.for_family("vit_fmnist", **SMALL).to_dict()  # AdamW; LayerNorm and BN in its stem and embedding
STEPS = 3  # of 5 in the epoch: no end-of-epoch evaluation
EXACT = 1e-5
PLAIN = 1e-4


def torchrun(nproc: int, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@contextlib.contextmanager
def one_rank_group():
    """A gloo group of this process alone, so that training takes the distributed path (its arithmetic)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def train(out: Path, steps: int | None, *, distributed_path: bool = False, config: dict = CFG) -> None:
    with one_rank_group() if distributed_path else contextlib.nullcontext():
        train_supernet(TrainConfig(**config), out, max_steps=steps)


def job(out: Path, steps: int | None, control: str | None = None, config: dict = CFG) -> dict:
    return {"out": str(out), "config": config, "max_steps": steps, "control": control}


def checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=False)


def weight_diff(a: Path, b: Path) -> dict[str, float]:
    """Max abs difference of the parameters and, apart, of the float buffers (BN statistics); integer buffers
    (BN batch counters) must be equal."""
    sa, sb = checkpoint(a), checkpoint(b)
    assert (sa["epoch"], sa["step"]) == (sb["epoch"], sb["step"])
    ma, mb = sa["model"], sb["model"]
    assert ma.keys() == mb.keys()
    out = {"params": 0.0, "buffers": 0.0}
    for k in ma:
        if not ma[k].dtype.is_floating_point:
            assert torch.equal(ma[k], mb[k]), k
            continue
        kind = "buffers" if k.endswith(("running_mean", "running_var")) else "params"
        out[kind] = max(out[kind], float((ma[k].double() - mb[k].double()).abs().max()))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    torch.set_num_threads(1)
    train(root / "plain", STEPS)
    train(root / "exact", STEPS, distributed_path=True)
    train(root / "1to2", 1, distributed_path=True)
    train(root / "vit_plain", STEPS, config=VIT)
    train(root / "vit_exact", STEPS, distributed_path=True, config=VIT)
    spec = {"checks": str(root / "checks.json"),
            "jobs": [job(root / "two", STEPS), job(root / "vit_two", STEPS, config=VIT),
                     job(root / "1to2", STEPS - 1), job(root / "two_1", 1),
                     job(root / "no_bn_sync", STEPS, "no_bn_sync"),
                     job(root / "no_grad_average", STEPS, "no_grad_average")]}
    (root / "spec.json").write_text(json.dumps(spec))
    r = torchrun(2, WORKER, root / "spec.json")
    assert r.returncode == 0, r.stderr[-4000:]
    for name in ("2to1", "2to1_plain"):
        shutil.copytree(root / "two_1", root / name)
    train(root / "2to1", STEPS - 1, distributed_path=True)
    train(root / "2to1_plain", STEPS - 1)
    return root


@pytest.mark.parametrize("family", ["", "vit_"], ids=["mbv3_fmnist", "vit_fmnist"])  # the runs' name prefixes
def test_two_processes_train_what_one_process_trains(runs, family):
    exact = weight_diff(runs / f"{family}two", runs / f"{family}exact")
    assert exact["params"] < EXACT and exact["buffers"] < EXACT, exact
    plain = weight_diff(runs / f"{family}two", runs / f"{family}plain")
    assert plain["params"] < PLAIN and plain["buffers"] < PLAIN, plain
    two, one = checkpoint(runs / f"{family}two"), checkpoint(runs / f"{family}plain")
    # the same checkpoint format; each rank drew the whole batch's dropout masks, so the RNG state is one process's
    assert two.keys() == one.keys() and two["config"] == one["config"]
    assert torch.equal(two["torch_rng"], one["torch_rng"])


@pytest.mark.parametrize("control", ["no_bn_sync", "no_grad_average"])
def test_without_bn_sync_or_gradient_average_the_bound_fails(runs, control):
    d = weight_diff(runs / control, runs / "exact")
    assert d["params"] > PLAIN, d


def test_global_batch_layers_match_one_process_on_the_concatenated_batch(runs):
    f = json.loads((runs / "checks.json").read_text())
    # synced BN over 5 + 5 rows (values of order 1..10) vs F.batch_norm over the 10: float32 rounding only
    for k in ("bn_out", "bn_dx", "bn_plain_dx", "bn_running_mean", "bn_running_var"):
        assert f[k] < 1e-5, (k, f[k])
    for k in ("bn_dw", "bn_db"):  # sums over 250 elements
        assert f[k] < 5e-5, (k, f[k])
    assert f["bn_local_out_control"] > 0.1  # normalizing each rank's rows alone is far off
    # a plain BatchNorm2d + Dropout net: same rows out, statistics, batch counter and RNG state; layers put back
    assert f["layers_out"] < 1e-6 and f["layers_running_var"] < 1e-6
    assert f["elastic_bn_out"] < 1e-6 and f["elastic_bn_running_var"] < 1e-6
    for k in ("layers_batches_tracked", "layers_rng_differs", "layers_not_switched", "layers_not_restored",
              "grad_unused_filled"):
        assert f[k] == 0.0, k
    # an uneven batch (3 + 2 rows): the averaged gradients and loss are the whole batch's
    for k in ("grad_weight", "grad_bias", "grad_loss", "grad_one_sided"):
        assert f[k] < 1e-6, (k, f[k])


def test_a_checkpoint_resumes_under_another_world_size(runs):
    d = weight_diff(runs / "1to2", runs / "exact")  # 1 step on one process, 2 on two
    assert d["params"] < EXACT and d["buffers"] < EXACT, d
    d = weight_diff(runs / "2to1", runs / "exact")  # 1 step on two processes, 2 on one
    assert d["params"] < EXACT and d["buffers"] < EXACT, d
    d = weight_diff(runs / "2to1_plain", runs / "plain")  # ... the 2 on the single-process path
    assert d["params"] < PLAIN and d["buffers"] < PLAIN, d


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, phrase", [
    (["--nproc", "2", "--batch-size", "33"], "batch size 33 cannot be shared by 2 processes"),
    (["--nproc", "0"], "--nproc 0 is out of range"),
])
def test_bad_world_is_one_line(tmp_path, capsys, args, phrase):
    code, out, err = run_cli(["supernet", "train", "-o", tmp_path / "run", *args], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("hwnas: error: ") and phrase in err, err
    assert not (tmp_path / "run").exists()


def test_batch_split_rules():
    check_batch_split(64, 2, n_images=100)  # a last batch of 36: 18 + 18
    check_batch_split(32, 4, n_images=165)  # a last batch of 5: 2 + 1 + 1 + 1, the losses weighted
    with pytest.raises(OptionValueError, match="multiple of 3"):
        check_batch_split(64, 3)
    with pytest.raises(OptionValueError, match="last batch holds 1 of the 161 training images"):
        check_batch_split(32, 4, n_images=161)


@pytest.mark.slow
def test_whole_epochs_with_rank0_evaluation(tmp_path):
    """Two epochs of 2 steps: rank 0 alone evaluates, logs and writes the weights at each epoch's end while
    rank 1 waits, then both go on from rank 0's RNG state; the result is one process's."""
    cfg = dict(CFG, epochs=2, limit_train=64)
    train(tmp_path / "one", None, distributed_path=True, config=cfg)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"jobs": [job(tmp_path / "two", None, config=cfg)]}))
    r = torchrun(2, WORKER, spec)
    assert r.returncode == 0, r.stderr[-4000:]
    a = torch.load(tmp_path / "one" / "supernet.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "supernet.pt", weights_only=True)
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) < EXACT
    log_one, log_two = ((tmp_path / d / "train_log.jsonl").read_text().splitlines() for d in ("one", "two"))
    assert len(log_two) == 2
    for x, y in zip(map(json.loads, log_one), map(json.loads, log_two)):
        assert (x["epoch"], x["train_loss_max"]) == (y["epoch"], y["train_loss_max"])
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (summary["world_size"], summary["backend"]) == (2, "gloo")


@pytest.mark.slow
def test_a_dying_rank_ends_the_run(tmp_path):
    """Rank 1 exits in its second step: rank 0 is not left waiting in the gradient all-reduce."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"jobs": [job(tmp_path / "run", STEPS, "die")]}))
    t0 = time.monotonic()
    r = torchrun(2, WORKER, spec, timeout=120)
    assert r.returncode != 0 and time.monotonic() - t0 < 60, r.stderr[-3000:]
    assert checkpoint(tmp_path / "run")["step"] == 1  # rank 0 wrote the first step's checkpoint only


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("HWNAS_FMNIST_DIR"),
                    reason="full Fashion-MNIST not installed")
def test_cli_nproc_launches_torchrun_and_rank0_reports(tmp_path):
    """``hwnas supernet train --nproc 2`` on a checkpoint at the end of its last epoch (one real step on the
    calibration split, relabelled with the config this command line builds): the workers join, resume,
    write the weights and summary once and print one JSON result, without an epoch over 55,000 images."""
    out = tmp_path / "run"
    train_supernet(TrainConfig(**dict(CFG, limit_train=64)), out, max_steps=1)
    state = checkpoint(out)
    state["config"] = TrainConfig.for_family("mbv3_fmnist", epochs=1, batch_size=32).to_dict()
    state["epoch"], state["step"] = 1, 0
    torch.save(state, out / "checkpoint.pt")
    r = subprocess.run([sys.executable, "-m", "hwnas", "supernet", "train", "--nproc", "2", "--epochs", "1",
                        "--batch-size", "32", "--json", "-o", out], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)  # one JSON document: only rank 0 printed
    summary = json.loads((out / "summary.json").read_text())
    assert res == summary and summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "summary.json", "supernet.pt"]
