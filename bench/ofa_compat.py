"""Check that Once-for-All's own OFA-MobileNetV3 checkpoints load into our supernet families and
that subnets extracted from them compute what OFA's ``get_active_subnet`` computes.

Needs OFA's package (``pip install --no-deps ofa==0.1.0.post202307202001``; see
``tests/supernet/test_ofa_compat.py`` for the no-torchvision case) beside hwnas.  For each width
(1.0, 1.2) it builds OFA's ``OFAMobileNetV3`` (ks 3/5/7, e 3/4/6, d 2/3/4), perturbs every weight,
BN statistic and kernel-transform matrix with seeded noise, saves the state dict in four spellings
(bare; under "state_dict"; blocks spelled ``.mobile_inverted_conv.``; that plus a DataParallel
``module.`` prefix and no ``num_batches_tracked``, as OFA's 2020 checkpoints have), loads each with
``create_supernet(..., weights=path)`` and compares logits on N seeded archs (min and max included).

    python bench/ofa_compat.py [--n-archs 8] [--seed 0] [--dtype float32|float64]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

from hwnas.errors import CheckpointError
from hwnas.supernet.registry import create_supernet, get_family, read_state_dict

OFA_KW = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], n_classes=1000)


def import_ofa_class(module: str, attr: str) -> tuple[type, str]:
    """A class of OFA's package (e.g. ``OFAMobileNetV3``) and how it was imported.

    ``ofa.utils/__init__`` star-imports OFA's ImageNet data loader, which imports torchvision and
    PIL at import time; the network code uses neither.  Where torchvision is missing or cannot
    load (PyPI's CUDA build beside a CPU torch), the package ``ofa.utils`` is assembled from the
    same submodules its ``__init__`` imports, less ``my_dataloader``.  OFA's code is not changed.
    """
    try:
        return getattr(importlib.import_module(module), attr), "ofa package import (torchvision present)"
    except Exception as exc:  # ModuleNotFoundError (torchvision/PIL) or torchvision's RuntimeError
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    for mod in [m for m in sys.modules if m == "ofa" or m.startswith("ofa.")]:
        del sys.modules[mod]
    spec = importlib.util.find_spec("ofa")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("OFA's package 'ofa' is not installed")
    utils = types.ModuleType("ofa.utils")
    utils.__path__ = [str(Path(list(spec.submodule_search_locations)[0]) / "utils")]
    utils.__package__ = "ofa.utils"
    sys.modules["ofa.utils"] = utils
    importlib.import_module("ofa").utils = utils
    for sub in ("pytorch_modules", "pytorch_utils", "my_modules", "flops_counter", "common_tools"):
        m = importlib.import_module(f"ofa.utils.{sub}")
        public = getattr(m, "__all__", [k for k in vars(m) if not k.startswith("_")])
        for k in public:
            setattr(utils, k, getattr(m, k))
    return getattr(importlib.import_module(module), attr), f"ofa.utils without its data loader ({reason})"


def import_ofa_mbv3() -> tuple[type, str]:
    """OFA's ``OFAMobileNetV3`` class and how it was imported (see ``import_ofa_class``)."""
    return import_ofa_class("ofa.imagenet_classification.elastic_nn.networks.ofa_mbv3", "OFAMobileNetV3")


@torch.no_grad()
def randomize_(net: torch.nn.Module, seed: int) -> None:
    """Seeded noise on every float parameter and buffer; running_var stays positive."""
    g = torch.Generator().manual_seed(seed)
    for name, t in net.state_dict().items():
        if not t.dtype.is_floating_point:
            continue
        noise = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
        if name.endswith("running_var"):
            t.copy_(0.5 + noise.abs())
        elif name.endswith("_matrix"):  # kernel transform: identity at init, make it not so
            t.add_(0.2 * noise)
        elif name.endswith((".bn.weight", ".bn.bn.weight")):
            t.copy_(1.0 + 0.2 * noise)
        elif name.endswith(("running_mean", ".bias")):
            t.copy_(0.1 * noise)
        else:  # conv/linear weights: keep the init's scale, add some of it again as noise
            t.add_(t.std().clamp_min(1e-3) * noise)


def spellings(sd: dict) -> dict[str, object]:
    """The checkpoint layouts we promise to read."""
    old = {re.sub(r"^(blocks\.\d+)\.conv\.", r"\1.mobile_inverted_conv.", k): v for k, v in sd.items()}
    legacy = {"module." + k: v for k, v in old.items() if not k.endswith("num_batches_tracked")}
    return {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 180, "best_acc": 0.0},
        "mobile_inverted_conv": old,
        "legacy(module.+mic,no nbt)": {"state_dict": legacy},
    }


