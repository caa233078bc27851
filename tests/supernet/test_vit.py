"""The ``vit_fmnist`` family (``hwnas/supernet/families/vit.py``) through the family contract: space
validation and canonical genes, analytic costs against PyTorch's own FLOP counter and parameter counts,
extraction vs the supernet, an ONNX graph ONNX Runtime fuses well, dynamic INT8, predictors and search.

Real supernets with random weights (and BN statistics from a few forward passes); the trained weights
are checked in ``tests/supernet/test_shipped_vit.py``.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hwnas.errors import ArchError
from hwnas.supernet.registry import create_supernet, family_from_config, get_family

FAMILY = "vit_fmnist"


@pytest.fixture(scope="module")
def fam():
    return get_family(FAMILY)


@pytest.fixture(scope="module")
def space(fam):
    return fam.space


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    n = create_supernet(FAMILY, pretrained=False)
    n.train()
    with torch.no_grad():  # BN statistics that are not the initial 0/1
        for r in (20, 28):
            n.set_active(n.space.max_arch())
            n(torch.randn(32, 1, r, r))
    return n.eval()


def _archs(space, n_random: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(n_random)]


# ---------------------------------------------------------------------------------- layout, space
def test_registered_with_its_layout(fam, space):
    assert fam.name == FAMILY and fam.in_channels == 1 and fam.n_classes == 10 and fam.dataset == "fashion-mnist"
    assert family_from_config(fam.kind, fam.config_dict()) == fam
    assert fam.input_shape(space.min_arch()) == (1, 20, 20) and fam.input_shape(space.max_arch()) == (1, 28, 28)
    assert fam.int8_modes[0] == "dynamic" and fam.train_defaults["optimizer"] == "adamw"
    assert "49 tokens" in fam.describe() or "25-49 tokens" in fam.describe()
    anchor = fam.default_anchor()
    assert space.normalize(anchor) == anchor and anchor["d"] == 4 and anchor["r"] == 24


@pytest.mark.parametrize("mutate, needle", [
    (lambda a: a.pop("e"), "missing field(s) e"),
    (lambda a: a.update(e=100), "'e' = 100 is not allowed; allowed: [64, 96, 128]"),
    (lambda a: a.update(d=7), "'d' = 7 is not allowed"),
    (lambda a: a.update(h=[4] * 5), "'h' has 5 entries"),
    (lambda a: a["m"].__setitem__(3, 5), "'m[3]' = 5 is not allowed; allowed: [2, 3, 4]"),
    (lambda a: a["h"].__setitem__(0, "4"), "'h[0]' = '4' is not an int"),
    (lambda a: a.update(r=32), "'r' = 32 is not allowed"),
    (lambda a: a.update(ks=[3]), "unknown field(s) ks"),
])
def test_bad_arch_errors_name_field_index_and_choices(space, mutate, needle):
    a = space.max_arch()
    mutate(a)
    with pytest.raises(ArchError) as ei:
        space.normalize(a)
    assert needle in str(ei.value)


def test_canonical_ids_ignore_layers_that_do_not_run(space):
    a = dict(space.min_arch(), h=[2, 2, 4, 4, 4, 4], m=[2, 2, 4, 3, 2, 4])
    assert space.arch_id(a) == space.arch_id(space.min_arch()) == "r20-e64-d2-22_22"
    b = dict(a, d=3)
    assert space.arch_id(b) == "r20-e64-d3-224_224"
    X = space.canonicalize(np.stack([space.encode(a), space.encode(space.min_arch())]))
    assert (X[0] == X[1]).all()
    assert space.arch_id(space.max_arch()) == "r28-e128-d6-444444_444444"


# ---------------------------------------------------------------------------------- analytic costs
def _counted(sub, r: int) -> tuple[int, int]:
    """MACs by PyTorch's FLOP counter (matmuls, convolutions: 2 FLOPs per MAC) and the parameter count."""
    x = torch.randn(1, 1, r, r)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        sub(x)
    params = sum(p.numel() for p in sub.parameters()) + sub.pos_embed.numel()  # BN: weight and bias only
    return fc.get_total_flops() // 2, params


def test_cost_vectors_equal_pytorch_counts_on_extracted_modules(fam, space, net):
    archs = _archs(space, 4, seed=3)
    c = fam.cost_vectors(space.encode_many(archs))
    for i, arch in enumerate(archs):
        sub = net.extract(arch, calibration=None)
        macs, params = _counted(sub, arch["r"])
        aid = space.arch_id(arch)
        assert c["macs"][i] == macs, (aid, c["macs"][i], macs)
        assert c["params"][i] == params, (aid, c["params"][i], params)
        g = fam.config.grid(arch["r"])
        assert c["tokens"][i] == g * g and c["depth"][i] == len(sub.blocks) == arch["d"], aid
        assert fam.arch_cost(arch)["macs"] == macs
    lo, hi = fam.arch_cost(space.min_arch())["macs"], fam.arch_cost(space.max_arch())["macs"]
    assert hi / lo > 10  # the space spans a wide cost range (the latency range is in the README)


def test_features(fam, space):
    names = fam.feature_names()
    X = space.canonicalize(np.random.default_rng(0).integers(0, space.vector_upper + 1,
                                                             size=(50_000, space.vector_length)))
    F = fam.featurize(X)
    assert F.dtype == np.float32 and F.shape == (len(X), len(names))
    assert names[fam.n_onehot] == "macs_m" and fam.n_onehot == int((space.vector_upper + 1).sum())
    np.testing.assert_allclose(F[:50, fam.n_onehot], fam.cost_vectors(X[:50])["macs"] / 1e6, rtol=1e-6)
    # the one-hot of layers that do not run is zero: equal features for the same network
    a = dict(space.min_arch(), h=[2, 2, 4, 4, 4, 4])
    assert np.array_equal(fam.featurize(space.encode(a)), fam.featurize(space.encode(space.min_arch())))


