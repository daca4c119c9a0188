import pytest, torch
from torch import nn
from s3d.paper.models import MobileNetV1, mobilenet_digits, mlp
from s3d.cost import count_params_flops, count_flops_by_layer


def test_conv3x3_known_counts():
    # 3->4 channels, 3x3, padding 1, 5x5 image, no bias: 4*5*5 outputs x 27 = 2700 MACs, 108 weights
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_params_flops(conv, torch.zeros(1, 3, 5, 5), macs=True) == (108, 2700)
    assert count_params_flops(conv, torch.zeros(4, 3, 5, 5)) == (108, 5400)  # per sample, 2 FLOPs per MAC


def test_depthwise_known_counts():
    # depthwise 3x3 on 6 channels, 4x4 image, padding 1: 6*16 outputs x 9 = 864 MACs, 54 weights
    dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
    assert count_params_flops(dw, torch.zeros(1, 6, 4, 4), macs=True) == (54, 864)
    # a grouped conv with 2 groups: 6->4, each output sees 3 channels x 1x1
    g = nn.Conv2d(6, 4, 1, groups=2, bias=False)
    assert count_params_flops(g, torch.zeros(1, 6, 4, 4), macs=True) == (12, 4 * 16 * 3)


def test_linear_and_bn_known_counts():
    lin = nn.Linear(7, 3)
    assert count_params_flops(lin, torch.zeros(2, 7)) == (24, 2 * 21 + 3)
    assert count_params_flops(lin, torch.zeros(2, 7), macs=True) == (24, 21)
    bn = nn.BatchNorm2d(2)
    assert count_params_flops(bn, torch.zeros(1, 2, 3, 3)) == (4, 36)


def test_by_layer_keeps_training_mode():
    m = mobilenet_digits()
    m.train()
    d = count_flops_by_layer(m, torch.zeros(1, 1, 8, 8))
    assert m.training
    assert d['stem.conv'] == 2 * 8 * 64 * 9  # 8 channels x 64 positions x 9 MACs, x2
    assert d['classifier'] == 2 * 32 * 10 + 10


def test_mobilenet_table1_numbers():
    p, f = count_params_flops(MobileNetV1(100), torch.zeros(1, 3, 32, 32))
    assert round(p / 1e6, 2) == 3.31
    assert round(f / 1e6, 2) == 94.13


def test_mobilenet_structure_and_errors():
    m = MobileNetV1(10, widths=list(range(2, 16)))
    assert m.widths == list(range(2, 16))
    assert m.block4.dw.groups == m.block4.dw.in_channels == 5
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    acts = [a for a in m.modules() if isinstance(a, nn.ReLU)]
    assert len({id(a) for a in acts}) == len(acts) == 27
    with pytest.raises(ValueError, match='strides'):
        MobileNetV1(10, strides=[1, 2])
    with pytest.raises(ValueError, match='width'):
        MobileNetV1(10, widths=[0] + [4] * 13)
    with pytest.raises(TypeError, match='act'):
        MobileNetV1(10, act=nn.ReLU())


def test_small_models():
    m = mobilenet_digits(widths=[4, 4, 8, 8], act=nn.SiLU)
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert m.stem.conv.in_channels == 1
    net = mlp([64, 5, 10], bn=True)
    assert [type(x) for x in net] == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    with pytest.raises(TypeError, match='act'):
        mlp([4, 2], act=torch.tanh)
