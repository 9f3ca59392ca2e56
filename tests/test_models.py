import torch

from distbo.models import DenseNet


def _params(net, gen):
    return (torch.randn(net.numel("x"), generator=gen, dtype=torch.float64),
            torch.randn(net.numel("y"), generator=gen, dtype=torch.float64))


def test_forward_matches_torch_nn():
    net = DenseNet((5, 7, 3), split=1)
    gen = torch.Generator().manual_seed(0)
    x, y = _params(net, gen)
    (w1, b1), (w2, b2) = net.unflatten(x, y)
    inp = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    ref = torch.relu(inp @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(net.forward(x, y, inp), ref)
    assert net.numel("x") == 7 * 5 + 7 and net.numel("y") == 3 * 7 + 3


def test_sliced_subnetwork_equals_full_network_with_pruned_units_zeroed():
    net = DenseNet((6, 8, 5, 3), split=1)
    gen = torch.Generator().manual_seed(1)
    x, y = _params(net, gen)
    idx = [torch.tensor([0, 3, 4, 7]), torch.tensor([1, 2])]
    sub = net.sub_sizes([4, 2])
    xs, ys = net.slice_params(x, "x", idx), net.slice_params(y, "y", idx)
    assert xs.numel() == net.numel("x", sub) and ys.numel() == net.numel("y", sub)
    inp = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    mx, my = net.unit_masks(idx, torch.float64)
    # zeroing the pruned units' incoming weights and biases removes them exactly (ReLU(0) = 0)
    torch.testing.assert_close(net.forward(xs, ys, inp, sub), net.forward(x * mx, y * my, inp))
    torch.testing.assert_close(net.scatter(xs, "x", idx), x * mx)
    torch.testing.assert_close(net.scatter(ys, "y", idx), y * my)
    assert net.flops(9, sub) < net.flops(9)


def test_slicing_works_under_vmap():
    net = DenseNet((4, 6, 2), split=1)
    gen = torch.Generator().manual_seed(2)
    x, y = _params(net, gen)
    idx = torch.tensor([[0, 1, 2], [3, 4, 5]])
    out = torch.func.vmap(lambda i: net.slice_params(x, "x", [i]))(idx)
    for r in range(2):
        torch.testing.assert_close(out[r], net.slice_params(x, "x", [idx[r]]))
