"""``ResNet1d``: output shape for any input length, raw logits (softmax is added at export), the
parameter count the README documents, and the residual blocks' shortcuts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prescreen.models.networks import ResidualBlock1d, ResNet1d
from prescreen.models.task import get_task


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("length", [64, 500, 4500])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_is_batch_by_classes_for_any_length(length: int, batch: int) -> None:
    torch.manual_seed(0)
    net = ResNet1d(4, widths=(8, 16), blocks_per_stage=1).eval()
    with torch.inference_mode():
        out = net(torch.randn(batch, 1, length))
    assert out.shape == (batch, 4)
    assert torch.isfinite(out).all()


def test_outputs_are_logits_not_probabilities() -> None:
    """The network returns raw scores: the export wraps it in a softmax (``MeanSoftmax``), and the
    trainer's ``CrossEntropyLoss`` expects logits. Probabilities here would be softmaxed twice."""
    torch.manual_seed(0)
    net = ResNet1d(3, widths=(8, 16)).eval()
    with torch.no_grad():
        head = net.head[1]
        assert isinstance(head, nn.Linear)
        head.bias.copy_(torch.tensor([-5.0, 0.0, 5.0]))  # large enough to leave [0, 1]
        out = net(torch.randn(4, 1, 256))
    assert (out < 0).any() or (out > 1).any()
    assert not torch.allclose(out.sum(dim=1), torch.ones(4), atol=1e-3)
    probs = torch.softmax(out, dim=1)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4), atol=1e-6)


def test_in_channels_is_the_number_of_leads() -> None:
    net = ResNet1d(2, widths=(8,), in_channels=12).eval()
    with torch.inference_mode():
        assert net(torch.randn(2, 12, 300)).shape == (2, 2)
    with pytest.raises(RuntimeError):
        net(torch.randn(2, 1, 300))


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout() -> None:
    torch.manual_seed(0)
    net = ResNet1d(4, widths=(8, 16), dropout=0.5)
    x = torch.randn(2, 1, 400)
    net.eval()
    with torch.inference_mode():
        a, b = net(x), net(x)
    assert torch.equal(a, b)
    net.train()
    torch.manual_seed(1)
    c = net(x)
    torch.manual_seed(2)
    d = net(x)
    assert not torch.allclose(c, d)


def test_each_stage_halves_the_length() -> None:
    """Stem (stride 2) + one stride-2 block per stage: 5 stages shorten 4500 samples 2^6-fold."""
    net = ResNet1d(4, widths=(8, 8, 8, 8, 8), blocks_per_stage=2).eval()
    with torch.inference_mode():
        h = net.features(net.stem(torch.randn(1, 1, 4500)))
    assert h.shape[:2] == (1, 8)
    assert h.shape[2] == pytest.approx(4500 / 2**6, abs=1)


def test_shipped_ecg_network_has_about_1_5_million_parameters() -> None:
    """README: 'a residual 1-D CNN (5 stages x 2 blocks, 1.5 M parameters)'."""
    net = get_task("ecg-rhythm").build_network()
    assert isinstance(net, ResNet1d)
    assert len(net.features) == 5 * 2
    assert 1.4e6 <= _n_params(net) <= 1.6e6


def test_blocks_project_the_shortcut_only_when_shape_changes() -> None:
    assert isinstance(ResidualBlock1d(8, 8, stride=1).shortcut, nn.Identity)
    assert not isinstance(ResidualBlock1d(8, 16, stride=1).shortcut, nn.Identity)
    assert not isinstance(ResidualBlock1d(8, 8, stride=2).shortcut, nn.Identity)
    block = ResidualBlock1d(8, 16, stride=2).eval()
    with torch.inference_mode():
        out = block(torch.randn(2, 8, 100))
    assert out.shape == (2, 16, 50)
    assert (out >= 0).all()  # ends in a ReLU


def test_identity_block_adds_its_input() -> None:
    """With the body's last batch norm zeroed, an identity block is ReLU(x)."""
    block = ResidualBlock1d(4, 4, stride=1).eval()
    with torch.no_grad():
        norm = block.body[-1]
        assert isinstance(norm, nn.BatchNorm1d)
        norm.weight.zero_()
        norm.bias.zero_()
        x = torch.randn(3, 4, 50)
        assert torch.allclose(block(x), torch.relu(x))


def test_gradients_reach_the_stem() -> None:
    net = ResNet1d(4, widths=(8, 16))
    loss = nn.CrossEntropyLoss()(net(torch.randn(4, 1, 256)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    conv = net.stem[0]
    assert isinstance(conv, nn.Conv1d)
    grad = conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
