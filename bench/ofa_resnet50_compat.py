"""Check that Once-for-All's own OFAResNets (ResNet50) checkpoints load into our ``ofa_resnet50`` family
and that subnets extracted from them compute what OFA's ``get_active_subnet`` computes.

Needs OFA's package beside hwnas (``pip install --no-deps ofa==0.1.0.post202307202001``; torchvision is
not needed, see ``import_ofa_resnets``).  Builds OFA's ``OFAResNets(depth_list=[0, 1, 2],
expand_ratio_list=[0.2, 0.25, 0.35], width_mult_list=[0.65, 0.8, 1.0])`` (the published
``ofa_resnet50`` layout), perturbs every weight and BN statistic with seeded noise, saves its state
dict in each spelling we promise to read, loads each with ``create_supernet("ofa_resnet50", weights=...)``
and prints, in this order:

1. missing/unexpected key counts per spelling (and whether OFA's own ``load_state_dict`` reads it);
2. the max abs logit difference of ``extract(arch, calibration=None)`` vs OFA's ``set_active_subnet`` +
   ``get_active_subnet(preserve_weight=True)`` (and supernet vs supernet) over N seeded archs (min and
   max included) at r=224 and r=128;
3. the max abs error of the exported ONNX (ONNX Runtime) vs PyTorch for 3 archs;
4. the MACs/params range of the space (min..max arch) and what a mbv3 checkpoint gives.

    python bench/ofa_resnet50_compat.py [--n-archs 8] [--seed 0] [--dtype float32|float64] [--threads 1]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

FAMILY = "ofa_resnet50"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ofa_compat import import_ofa_class, report  # noqa: E402  (the sibling bench script)

OFA_KW = dict(n_classes=1000, dropout_rate=0, depth_list=[0, 1, 2], expand_ratio_list=[0.2, 0.25, 0.35],
              width_mult_list=[0.65, 0.8, 1.0])
OFA_MODULE = "ofa.imagenet_classification.elastic_nn.networks.ofa_resnets"


def import_ofa_resnets() -> tuple[type, str]:
    """OFA's ``OFAResNets`` class and how it was imported (``ofa_compat.import_ofa_class``: without
    OFA's torchvision-based data loader where torchvision cannot load)."""
    return import_ofa_class(OFA_MODULE, "OFAResNets")


@torch.no_grad()
def randomize_(net: torch.nn.Module, seed: int) -> None:
    """Seeded noise on every float tensor: weights keep their init scale plus as much again as noise,
    BN affine near 1/0, running means near 0, running variances in [0.5, ...) so the logits stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in net.state_dict().items():
        if not t.dtype.is_floating_point:
            continue
        noise = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
        if name.endswith("running_var"):
            t.copy_(0.5 + noise.abs())
        elif name.endswith("bn.weight"):
            t.copy_(1.0 + 0.2 * noise)
        elif name.endswith(("running_mean", ".bias")):
            t.copy_(0.1 * noise)
        else:
            t.add_(t.std().clamp_min(1e-3) * noise)


def old_spelling(key: str) -> str:
    """A key as OFA's static layers spell it (what ``OFAResNets.load_state_dict`` renames back)."""
    if ".linear.linear." in key:
        return key.replace(".linear.linear.", ".linear.")
    if "bn.bn." in key:
        return key.replace("bn.bn.", "bn.")
    if key.endswith("conv.conv.weight"):
        return key[: -len("conv.conv.weight")] + "conv.weight"
    return key


def spellings(sd: dict) -> dict[str, object]:
    """The checkpoint layouts we promise to read (label -> object to ``torch.save``)."""
    old = {old_spelling(k): v for k, v in sd.items()}
    legacy = {"module." + k: v for k, v in old.items() if not k.endswith("num_batches_tracked")}
    return {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 120, "best_acc": 0.0},
        "module.": {"module." + k: v for k, v in sd.items()},
        "static names": old,
        "legacy(module.+static,no nbt)": {"state_dict": legacy},
    }


def ofa_reads(OFAResNets: type, obj: object) -> bool:
    """Whether OFA's own ``OFAResNets.load_state_dict`` accepts the spelling (after its model_zoo's
    ``["state_dict"]`` and a DataParallel prefix strip)."""
    sd = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    try:
        OFAResNets(**OFA_KW).load_state_dict(sd)
    except Exception:
        return False
    return True


def key_report(path: Path, family: str = FAMILY) -> tuple[list[str], list[str]]:
    from hwnas.supernet.registry import get_family, read_state_dict

    sd = read_state_dict(path, family)
    ref = get_family(family).build().state_dict()
    missing = [k for k in ref if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in ref]
    return missing, unexpected


