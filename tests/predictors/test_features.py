"""Features: shape, depth masking, encoding aliases, speed-friendly vector path."""

from __future__ import annotations

import numpy as np
import pytest

from hwnas.errors import ArchError
from hwnas.predictors.features import (
    as_vectors,
    encode_archs,
    feature_names,
    featurize,
    featurize_vectors,
    n_onehot,
)
from hwnas.supernet.registry import get_family


@pytest.fixture(params=["mbv3_fmnist", "ofa_mbv3_w1.0"])
def cfg(request):
    return get_family(request.param)


def test_shape_and_names(cfg):
    sp = cfg.space
    archs = [sp.sample(i) for i in range(20)]
    F = featurize(cfg, archs)
    assert F.shape == (20, len(feature_names(cfg)))
    assert F.dtype == np.float32
    assert np.array_equal(F, featurize_vectors(cfg, np.stack([sp.encode(a) for a in archs])))
    assert np.array_equal(F, featurize(sp, archs)) and np.array_equal(F, featurize(cfg.name, archs))


def test_onehot_layout_and_masking(cfg):
    sp = cfg.space
    nk, ne, nd = len(sp.ks_list), len(sp.e_list), len(sp.d_list)
    a = sp.sample(3)
    a["d"] = [min(sp.d_list)] * sp.n_stages
    a["d"][0] = max(sp.d_list)
    f = featurize(cfg, [a])[0]
    names = feature_names(cfg)
    oh = f[: n_onehot(cfg)]
    assert set(np.unique(oh)) <= {0.0, 1.0}
    for slot in range(sp.n_blocks):
        s, j = divmod(slot, sp.max_depth)
        block = oh[slot * (nk + ne):(slot + 1) * (nk + ne)]
        if j < a["d"][s]:
            assert block[: nk].sum() == 1 and block[nk:].sum() == 1
            assert block[sp.ks_list.index(a["ks"][slot])] == 1 and block[nk + sp.e_list.index(a["e"][slot])] == 1
        else:
            assert not block.any(), f"slot {slot} beyond depth must be all zeros"
    base = sp.n_blocks * (nk + ne)
    for s in range(sp.n_stages):
        assert oh[base + s * nd + sp.d_list.index(a["d"][s])] == 1 and oh[base + s * nd:base + (s + 1) * nd].sum() == 1
    assert oh[base + sp.n_stages * nd + sp.resolutions.index(a["r"])] == 1
    c = cfg.arch_cost(a)
    assert f[names.index("macs_m")] == pytest.approx(c["macs"] / 1e6, rel=1e-6)
    assert f[names.index("params_m")] == pytest.approx(c["params"] / 1e6, rel=1e-6)
    assert f[names.index("resolution")] == a["r"]


def test_ignored_slots_give_identical_features(cfg):
    sp = cfg.space
    a = sp.sample(7)
    a["d"] = [min(sp.d_list)] * sp.n_stages
    b = {k: (list(v) if isinstance(v, list) else v) for k, v in a.items()}
    for slot in range(sp.n_blocks):
        if slot % sp.max_depth >= min(sp.d_list):
            b["ks"][slot] = max(sp.ks_list) if a["ks"][slot] != max(sp.ks_list) else min(sp.ks_list)
            b["e"][slot] = max(sp.e_list) if a["e"][slot] != max(sp.e_list) else min(sp.e_list)
    assert a != b and sp.arch_id(a) == sp.arch_id(b)
    Fa, Fb = featurize(cfg, [a, b])
    assert np.array_equal(Fa, Fb)


def test_encode_aliases_and_errors():
    cfg = get_family("mbv3_fmnist")
    sp = cfg.space
    a = sp.sample(1)
    alias = {"ks": a["ks"], "e": a["e"], "d": a["d"], "image_size": a["r"]}
    listed = dict(a, r=[a["r"]])
    X = encode_archs(sp, [a, alias, listed])
    assert (X == sp.encode(a)).all()
    with pytest.raises(ArchError, match=r"ks\[4\]"):
        encode_archs(sp, [a, dict(a, ks=a["ks"][:4] + [6] + a["ks"][5:])])
    with pytest.raises(ArchError, match="'r'"):
        encode_archs(sp, [dict(a, r=99)])
    with pytest.raises(ArchError):
        encode_archs(sp, [dict(a, e=a["e"][:3])])
    with pytest.raises(ArchError, match="shape"):
        as_vectors(cfg, np.zeros((3, 5), dtype=int))
    assert as_vectors(cfg, a).shape == (1, sp.vector_length)


def test_vector_path_is_fast_enough():
    """100,000 archs in well under the 1-2 s budget's order (generous bound for a loaded CI box)."""
    import time

    cfg = get_family("mbv3_fmnist")
    sp = cfg.space
    X = np.random.default_rng(0).integers(0, sp.vector_upper + 1, size=(100_000, sp.vector_length))
    t = time.perf_counter()
    F = featurize_vectors(cfg, X)
    dt = time.perf_counter() - t
    assert F.shape == (100_000, len(feature_names(cfg)))
    assert dt < 10.0
