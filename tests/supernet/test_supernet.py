import numpy as np
import pytest
import torch

from hwnas.errors import CheckpointError, DataError, UnknownSupernetError
from hwnas.supernet.bn import recalibrate_bn
from hwnas.supernet.registry import create_supernet, get_family, list_supernets


@pytest.fixture(scope="module")
def fmnist():
    torch.manual_seed(0)
    net = create_supernet("mbv3_fmnist", pretrained=False)
    _randomize(net)
    return net.eval()


def _randomize(net, seed=0):
    """Non-trivial weights and BN statistics, so equality checks mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.state_dict().items():
            if p.dtype.is_floating_point:
                noise = torch.randn(p.shape, generator=g) * 0.1
                if name.endswith("running_var"):
                    p.copy_(1.0 + noise.abs())
                else:
                    p.add_(noise)


def test_registry_lists_families_and_rejects_unknown():
    assert {"ofa_mbv3_w1.0", "ofa_mbv3_w1.2", "mbv3_fmnist"} <= set(list_supernets())
    with pytest.raises(UnknownSupernetError, match="choose one of: .*mbv3_fmnist"):
        get_family("resnet9000")


def test_ofa_layout_matches_once_for_all():
    c10, c12 = get_family("ofa_mbv3_w1.0").config, get_family("ofa_mbv3_w1.2").config
    assert c10.stage_widths == (24, 40, 80, 112, 160) and c10.final_expand_width == 960
    assert c12.first_conv_width == 24 and c12.stage_widths == (32, 48, 96, 136, 192)
    assert c12.final_expand_width == 1152 and c12.feature_mix_width == 1536
    assert c10.space.n_blocks == 20 and c10.space.d_list == (2, 3, 4)
    net = create_supernet("ofa_mbv3_w1.0", pretrained=False)
    keys = set(net.state_dict())
    assert "blocks.1.conv.depth_conv.conv.7to5_matrix" in keys
    assert "blocks.1.conv.depth_conv.conv.5to3_matrix" in keys
    assert "blocks.5.conv.depth_conv.se.fc.reduce.weight" in keys  # SE in stage 2
    assert "blocks.1.conv.inverted_bottleneck.conv.conv.weight" in keys
    assert "feature_mix_layer.conv.weight" in keys and "classifier.linear.bias" in keys


@pytest.mark.parametrize("seed", range(6))
def test_extracted_subnet_equals_supernet_with_arch_active(fmnist, seed):
    sp = fmnist.space
    arch = sp.sample(seed) if seed > 1 else (sp.min_arch() if seed == 0 else sp.max_arch())
    fmnist.set_active(arch)
    x = torch.randn(4, 1, arch["r"], arch["r"], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = fmnist(x)
        sub = fmnist.extract(arch, calibration=None).eval()
        got = sub(x)
    assert torch.allclose(ref, got, atol=1e-5, rtol=0), (ref - got).abs().max()
    n_sub = sum(p.numel() for p in sub.parameters())
    assert n_sub < sum(p.numel() for p in fmnist.parameters())


def test_extraction_on_ofa_imagenet_family_with_kernel_transform():
    net = create_supernet("ofa_mbv3_w1.0", pretrained=False)
    _randomize(net, 1)
    net.eval()
    sp = net.space
    arch = sp.sample(7)
    arch["ks"] = [3] * 20  # both transforms 7->5->3 in play
    arch["r"] = 128
    net.set_active(arch)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = net(x)
        got = net.extract(arch, calibration=None).eval()(x)
    assert torch.allclose(ref, got, atol=1e-4, rtol=0)


def test_depth_and_resolution_change_the_network(fmnist):
    sp = fmnist.space
    small, big = fmnist.extract(sp.min_arch(), calibration=None), fmnist.extract(sp.max_arch(), calibration=None)
    assert len(small.blocks) == 1 + sum(sp.min_arch()["d"])
    assert len(big.blocks) == 1 + sum(sp.max_arch()["d"])
    assert small.input_shape == (1, 20, 20) and big.input_shape == (1, 28, 28)


def test_bn_recalibration_is_deterministic_and_uses_data(fmnist):
    arch = fmnist.space.sample(3)
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(50, 1, arch["r"], arch["r"], generator=g) * 2 + 1 for _ in range(4)]
    a = recalibrate_bn(fmnist.extract(arch, calibration=None), data)
    b = recalibrate_bn(fmnist.extract(arch, calibration=None), data)
    ma = a.first_conv.bn.running_mean
    assert torch.equal(ma, b.first_conv.bn.running_mean)
    # the first BN's mean is the exact mean of conv outputs over all images
    with torch.no_grad():
        conv_out = torch.cat([a.first_conv.conv(d) for d in data])
    assert torch.allclose(ma, conv_out.mean((0, 2, 3)), atol=1e-5)


def test_weights_roundtrip_and_bad_checkpoints(tmp_path, fmnist):
    p = tmp_path / "w.pt"
    torch.save({"state_dict": fmnist.state_dict()}, p)
    net = create_supernet("mbv3_fmnist", weights=p)
    for k, v in fmnist.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    # wrong family: one line naming what is wrong and the family it fits
    with pytest.raises(CheckpointError) as ei:
        create_supernet("ofa_mbv3_w1.0", weights=p)
    msg = str(ei.value)
    assert "not a ofa_mbv3_w1.0 checkpoint" in msg and "--supernet mbv3_fmnist" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="does not exist"):
        create_supernet("mbv3_fmnist", weights=tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a loadable PyTorch state dict"):
        create_supernet("mbv3_fmnist", weights=bad)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        create_supernet("mbv3_fmnist", weights=trunc)


def test_old_ofa_key_spelling_loads(tmp_path, fmnist):
    sd = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
          for k, v in fmnist.state_dict().items()}
    assert any(".mobile_inverted_conv." in k for k in sd)
    p = tmp_path / "old.pth"
    torch.save(sd, p)
    net = create_supernet("mbv3_fmnist", weights=p)
    assert torch.equal(net.blocks[1].conv.depth_conv.conv.conv.weight, fmnist.blocks[1].conv.depth_conv.conv.conv.weight)


def test_extract_recalibrates_by_default_and_it_matters():
    """``extract`` gives the deployable subnet: BN recalibrated on the shipped calibration images.
    The raw weight-sharing statistics of the shipped weights score clearly worse on validation images."""
    from hwnas.data.fashion_mnist import load_split, to_tensor

    fmnist = create_supernet("mbv3_fmnist")
    arch = fmnist.space.min_arch()
    deployed = fmnist.extract(arch)
    raw = fmnist.extract(arch, calibration=None)
    assert deployed.recalibrated is True and raw.recalibrated is False
    imgs, labels = load_split("val")
    x, y = to_tensor(imgs[:1000], arch["r"]), torch.as_tensor(labels[:1000])
    with torch.no_grad():
        acc_dep = float((deployed(x).argmax(1) == y).float().mean())
        acc_raw = float((raw(x).argmax(1) == y).float().mean())
    assert acc_dep > acc_raw + 0.01, (acc_dep, acc_raw)
    # explicit batches give the same statistics as the shipped set they came from
    calib, _ = load_split("calib")
    again = fmnist.extract(arch, calibration=to_tensor(calib, arch["r"]))
    assert torch.allclose(again.first_conv.bn.running_mean, deployed.first_conv.bn.running_mean)


def test_untrained_weights_are_not_recalibrated_and_missing_data_is_one_line():
    net = create_supernet("ofa_mbv3_w1.0", pretrained=False)
    assert net.extract(net.space.min_arch()).recalibrated is False
    net.weights_hash = "pretend-trained"
    with pytest.raises(DataError, match="no shipped calibration images") as e:
        net.extract(net.space.min_arch())
    assert "\n" not in str(e.value)