def archs_for(space, n: int, seed: int, r: int | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(max(0, n - 2))]
    return [dict(a, r=r) if r is not None else a for a in out]


@torch.no_grad()
def compare(ofa_net, ours, arch: dict, seed: int, batch: int = 2) -> dict:
    """Logit differences of our extracted subnet / supernet vs OFA's, on one seeded input batch."""
    ofa_net.set_active_subnet(d=arch["d"], e=arch["e"], w=arch["w"])
    ofa_sub = ofa_net.get_active_subnet(preserve_weight=True).eval()
    our_sub = ours.extract(arch, calibration=None).eval()
    ours.set_active(arch)
    dtype = next(ours.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, arch["r"], arch["r"], generator=g, dtype=torch.float64).to(dtype)
    y_ofa_sub = ofa_sub(x.clone())
    y_ofa_sup = ofa_net(x.clone())
    y_our_sub = our_sub(x.clone())
    y_our_sup = ours(x.clone())
    ofa_keys = {k: tuple(v.shape) for k, v in ofa_sub.state_dict().items()}
    our_keys = {k: tuple(v.shape) for k, v in our_sub.state_dict().items()}
    return {
        "sub": (y_our_sub - y_ofa_sub).abs().max().item(),
        "super": (y_our_sup - y_ofa_sup).abs().max().item(),
        "sub_vs_ofa_super": (y_our_sub - y_ofa_sup).abs().max().item(),
        "scale": y_ofa_sub.abs().max().item(),
        "argmax_same": bool((y_our_sub.argmax(1) == y_ofa_sub.argmax(1)).all()),
        "n_blocks": len(our_sub.blocks),
        "n_blocks_ofa": len(ofa_sub.blocks),
        "subnet_keys_same": ofa_keys == our_keys,
    }


