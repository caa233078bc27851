"""The ``ofa_resnet50`` family (``hwnas/supernet/families/resnet50.py``) through the family contract:
space validation and canonical genes, analytic costs vs hook counts, extraction vs the supernet,
ONNX export, predictors and search on its genes, and -- where OFA's package is installed -- key-for-key
loading of OFA's ``OFAResNets`` state dicts and logits equal to OFA's ``get_active_subnet``.

Real (randomly initialized) ResNet50 supernets at r=128/132, few archs.  The full OFA check at r=224
with more archs: ``python bench/ofa_resnet50_compat.py``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hwnas.errors import ArchError, CheckpointError
from hwnas.supernet.registry import (
    create_supernet,
    family_from_config,
    get_family,
    list_supernets,
    read_state_dict,
)

FAMILY = "ofa_resnet50"
_BENCH = Path(__file__).resolve().parents[2] / "bench" / "ofa_resnet50_compat.py"


def _bench():
    spec = importlib.util.spec_from_file_location("hwnas_bench_ofa_resnet50_compat", _BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


oc = _bench()


@pytest.fixture(scope="module")
def fam():
    return get_family(FAMILY)


@pytest.fixture(scope="module")
def space(fam):
    return fam.space


@pytest.fixture(scope="module")
def net():
    """Our supernet with seeded random weights and BN statistics (eval mode)."""
    torch.manual_seed(0)
    n = create_supernet(FAMILY, pretrained=False)
    oc.randomize_(n, 1)
    return n.eval()


def _archs(space, n_random: int, seed: int, r: int = 128) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [dict(a, r=r) for a in [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(n_random)]]


# ---------------------------------------------------------------------------------- registry, layout
def test_registered_with_its_layout(fam):
    assert FAMILY in list_supernets()
    assert fam.name == FAMILY and fam.kind == "ofa_resnet" and fam.dataset == "imagenet"
    assert fam.in_channels == 3 and fam.n_classes == 1000 and len(fam.mean) == len(fam.std) == 3
    assert not fam.has("lut") and "\n" not in fam.describe()
    sp = fam.space
    assert sp.stem_mid_channels == (24, 24, 32) and sp.stem_channels == (40, 48, 64)
    assert sp.stage_channels == ((168, 208, 256), (336, 408, 512), (664, 816, 1024), (1328, 1640, 2048))
    assert sp.n_blocks == 18 and sp.vector_length == 30 and sp.resolutions == tuple(range(128, 225, 4))
    again = family_from_config(fam.kind, json.loads(json.dumps(fam.config_dict())))
    assert again == fam and again.space == sp
    assert json.loads(json.dumps(sp.to_dict())) == sp.to_dict()


# ---------------------------------------------------------------------------------- the space
@pytest.mark.parametrize("mutate, needle", [
    (lambda a: a["d"].__setitem__(2, 3), "arch field 'd[2]' = 3 is not allowed; allowed: [0, 1, 2]"),
    (lambda a: a["e"].__setitem__(7, 0.3), "arch field 'e[7]' = 0.3 is not allowed; allowed: [0.2, 0.25, 0.35]"),
    (lambda a: a["e"].__setitem__(0, "x"), "arch field 'e[0]' = 'x' is not a number"),
    (lambda a: a["w"].__setitem__(5, 3), "arch field 'w[5]' = 3 is not allowed; allowed: [0, 1, 2]"),
    (lambda a: a["w"].__setitem__(1, 0.8), "arch field 'w[1]' = 0.8 is not an int"),
    (lambda a: a.__setitem__("e", a["e"][:-1]), "arch field 'e' has 17 entries; this space (ofa_resnet50) needs 18"),
    (lambda a: a.__setitem__("d", 2), "arch field 'd' must be a list of 5 values"),
    (lambda a: a.__setitem__("r", 130), "arch field 'r' = 130 is not allowed; allowed: [128, 132"),
    (lambda a: a.pop("w"), "arch is missing field(s) w"),
    (lambda a: a.__setitem__("ks", [3]), "arch has unknown field(s) ks"),
])
def test_bad_arch_errors_name_field_index_and_choices(space, mutate, needle):
    a = space.max_arch()
    mutate(a)
    with pytest.raises(ArchError, match=re.escape(needle)) as ei:
        space.normalize(a)
    assert "\n" not in str(ei.value)


def test_round_trips_and_aliases(space):
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = space.sample(rng)
        assert space.normalize(a) == a and space.decode(space.encode(a)) == a
        c = space.canonical(a)
        assert c == space.decode(space.canonicalize(space.encode(a)))
        assert space.canonical(c) == c and space.arch_id(c) == space.arch_id(a)
        assert space.normalize(json.loads(json.dumps(a))) == a
    a = space.max_arch()
    r = a.pop("r")
    assert space.normalize(dict(a, image_size=r))["r"] == r == space.normalize(dict(a, r=[r]))["r"]
    assert space.normalize(a)["r"] == max(space.resolutions)  # OFA's ResNet archs carry no resolution
    assert space.decode(np.full(space.vector_length, 99)) == space.max_arch()
    assert space.decode(np.full(space.vector_length, -5)) == space.min_arch()
    assert len(space.arch_id(space.max_arch())) <= 40
    assert len({space.arch_id(space.sample(i)) for i in range(200)}) > 190


def _signature(net, arch) -> tuple:
    """What the supernet builds for ``arch``: stem, every block that runs (widths), resolution."""
    net.set_active(arch)
    blocks = tuple((i, net.blocks[i].active_mid, net.blocks[i].active_out) for i in net.active_blocks)
    return (net.stem_skipping, net.input_stem[0].active_out, net.input_stem[2].active_out, blocks,
            net.active_resolution)


def test_canonicalization_merges_exactly_the_archs_that_build_the_same_network(space, fam):
    a = space.min_arch()  # every stage at its base depth: slots beyond it are ignored
    b = json.loads(json.dumps(a))
    b["e"][3] = 0.35  # stage 0 slot 3: beyond depth 2 + 0
    b["d"][0] = 1  # stem conv skipped for any d[0] below the maximum
    b["w"][0] = 1  # width 0.8 gives the same 24-channel stem as 0.65
    assert space.arch_id(a) == space.arch_id(b) and space.canonical(a) == space.canonical(b)
    Xa, Xb = space.canonicalize(space.encode(a)), space.canonicalize(space.encode(b))
    assert np.array_equal(Xa, Xb)
    assert np.array_equal(fam.featurize(space.encode(a)), fam.featurize(space.encode(b)))  # raw rows too
    for c in (dict(a, r=132), dict(b, d=[2, 0, 0, 0, 0]), dict(b, w=[2, 0, 0, 0, 0, 0])):
        assert space.arch_id(c) != space.arch_id(a)

    # on random rows: equal canonical rows <=> the same network (the supernet's active widths)
    net = fam.build()
    rng = np.random.default_rng(1)
    up = space.vector_upper
    X = space.canonicalize(rng.integers(0, up + 1, size=(60, space.vector_length)))
    for x in X:
        sig = _signature(net, space.decode(x))
        # scramble what has no effect: inactive genes, the stem depth below its max, w[0] in {0, 1}
        y = x.copy()
        inactive = ~space.active_genes(x[None, :])[0]
        y[inactive] = rng.integers(0, up[inactive] + 1)
        if y[0] == 0:
            y[0] = 1
        if y[space.w_cols.start] == 0:
            y[space.w_cols.start] = 1
        assert np.array_equal(space.canonicalize(y), x)
        assert _signature(net, space.decode(y)) == sig
        # change one active gene: the row changes exactly when the network does
        j = int(rng.choice(np.flatnonzero(space.active_genes(x[None, :])[0])))
        z = x.copy()
        z[j] = (z[j] + 1 + rng.integers(up[j])) % (up[j] + 1)
        zc = space.canonicalize(z)
        assert np.array_equal(zc, x) == (_signature(net, space.decode(z)) == sig), (j, x, z)


# ---------------------------------------------------------------------------------- cost and features
def _hook_counts(module: torch.nn.Module, r: int) -> dict:
    stats = {"macs": 0, "peak_act": 0, "stage_macs": {}}
    stage_of = {f"blocks.{i}.": s for i, s in enumerate(module.stage_of_block)}

    def hook(name):
        def fn(m, inp, out):
            x = inp[0]
            if isinstance(m, torch.nn.Conv2d):
                macs = out.shape[2] * out.shape[3] * m.out_channels * (m.in_channels // m.groups) * \
                    m.kernel_size[0] * m.kernel_size[1]
            else:
                macs = m.in_features * m.out_features
            stats["macs"] += macs
            stats["peak_act"] = max(stats["peak_act"], x[0].numel() + out[0].numel())
            for prefix, s in stage_of.items():
                if name.startswith(prefix):
                    stats["stage_macs"][s] = stats["stage_macs"].get(s, 0) + macs
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        module(torch.zeros(1, 3, r, r))
    for h in handles:
        h.remove()
    stats["params"] = sum(p.numel() for p in module.parameters())
    stage_params: dict[int, int] = {}
    for n, p in module.named_parameters():
        for prefix, s in stage_of.items():
            if n.startswith(prefix):
                stage_params[s] = stage_params.get(s, 0) + p.numel()
    stats["stage_params"] = stage_params
    return stats


def test_cost_vectors_equal_hook_counts_on_extracted_modules(fam, space, net):
    archs = _archs(space, 2, seed=3)
    c = fam.cost_vectors(space.encode_many(archs))
    assert all(v.dtype == np.float64 for v in c.values())
    for i, arch in enumerate(archs):
        sub = net.extract(arch, calibration=None)
        h = _hook_counts(sub, arch["r"])
        aid = space.arch_id(arch)
        assert c["macs"][i] == h["macs"] and c["params"][i] == h["params"], aid
        assert c["peak_act"][i] == h["peak_act"] and c["peak_act_bytes"][i] == 4 * h["peak_act"], aid
        assert c["n_blocks"][i] == len(sub.blocks) and c["resolution"][i] == arch["r"], aid
        assert c["stage_macs"][i].tolist() == [h["stage_macs"][s] for s in range(4)], aid
        assert c["stage_params"][i].tolist() == [h["stage_params"][s] for s in range(4)], aid
        assert fam.arch_cost(arch)["macs"] == h["macs"]


def test_features(fam, space):
    names = fam.feature_names()
    X = space.canonicalize(np.random.default_rng(0).integers(0, space.vector_upper + 1, size=(100_000, 30)))
    import time

    t = time.perf_counter()
    F = fam.featurize(X)
    took = time.perf_counter() - t
    assert F.dtype == np.float32 and F.shape == (len(X), len(names)) and took < 10, took
    assert names[fam.n_onehot] == "macs_m" and fam.n_onehot == int((space.vector_upper + 1).sum())
    c = fam.cost_vectors(X[:50])
    np.testing.assert_allclose(F[:50, fam.n_onehot], c["macs"] / 1e6, rtol=1e-6)
    assert fam.featurize(X[:5], onehot=False).shape == (5, len(names) - fam.n_onehot)
    assert fam.featurize(X[:5], analytic=False).shape == (5, fam.n_onehot)


# ---------------------------------------------------------------------------------- extraction, ONNX
def test_extracted_subnet_equals_supernet_with_arch_active(space, net):
    for i, arch in enumerate(_archs(space, 2, seed=5)):
        x = torch.randn(2, 3, arch["r"], arch["r"], generator=torch.Generator().manual_seed(i))
        sub = net.extract(arch, calibration=None)
        assert sub.recalibrated is False and not sub.training
        net.set_active(arch)
        with torch.no_grad():
            ref, got = net(x), sub(x)
        assert ref.shape == (2, 1000)
        err = (ref - got).abs().max().item()
        assert err < 1e-4, (space.arch_id(arch), err)
        mods = {type(m) for m in sub.modules()}
        assert not any("Elastic" in t.__name__ for t in mods)


def test_onnx_export_matches_pytorch(tmp_path, fam, space, net):
    import onnx

    from hwnas.formats.onnx_export import check_onnx, export_onnx, load_session

    # odd feature-map sizes (132 -> 66 -> 33 -> 17 -> 9 -> 5) exercise the ceil-mode downsample pools;
    # mixed widths, a narrow last stage to keep the export quick
    arch = dict(space.sample(11), r=132, w=[1, 2, 1, 0, 2, 0])
    sub = net.extract(arch, calibration=None)
    path = export_onnx(sub, tmp_path / "r50.onnx", fam.input_shape(arch), batch=1)
    model = onnx.load(str(path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 132, 132]
    names = [n.name for n in model.graph.node]
    assert any(fam.node_groups["classifier"] in n for n in names), names[-5:]
    x = torch.randn(3, 3, 132, 132, generator=torch.Generator().manual_seed(0))
    sess = load_session(path)
    with torch.no_grad():
        ref = sub(x).numpy()
    got = np.concatenate([sess.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(3)])
    err = float(np.abs(ref - got).max())
    assert err < 1e-4, f"ONNX vs PyTorch max abs err {err:.3g} for {space.arch_id(arch)}"
    chk = check_onnx(path, sub, x)
    assert chk.passed and chk.top1_agreement == 1.0, chk


# ---------------------------------------------------------------------------------- predictors, search
def test_predictor_and_search_work_on_its_genes(tmp_path, fam, space):
    from hwnas.predictors import create_predictor, load_predictor, save_predictor
    from hwnas.archsearch import search_front

    rng = np.random.default_rng(0)
    X = space.canonicalize(rng.integers(0, space.vector_upper + 1, size=(40, space.vector_length)))
    y = 0.5 + fam.cost_vectors(X)["macs"] / 1e9  # a MACs-shaped synthetic target: plumbing, not latency
    pred = create_predictor("xgb", supernet=FAMILY, n_estimators=50).fit(X, y)
    p = pred.predict(X)
    assert p.shape == (40,) and np.all(np.isfinite(p))
    again = load_predictor(save_predictor(pred, tmp_path / "xgb.json"))
    assert np.array_equal(again.predict(X), p)
    assert again.family == fam

    def acc(V):
        return np.log(fam.cost_vectors(V)["macs"])

    front = search_front(space, acc, again.predict, pop_size=16, n_gen=3, seed=0)
    assert len(front.X) >= 1
    for x in front.X:
        a = space.decode(x)
        assert space.normalize(a) == a and np.array_equal(space.canonicalize(space.encode(a)), x)


# ---------------------------------------------------------------------------------- checkpoints
def test_mbv3_checkpoint_is_a_one_line_checkpoint_error(tmp_path):
    path = tmp_path / "mbv3.pt"
    torch.save(create_supernet("ofa_mbv3_w1.0", pretrained=False).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"not a ofa_resnet50 checkpoint.*matches family 'ofa_mbv3_w1\.0'") as ei:
        create_supernet(FAMILY, weights=path)
    assert "\n" not in str(ei.value)


# ---------------------------------------------------------------------------------- OFA's own package
@pytest.fixture(scope="module")
def ofa(tmp_path_factory):
    """OFA's OFAResNets with seeded random weights and BN statistics, and its state dict saved in
    every spelling we promise to read."""
    pytest.importorskip("ofa", reason="OFA's package is not installed (pip install --no-deps "
                                      "ofa==0.1.0.post202307202001)")
    OFAResNets, _how = oc.import_ofa_resnets()
    torch.manual_seed(0)
    ofa_net = OFAResNets(**oc.OFA_KW)
    oc.randomize_(ofa_net, 7)
    ofa_net.eval()
    sd = {k: v.detach().clone() for k, v in ofa_net.state_dict().items()}
    d = tmp_path_factory.mktemp("ofa_resnet50")
    paths = {}
    for i, (label, obj) in enumerate(oc.spellings(sd).items()):
        paths[label] = d / f"ckpt{i}.pth"
        torch.save(obj, paths[label])
    return ofa_net, sd, paths


def test_ofa_state_dicts_load_with_no_key_left_over(ofa):
    _, sd, paths = ofa
    ours = get_family(FAMILY).build()
    assert list(ours.state_dict()) == list(sd)
    assert all(tuple(ours.state_dict()[k].shape) == tuple(v.shape) for k, v in sd.items())
    for label, path in paths.items():
        cleaned = read_state_dict(path, FAMILY)  # what the loader sees after our key mapping
        missing = [k for k in sd if k not in cleaned and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in cleaned if k not in sd]
        assert (len(missing), len(unexpected)) == (0, 0), (label, missing[:3], unexpected[:3])
        loaded = create_supernet(FAMILY, weights=path).state_dict()
        for k, v in sd.items():
            if label.startswith("legacy") and k.endswith("num_batches_tracked"):
                continue
            assert torch.equal(loaded[k], v), (label, k)


def test_extract_matches_ofa_get_active_subnet(ofa):
    ofa_net, _, paths = ofa
    ours = create_supernet(FAMILY, weights=paths["module."])
    worst = 0.0
    for i, arch in enumerate(_archs(ours.space, 4, seed=9)):
        r = oc.compare(ofa_net, ours, arch, seed=i)
        assert r["n_blocks"] == r["n_blocks_ofa"] and r["subnet_keys_same"], ours.space.arch_id(arch)
        d = max(r["sub"], r["super"], r["sub_vs_ofa_super"])
        assert d < 1e-4, (ours.space.arch_id(arch), r)
        worst = max(worst, d)
    print(f"max abs logit diff vs OFA's get_active_subnet over 6 archs at r=128: {worst:.3g}")