# ---------------------------------------------------------------------------------- extraction, ONNX
def test_extracted_subnet_equals_supernet_with_arch_active(space, net):
    for i, arch in enumerate(_archs(space, 3, seed=5)):
        x = torch.randn(3, 1, arch["r"], arch["r"], generator=torch.Generator().manual_seed(i))
        sub = net.extract(arch, calibration=None)
        assert not sub.training and sub.input_shape == (1, arch["r"], arch["r"])
        net.set_active(arch)
        with torch.no_grad():
            ref, got = net(x), sub(x)
        assert ref.shape == (3, 10)
        err = (ref - got).abs().max().item()
        assert err < 1e-4, (space.arch_id(arch), err)
        assert not any("Elastic" in type(m).__name__ for m in sub.modules())


def test_onnx_graph_is_static_and_fuses(tmp_path, fam, space, net):
    import onnx

    from hwnas.formats.onnx_export import check_onnx, export_onnx
    from hwnas.formats.onnx_int8 import ort_optimized_ops

    arch = space.max_arch()
    sub = net.extract(arch, calibration=None)
    path = export_onnx(sub, tmp_path / "vit.onnx", fam.input_shape(arch), batch=1)
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    d = arch["d"]
    # per layer: one Reshape and one Transpose into heads, one Transpose for k, one Reshape/Transpose out;
    # tokens in and out of the (batch * tokens, e) matrix: 3 Reshapes and a Transpose; no Shape/Gather
    assert ops["LayerNormalization"] == 2 * d + 1 and ops["Softmax"] == d and ops["Split"] == d
    assert ops["Reshape"] == 2 * d + 3 and ops["Transpose"] == 3 * d + 1, ops
    assert ops["Gather"] == 0 and ops["Shape"] == 0, ops
    assert ops["Gemm"] == 4 * d + 1 and ops["MatMul"] == 2 * d, ops  # projections are Gemms, attention MatMuls
    names = [n.name for n in onnx.load(str(path)).graph.node]
    assert any(fam.node_groups["classifier"] in n for n in names)
    fused = ort_optimized_ops(path)
    assert fused.get("Gelu", 0) + fused.get("BiasGelu", 0) == d, fused  # Erf pattern fused by ORT
    assert fused.get("Erf", 0) == 0 and fused.get("Reshape", 0) == ops["Reshape"], fused  # none added around Gemms
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    chk = check_onnx(path, sub, x)
    assert chk.passed and chk.max_abs_err < 1e-4, chk


def test_dynamic_int8_quantizes_the_matmuls(tmp_path, fam, space, net):
    import onnx

    from hwnas.formats.onnx_export import export_onnx, load_session
    from hwnas.formats.onnx_int8 import quantize_dynamic_int8

    arch = space.sample(7)
    sub = net.extract(arch, calibration=None)
    src = export_onnx(sub, tmp_path / "vit.onnx", fam.input_shape(arch), batch=1)
    info = quantize_dynamic_int8(src, tmp_path / "vit.int8.onnx", node_groups=fam.node_groups)
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "vit.int8.onnx")).graph.node)
    # every weight Gemm (qkv, proj, fc1, fc2 per layer) and the classifier; attention's own two stay float
    assert info["n_quantized_nodes"] == ops["MatMulInteger"] == 4 * arch["d"] + 1, ops
    assert ops["MatMul"] == 2 * arch["d"] and ops["Conv"] == 3 and info["calibration_images"] == 0
    x = torch.randn(8, 1, arch["r"], arch["r"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = sub(x).numpy()
    s32, s8 = load_session(src), load_session(tmp_path / "vit.int8.onnx")
    l32 = np.concatenate([s32.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(8)])
    l8 = np.concatenate([s8.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(8)])
    assert np.abs(l32 - ref).max() < 1e-4
    scale = np.abs(ref).max()
    assert 0 < np.abs(l8 - ref).max() < 0.1 * scale  # quantized (not identical), and close


# ---------------------------------------------------------------------------------- predictors, search
def test_predictor_and_search_work_on_its_genes(tmp_path, fam, space):
    from hwnas.archsearch import search_front
    from hwnas.predictors import create_predictor, load_predictor, save_predictor

    rng = np.random.default_rng(0)
    X = space.canonicalize(rng.integers(0, space.vector_upper + 1, size=(40, space.vector_length)))
    y = 0.05 + fam.cost_vectors(X)["macs"] / 1e8  # a MACs-shaped synthetic target: plumbing, not latency
    pred = create_predictor("xgb", supernet=FAMILY, n_estimators=50).fit(X, y)
    again = load_predictor(save_predictor(pred, tmp_path / "xgb.json"))
    assert np.array_equal(again.predict(X), pred.predict(X)) and again.family == fam

    def acc(V):
        return np.log(fam.cost_vectors(V)["macs"])

    front = search_front(space, acc, again.predict, pop_size=16, n_gen=3, seed=0)
    assert len(front.X) >= 1
    for x in front.X:
        a = space.decode(x)
        assert space.normalize(a) == a and np.array_equal(space.canonicalize(space.encode(a)), x)