def _export_onnx():
    from hwnas.formats.onnx_export import check_onnx, export_onnx

    return export_onnx, check_onnx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-archs", type=int, default=8, help="archs per resolution, min and max included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tol", type=float, default=None, help="max abs logit diff allowed (default 1e-4 float32, 1e-10 float64)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # OFA's get_active_subnet builds its layers in the default dtype
    tol = args.tol if args.tol is not None else (1e-4 if dtype == torch.float32 else 1e-10)

    from hwnas.errors import CheckpointError
    from hwnas.supernet.registry import create_supernet, get_family

    OFAResNets, how = import_ofa_resnets()
    print(f"torch {torch.__version__}; OFA imported via: {how}; dtype {args.dtype}; tol {tol:g}")
    failures: list[str] = []
    tmpdir = tempfile.TemporaryDirectory(prefix="ofa_resnet50_compat_")
    tmp = Path(tmpdir.name)

    torch.manual_seed(args.seed)
    ofa_net = OFAResNets(**OFA_KW)
    randomize_(ofa_net, args.seed + 50)
    ofa_net = ofa_net.to(dtype).eval()
    ofa_sd = {k: v.detach().clone() for k, v in ofa_net.state_dict().items()}
    print(f"\n== 1. checkpoints: OFA's OFAResNets state dict has {len(ofa_sd)} tensors, "
          f"{sum(v.numel() for v in ofa_sd.values()) / 1e6:.2f}M values")
    print(f"{'spelling':30s} {'OFA reads':>9s} {'missing':>7s} {'unexpected':>10s} {'values==':>8s}")
    paths: dict[str, Path] = {}
    for label, obj in spellings(ofa_sd).items():
        path = tmp / f"{re.sub(r'[^A-Za-z0-9]+', '_', label)}.pth"
        torch.save(obj, path)
        paths[label] = path
        missing, unexpected = key_report(path)
        try:
            ours = create_supernet(FAMILY, weights=path)
        except CheckpointError as exc:
            failures.append(f"{label}: load failed: {exc}")
            print(f"{label:30s} {'':9s} {len(missing):7d} {len(unexpected):10d}  LOAD FAILED: {exc}")
            continue
        our_sd = ours.state_dict()
        same = all(torch.equal(our_sd[k].to(v.dtype), v) for k, v in ofa_sd.items()
                   if not (label.startswith("legacy") and k.endswith("num_batches_tracked")))
        print(f"{label:30s} {ofa_reads(OFAResNets, obj)!s:>9s} {len(missing):7d} {len(unexpected):10d} {same!s:>8s}")
        if missing or unexpected:
            failures.append(f"{label}: missing {missing[:3]} unexpected {unexpected[:3]}")
        if not same:
            failures.append(f"{label}: loaded values differ from OFA's")
        del ours

    ours = create_supernet(FAMILY, weights=paths["bare"]).to(dtype).eval()
    sp = ours.space
    print(f"\n== 2. logits vs OFA: extract(arch, calibration=None) vs set_active_subnet + "
          f"get_active_subnet(preserve_weight=True), batch 2, {args.dtype}")
    print(f"  {'r':>4s} {'arch id':40s} {'blocks':>6s} {'|sub-OFAsub|':>12s} {'|super-OFAsuper|':>16s} "
          f"{'max|logit|':>10s} {'top1 same':>9s} {'subnet keys==':>13s}")
    for r in (224, 128):
        rows = []
        for i, arch in enumerate(archs_for(sp, args.n_archs, args.seed, r)):
            row = compare(ofa_net, ours, arch, args.seed + i)
            rows.append(row)
            print(f"  {r:4d} {sp.arch_id(arch):40s} {row['n_blocks']:6d} {row['sub']:12.3g} {row['super']:16.3g} "
                  f"{row['scale']:10.3g} {row['argmax_same']!s:>9s} {row['subnet_keys_same']!s:>13s}")
            if row["n_blocks"] != row["n_blocks_ofa"] or not row["subnet_keys_same"]:
                failures.append(f"r={r} {sp.arch_id(arch)}: subnet layout differs from OFA's")
        worst = max(max(x["sub"], x["super"], x["sub_vs_ofa_super"]) for x in rows)
        print(f"  r={r}: max abs logit diff over {len(rows)} archs: {worst:.3g} "
              f"(max |logit| {max(x['scale'] for x in rows):.3g})")
        if worst > tol:
            failures.append(f"r={r}: logits differ by {worst:.3g} > {tol:g}")

    print("\n== 3. ONNX (ONNX Runtime) vs PyTorch, batch 1 static shapes, 4 random inputs each")
    export_onnx, check_onnx = _export_onnx()
    torch.set_default_dtype(torch.float32)  # ONNX export and ONNX Runtime run float32
    ours = ours.float()
    rng = np.random.default_rng(args.seed + 7)
    onnx_archs = [dict(sp.sample(rng), r=132), dict(sp.min_arch(), r=160), dict(sp.sample(rng), r=224)]
    for j, arch in enumerate(onnx_archs):
        sub = ours.extract(arch, calibration=None).eval()
        path = export_onnx(sub, tmp / f"sub{j}.onnx", sub.input_shape, batch=1)
        x = torch.randn(4, *sub.input_shape, generator=torch.Generator().manual_seed(j))
        chk = check_onnx(path, sub, x)
        print(f"  {sp.arch_id(arch):40s} r={arch['r']:3d} max abs err {chk.max_abs_err:.3g}  "
              f"top1 agreement {chk.top1_agreement:.2f}")
        if chk.max_abs_err >= 1e-4:
            failures.append(f"ONNX {sp.arch_id(arch)}: max abs err {chk.max_abs_err:.3g}")

    fam = get_family(FAMILY)
    lo, hi = fam.arch_cost(sp.min_arch()), fam.arch_cost(sp.max_arch())
    print(f"\n== 4. space: MACs {lo['macs'] / 1e6:.1f}M .. {hi['macs'] / 1e6:.1f}M, "
          f"params {lo['params'] / 1e6:.2f}M .. {hi['params'] / 1e6:.2f}M "
          f"(min arch r={sp.min_arch()['r']}, max arch r={sp.max_arch()['r']}); "
          f"at r=224 the min arch has {fam.arch_cost(dict(sp.min_arch(), r=224))['macs'] / 1e6:.1f}M MACs")
    mb = tmp / "mbv3.pt"
    torch.save(create_supernet("ofa_mbv3_w1.0", pretrained=False).state_dict(), mb)
    try:
        create_supernet(FAMILY, weights=mb)
    except CheckpointError as exc:
        print(f"  mbv3 checkpoint -> {FAMILY}: CheckpointError: {exc}")
        if "\n" in str(exc) or "ofa_mbv3_w1.0" not in str(exc):
            failures.append("mbv3 checkpoint: error is not one line naming ofa_mbv3_w1.0")
    else:
        failures.append("mbv3 checkpoint loaded into ofa_resnet50")

    tmpdir.cleanup()
    return report(failures)


if __name__ == "__main__":
    sys.exit(main())
