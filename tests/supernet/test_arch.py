import json

import numpy as np
import pytest

from hwnas.errors import ArchError
from hwnas.supernet.family import load_arch_file, parse_arch
from hwnas.supernet.registry import get_family, list_supernets


@pytest.fixture(params=list_supernets())
def space(request):
    return get_family(request.param).space


def test_sample_is_valid_and_roundtrips_vector(space):
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = space.sample(rng)
        assert space.normalize(a) == a
        v = space.encode(a)
        assert v.shape == (space.vector_length,)
        assert (v >= 0).all() and (v <= space.vector_upper).all()
        assert space.decode(v) == a


def test_decode_repairs_out_of_range_genes(space):
    v = np.full(space.vector_length, 99)
    assert space.decode(v) == space.max_arch()
    assert space.decode(-v) == space.min_arch()


def test_min_max_are_the_extreme_choices(space):
    assert (space.encode(space.min_arch()) == 0).all()
    assert (space.encode(space.max_arch()) == space.vector_upper).all()
    assert len(space.gene_names()) == len(space.gene_choices()) == space.vector_length
    assert [len(c) - 1 for c in space.gene_choices()] == list(space.vector_upper)


def test_aliases_image_size_and_list_r(space):
    a = space.max_arch()
    r = a.pop("r")
    assert space.normalize(dict(a, image_size=r))["r"] == r
    assert space.normalize(dict(a, r=[r]))["r"] == r
    assert space.normalize(a)["r"] == max(space.resolutions)  # OFA archs may omit r


def test_id_ignores_genes_without_effect_and_is_stable(space):
    a = space.min_arch()
    x = space.canonicalize(space.encode(a)[None, :])
    inactive = ~space.active_genes(x)[0]
    assert inactive.any()  # the smallest arch leaves genes unused (blocks beyond its depth)
    y = x[0].copy()
    y[inactive] = space.vector_upper[inactive]
    b = space.decode(y)
    assert space.arch_id(a) == space.arch_id(b) and space.canonical(a) == space.canonical(b)
    assert (space.canonicalize(y[None, :]) == x).all()
    c = dict(a, r=max(space.gene_choices()[-1]))
    assert space.arch_id(a) != space.arch_id(c)
    assert len(space.arch_id(space.max_arch())) <= 40
    ids = {space.arch_id(space.sample(i)) for i in range(200)}
    assert len(ids) > 190


@pytest.mark.parametrize("mutate, needle", [
    (lambda a: a["ks"].__setitem__(3, 4), "'ks[3]' = 4 is not allowed"),
    (lambda a: a.__setitem__("ks", a["ks"][:-1]), "'ks' has"),
    (lambda a: a.__setitem__("d", "x"), "'d' must be a list"),
    (lambda a: a["e"].__setitem__(0, 2.5), "'e[0]' = 2.5 is not an int"),
    (lambda a: a.__setitem__("r", 999), "'r' = 999 is not allowed"),
    (lambda a: a.pop("e"), "missing field(s) e"),
    (lambda a: a.__setitem__("wat", 1), "unknown field(s) wat"),
])
def test_bad_arch_errors_name_field_index_and_choices(mutate, needle):
    space = get_family("ofa_mbv3_w1.0").space
    a = space.max_arch()
    mutate(a)
    with pytest.raises(ArchError) as ei:
        space.normalize(a)
    msg = str(ei.value)
    assert needle in msg
    assert "\n" not in msg


def test_arch_files(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"arch": {"ks": [3], "e": [3], "d": [1], "r": 28}, "extra": 1}))
    assert load_arch_file(p)["r"] == 28
    assert parse_arch('{"ks": [3]}') == {"ks": [3]}
    with pytest.raises(ArchError, match="does not exist"):
        load_arch_file(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArchError, match="not valid JSON"):
        load_arch_file(tmp_path / "bad.json")
