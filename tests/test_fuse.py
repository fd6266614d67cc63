import pytest
import torch

from effnet.fuse import count_batchnorms, fold_batchnorm, fold_conv_bn
from effnet.layers import Conv2dSame
from helpers.deploy import RESOLUTION, tiny_model


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_folding_keeps_outputs_and_removes_every_batchnorm(padding):
    model = tiny_model(padding)
    x = torch.randn(4, 3, RESOLUTION + 3, RESOLUTION - 1)  # odd sizes exercise TF 'SAME' padding
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(model)
        actual = folded(x)
    assert count_batchnorms(model) > 0 and count_batchnorms(folded) == 0
    assert relative_error(actual, expected) < 1e-5
    with torch.no_grad():
        assert torch.equal(model(x), expected)  # the original is untouched


def test_folding_gives_tf_same_convs_a_bias_and_keeps_their_padding():
    model = tiny_model("same")
    folded = fold_batchnorm(model)
    same_convs = [m for m in folded.modules() if isinstance(m, Conv2dSame)]
    assert same_convs and all(conv.bias is not None for conv in same_convs)


def test_fold_conv_bn_matches_batchnorm_on_a_conv_with_bias():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=True)
    bn = torch.nn.BatchNorm2d(6, eps=1e-3)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.1, 3)
    bn.weight.data.uniform_(-2, 2)
    bn.eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        expected = bn(conv(x))
        fold_conv_bn(conv, bn)
        assert relative_error(conv(x), expected) < 1e-5


def test_fold_conv_bn_refuses_mismatched_channels():
    with pytest.raises(ValueError, match="output channels"):
        fold_conv_bn(torch.nn.Conv2d(3, 8, 1), torch.nn.BatchNorm2d(4))
