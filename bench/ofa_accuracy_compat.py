"""Check that Once-for-All's own AccuracyPredictor files load into hwnas (``ofa_mlp``) and predict what
OFA's ``predict_acc`` predicts.

Needs OFA's package (``pip install --no-deps ofa==0.1.0.post202307202001``) beside hwnas.  For each
family whose space OFA's ``MobileNetArchEncoder`` applies to (``ofa_mbv3_w1.0``: 25 image sizes
128-224; ``ofa_mbv3_w1.2``: 17, 160-224) it builds OFA's ``AccuracyPredictor`` on CPU from a fixed
torch seed (random init, ``base_acc`` set to a nonzero value), saves its state dict bare and under
``"state_dict"``, loads each file with ``hwnas.predictors.load_predictor`` and compares with OFA's
``predict_acc`` on N seeded archs of the space (min and max included; OFA's arch dicts spell the
resolution ``image_size``).  It does the same for the 128-input MLP of OFA's tutorial
(``ofa.tutorial.AccuracyPredictor``, archs with ``"r": [int]``) on ``ofa_mbv3_w1.0``, then times
hwnas's predictions (archs/s on a gene matrix, as the search calls it) and OFA's ``predict_acc``.

    python bench/ofa_accuracy_compat.py [--n-archs 100] [--seed 0] [--threads 1] [--save-standin FILE.pth]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ofa_compat import import_ofa_class, report

from hwnas.predictors import load_predictor, save_predictor
from hwnas.supernet.registry import get_family

BASE_ACC = 0.7531


def import_ofa_leaf(package: str, module: str, attr: str) -> type:
    """``attr`` of ``package.module`` of OFA's code, without running ``package/__init__``.

    ``ofa.nas.accuracy_predictor/__init__`` also imports its dataset builder (tqdm) and
    ``ofa.tutorial/__init__`` its ImageNet helpers (torchvision, yaml); the predictor and encoder
    modules need neither.  ``ofa.utils`` is prepared by ``bench/ofa_compat.import_ofa_class``.  Where the
    package imports as is, it is used as is.  OFA's code is not changed.
    """
    import_ofa_class("ofa.imagenet_classification.networks", "ResNets")  # sets up ofa.utils if needed
    try:
        return getattr(importlib.import_module(f"{package}.{module}"), attr)
    except ImportError:
        pass
    parent_name, _, leaf = package.rpartition(".")
    parent = importlib.import_module(parent_name)
    for m in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[m]
    stub = types.ModuleType(package)
    stub.__path__ = [str(Path(next(iter(parent.__path__))) / leaf)]
    stub.__package__ = package
    sys.modules[package] = stub
    setattr(parent, leaf, stub)
    return getattr(importlib.import_module(f"{package}.{module}"), attr)


def ofa_accuracy_classes() -> tuple[type, type, type]:
    """OFA's ``AccuracyPredictor``, ``MobileNetArchEncoder`` and the tutorial's ``AccuracyPredictor``."""
    return (import_ofa_leaf("ofa.nas.accuracy_predictor", "acc_predictor", "AccuracyPredictor"),
            import_ofa_leaf("ofa.nas.accuracy_predictor", "arch_encoder", "MobileNetArchEncoder"),
            import_ofa_leaf("ofa.tutorial", "accuracy_predictor", "AccuracyPredictor"))


def build_ofa_predictor(family: str, seed: int = 0):
    """OFA's AccuracyPredictor over ``family``'s space lists, random init from ``seed``, nonzero base_acc."""
    AccuracyPredictor, MobileNetArchEncoder, _ = ofa_accuracy_classes()
    sp = get_family(family).space
    enc = MobileNetArchEncoder(image_size_list=list(sp.resolutions), ks_list=list(sp.ks_list),
                               expand_list=list(sp.e_list), depth_list=list(sp.d_list), n_stage=sp.n_stages)
    torch.manual_seed(seed)
    net = AccuracyPredictor(enc, device="cpu")
    with torch.no_grad():
        net.base_acc.fill_(BASE_ACC)
    return net.eval()


def build_ofa_tutorial_predictor(seed: int = 0):
    _, _, Tutorial = ofa_accuracy_classes()
    torch.manual_seed(seed)
    t = Tutorial(pretrained=False, device="cpu")
    t.model.eval()
    return t


def archs_for(family: str, n: int, seed: int) -> list[dict]:
    sp = get_family(family).space
    rng = np.random.default_rng(seed)
    return [sp.min_arch(), sp.max_arch()] + [sp.sample(rng) for _ in range(max(0, n - 2))]


def to_ofa(arch: dict) -> dict:
    """OFA's ``MobileNetArchEncoder`` spelling: the resolution is ``image_size``."""
    return {"ks": list(arch["ks"]), "e": list(arch["e"]), "d": list(arch["d"]), "image_size": int(arch["r"])}


def to_tutorial(arch: dict) -> dict:
    """The tutorial's spelling: ``"r": [int]``."""
    return {"ks": list(arch["ks"]), "e": list(arch["e"]), "d": list(arch["d"]), "r": [int(arch["r"])]}


@torch.no_grad()
def ofa_predict(net, archs: list[dict]) -> np.ndarray:
    return np.atleast_1d(net.predict_acc([to_ofa(a) for a in archs]).double().numpy())


@torch.no_grad()
def ofa_tutorial_predict(t, archs: list[dict]) -> np.ndarray:
    return t.predict_accuracy([to_tutorial(a) for a in archs]).double().numpy().ravel()


def throughput(pred, family: str, n: int, seed: int, repeat: int = 3) -> float:
    sp = get_family(family).space
    rng = np.random.default_rng(seed)
    V = sp.canonicalize(np.stack([rng.integers(0, u + 1, n) for u in sp.vector_upper], axis=1))
    pred.predict(V[:64])
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        pred.predict(V)
        best = min(best, time.perf_counter() - t0)
    return n / best