def key_report(path: Path, family: str) -> tuple[list[str], list[str]]:
    sd = read_state_dict(path, family)
    ref = get_family(family).build().state_dict()
    missing = [k for k in ref if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in ref]
    return missing, unexpected


def archs_for(net, n: int, seed: int) -> list[dict]:
    space = net.space
    rng = np.random.default_rng(seed)
    out = [space.min_arch(), space.max_arch()]
    out += [space.sample(rng) for _ in range(max(0, n - 2))]
    return out


@torch.no_grad()
def compare(ofa_net, ours, arch: dict, seed: int) -> dict:
    ofa_net.set_active_subnet(ks=arch["ks"], e=arch["e"], d=arch["d"])
    ofa_sub = ofa_net.get_active_subnet(preserve_weight=True).eval()
    our_sub = ours.extract(arch, calibration=None).eval()
    ours.set_active(arch)
    dtype = next(ours.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, arch["r"], arch["r"], generator=g, dtype=torch.float64).to(dtype)
    y_ofa_sub = ofa_sub(x.clone())
    y_ofa_sup = ofa_net(x.clone())
    y_our_sub = our_sub(x.clone())
    y_our_sup = ours(x.clone())
    scale = y_ofa_sub.abs().max().item()
    return {
        "sub": (y_our_sub - y_ofa_sub).abs().max().item(),
        "sub_vs_ofa_super": (y_our_sub - y_ofa_sup).abs().max().item(),
        "super": (y_our_sup - y_ofa_sup).abs().max().item(),
        "scale": scale,
        "argmax_same": bool((y_our_sub.argmax(1) == y_ofa_sub.argmax(1)).all()),
        "n_blocks": len(our_sub.blocks),
        "n_blocks_ofa": len(ofa_sub.blocks),
    }