def save_standin_predictor(path: Path, family: str = "ofa_mbv3_w1.0", seed: int = 0, steps: int = 400) -> dict:
    """OFA's own AccuracyPredictor, trained with Adam by torch on a stand-in target (no ImageNet accuracies
    exist here): 0.60 + 0.17 * the arch's normalized log-MACs, so bigger subnets "score" higher with
    diminishing returns, like OFA's real ones.  Saved as OFA saves it (bare state dict): a file for
    ``hwnas search --accuracy-predictor FILE.pth`` figures.  Not an accuracy model."""
    fam = get_family(family)
    sp = fam.space
    net = build_ofa_predictor(family, seed)
    rng = np.random.default_rng(seed)
    archs = [sp.min_arch(), sp.max_arch()] + [sp.sample(rng) for _ in range(4000)]
    V = sp.canonicalize(sp.encode_many(archs))
    macs = np.log(fam.cost_vectors(V)["macs"])
    y = 0.60 + 0.17 * (macs - macs.min()) / (macs.max() - macs.min())
    X = torch.tensor(np.array([net.arch_encoder.arch2feature(to_ofa(a)) for a in archs]), dtype=torch.float32)
    Y = torch.tensor(y, dtype=torch.float32)
    with torch.no_grad():
        net.base_acc.fill_(float(y.mean()))
    opt = torch.optim.Adam([p for n, p in net.named_parameters() if n != "base_acc"], lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (256,), generator=g)
        loss = torch.mean((net(X[idx]) - Y[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    torch.save(net.state_dict(), path)
    with torch.no_grad():
        rmse = float(torch.sqrt(torch.mean((net(X) - Y) ** 2)))
    return {"path": str(path), "rmse_vs_standin": rmse, "n_train": len(X)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-archs", type=int, default=100, help="archs per family, min and max included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (numpy's BLAS threads: set OMP_NUM_THREADS)")
    ap.add_argument("--n-time", type=int, default=50_000, help="archs per timed hwnas prediction")
    ap.add_argument("--n-time-ofa", type=int, default=2000, help="archs per timed OFA predict_acc")
    ap.add_argument("--tol", type=float, default=1e-5, help="max abs difference allowed (fraction of top-1)")
    ap.add_argument("--save-standin", type=Path, default=None, metavar="FILE.pth",
                    help="also train OFA's AccuracyPredictor on a MACs-based stand-in target and save it there")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.save_standin is not None:
        info = save_standin_predictor(args.save_standin, seed=args.seed)
        print(f"saved OFA's AccuracyPredictor trained on the stand-in target to {info['path']} "
              f"(RMSE {info['rmse_vs_standin']:.4f} vs the target on its {info['n_train']} archs)")
    _, _, _ = ofa_accuracy_classes()
    print(f"torch {torch.__version__}, numpy {np.__version__}; OFA's AccuracyPredictor on cpu, "
          f"base_acc {BASE_ACC}; {args.n_archs} archs per family")
    failures: list[str] = []
    tmpdir = tempfile.TemporaryDirectory(prefix="ofa_acc_")
    tmp = Path(tmpdir.name)
    print(f"\n{'family / file':44s} {'n_in':>5s} {'archs':>5s} {'max|hwnas-OFA|':>14s} {'max|OFA|':>9s} "
          f"{'json==':>6s} {'hwnas archs/s':>13s} {'OFA archs/s':>11s}")
    cases = [(fam, "arch_encoder") for fam in ("ofa_mbv3_w1.0", "ofa_mbv3_w1.2")] + [("ofa_mbv3_w1.0", "tutorial")]
    for family, encoding in cases:
        archs = archs_for(family, args.n_archs, args.seed)
        if encoding == "arch_encoder":
            net = build_ofa_predictor(family, args.seed)
            sd, n_in, run = net.state_dict(), net.arch_encoder.n_dim, ofa_predict
        else:
            net = build_ofa_tutorial_predictor(args.seed)
            sd, n_in, run = net.model.state_dict(), 128, ofa_tutorial_predict
        want = run(net, archs)
        timed = archs_for(family, args.n_time_ofa, args.seed + 1)
        t0 = time.perf_counter()
        run(net, timed)
        ofa_rate = len(timed) / (time.perf_counter() - t0)
        for label, obj in (("bare", sd), ("state_dict", {"state_dict": sd, "epoch": 50})):
            path = tmp / f"{family}_{encoding}_{label}.pth"
            torch.save(obj, path)
            pred = load_predictor(path, expect_supernet=family, expect_target="accuracy")
            got = pred.predict(archs)
            diff = float(np.max(np.abs(got - want)))
            jpath = save_predictor(pred, tmp / f"{family}_{encoding}_{label}.json", {"target": "accuracy"})
            same = bool(np.array_equal(load_predictor(jpath).predict(archs), got))
            rate = throughput(pred, family, args.n_time, args.seed) if label == "bare" else float("nan")
            name = f"{family} {encoding} ({label})"
            print(f"{name:44s} {n_in:5d} {len(archs):5d} {diff:14.3g} {np.max(np.abs(want)):9.3g} {same!s:>6s} "
                  f"{rate:13,.0f} {ofa_rate if label == 'bare' else float('nan'):11,.0f}")
            if diff > args.tol:
                failures.append(f"{name}: differs from OFA by {diff:.3g}")
            if not same:
                failures.append(f"{name}: the JSON artifact predicts differently")
    tmpdir.cleanup()
    return report(failures)


if __name__ == "__main__":
    sys.exit(main())