def report(failures: list[str]) -> int:
    """Print PASS, or FAIL with each failure; the exit status of a compatibility bench."""
    print("\nRESULT:", "PASS" if not failures else "FAIL")
    for f in failures:
        print("  -", f)
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-archs", type=int, default=8, help="archs per width, min and max included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tol", type=float, default=None,
                    help="max abs logit diff allowed, times max(1, max|logit|) (default 1e-5 float32, 1e-10 float64)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    tol = args.tol if args.tol is not None else (1e-5 if dtype == torch.float32 else 1e-10)

    OFAMobileNetV3, how = import_ofa_mbv3()

    print(f"torch {torch.__version__}; OFA imported via: {how}; dtype {args.dtype}; tol {tol:g}")
    failures: list[str] = []
    files: dict[float, Path] = {}
    tmpdir = tempfile.TemporaryDirectory(prefix="ofa_compat_")
    tmp = Path(tmpdir.name)
    for w in (1.0, 1.2):
        family = f"ofa_mbv3_w{w}"
        torch.manual_seed(args.seed)
        ofa_net = OFAMobileNetV3(width_mult=w, **OFA_KW)
        randomize_(ofa_net, args.seed + int(w * 10))
        ofa_net.eval()
        ofa_sd = {k: v.detach().clone() for k, v in ofa_net.state_dict().items()}
        per_arch: list[tuple] = []
        print(f"\n== {family}: OFA state dict has {len(ofa_sd)} tensors, "
              f"{sum(v.numel() for v in ofa_sd.values()) / 1e6:.2f}M values")
        print(f"{'spelling':28s} {'missing':>7s} {'unexpected':>10s} {'values==':>8s} "
              f"{'archs':>5s} {'max|sub-OFAsub|':>15s} {'max|sub-OFAsuper|':>17s} "
              f"{'max|super-OFAsuper|':>19s} {'max|logit|':>10s} {'top1 same':>9s}")
        for label, obj in spellings(ofa_sd).items():
            path = tmp / f"{family}_{re.sub(r'[^A-Za-z0-9]+', '_', label)}.pth"
            torch.save(obj, path)
            if label == "bare":
                files[w] = path
            missing, unexpected = key_report(path, family)
            try:
                ours = create_supernet(family, weights=path)
            except CheckpointError as exc:
                failures.append(f"{family}/{label}: load failed: {exc}")
                print(f"{label:28s} {len(missing):7d} {len(unexpected):10d}  LOAD FAILED: {exc}")
                continue
            ours = ours.to(dtype).eval()
            our_sd = ours.state_dict()
            same = all(
                torch.equal(our_sd[k.replace(".mobile_inverted_conv.", ".conv.")], v)
                for k, v in ofa_sd.items()
                if not (label.startswith("legacy") and k.endswith("num_batches_tracked"))
            )
            archs = archs_for(ours, args.n_archs, args.seed)
            rows = [compare(ofa_net, ours, a, args.seed + i) for i, a in enumerate(archs)]
            if label == "bare":
                per_arch = [(ours.space.arch_id(a), a["r"], r) for a, r in zip(archs, rows)]
            worst = {k: max(r[k] for r in rows) for k in ("sub", "sub_vs_ofa_super", "super", "scale")}
            top1 = all(r["argmax_same"] for r in rows)
            depth_ok = all(r["n_blocks"] == r["n_blocks_ofa"] for r in rows)
            print(f"{label:28s} {len(missing):7d} {len(unexpected):10d} {str(same):>8s} {len(rows):5d} "
                  f"{worst['sub']:15.3g} {worst['sub_vs_ofa_super']:17.3g} {worst['super']:19.3g} "
                  f"{worst['scale']:10.3g} {str(top1):>9s}")
            if missing or unexpected:
                failures.append(f"{family}/{label}: missing {missing[:3]} unexpected {unexpected[:3]}")
            if not same:
                failures.append(f"{family}/{label}: loaded values differ from OFA's")
            if not depth_ok:
                failures.append(f"{family}/{label}: block count differs from OFA's subnet")
            if max(worst["sub"], worst["sub_vs_ofa_super"], worst["super"]) > tol * max(1.0, worst["scale"]):
                failures.append(f"{family}/{label}: logits differ by {worst['sub']:.3g} (scale {worst['scale']:.3g})")
        print(f"  per arch (bare): {'arch id':42s} {'r':>4s} {'blocks':>6s} {'max|sub-OFAsub|':>15s}")
        for aid, r, row in per_arch:
            print(f"                   {aid:42s} {r:4d} {row['n_blocks']:6d} {row['sub']:15.3g}")

    print("\n== wrong family")
    for src, dst in ((1.0, 1.2), (1.2, 1.0)):
        try:
            create_supernet(f"ofa_mbv3_w{dst}", weights=files[src])
        except CheckpointError as exc:
            msg = str(exc)
            ok = f"ofa_mbv3_w{src}" in msg
            print(f"w{src} weights -> ofa_mbv3_w{dst}: CheckpointError, names right family: {ok}\n  {msg}")
            if not ok:
                failures.append(f"w{src}->w{dst}: hint does not name ofa_mbv3_w{src}")
        else:
            print(f"w{src} weights -> ofa_mbv3_w{dst}: loaded without error (WRONG)")
            failures.append(f"w{src}->w{dst}: wrong family loaded")

    tmpdir.cleanup()
    return report(failures)


if __name__ == "__main__":
    sys.exit(main())
