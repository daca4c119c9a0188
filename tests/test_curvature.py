import pytest, torch
from torch import nn
from s3d.curvature import act_curvature, autograd_dd, register_curvature, CURVATURES, RBF, softplus_dd

Z = torch.linspace(-5, 5, 333, dtype=torch.float64)

@pytest.mark.parametrize("act", [nn.Tanh(), nn.Sigmoid(), nn.Softplus(beta=2.), nn.SiLU(), nn.GELU(),
                                 nn.GELU(approximate='tanh'), nn.ELU(alpha=0.5), nn.Identity(), RBF()])
def test_exact_matches_autograd(act):
    torch.testing.assert_close(act_curvature(act, Z), autograd_dd(act, Z), atol=1e-10, rtol=1e-8)

def test_relu_surrogate_is_softplus_dd_and_configurable():
    torch.testing.assert_close(act_curvature(nn.ReLU(), Z), softplus_dd(Z, 3.))
    torch.testing.assert_close(act_curvature(nn.ReLU(inplace=True), Z, beta=7.), softplus_dd(Z, 7.))
    assert act_curvature(nn.ReLU(), torch.tensor([0.])).item() == pytest.approx(0.75)

def test_surrogates_positive_kink_mass():
    assert (act_curvature(nn.ReLU6(), torch.tensor([0.])) > 0).all()
    assert (act_curvature(nn.ReLU6(), torch.tensor([6.])) < 0).all()
    torch.testing.assert_close(act_curvature(nn.LeakyReLU(0.2), Z), 0.8 * softplus_dd(Z))

def test_subclass_and_unknown():
    class MyTanh(nn.Tanh): pass
    torch.testing.assert_close(act_curvature(MyTanh(), Z), act_curvature(nn.Tanh(), Z))
    with pytest.raises(TypeError, match="Softmax"):
        act_curvature(nn.Softmax(dim=0), Z)

def test_register_custom():
    class Sq(nn.Module):
        def forward(self, z): return z * z
    register_curvature(Sq)(lambda act, z, beta: 2 * torch.ones_like(z))
    try: torch.testing.assert_close(act_curvature(Sq(), Z), autograd_dd(Sq(), Z))
    finally: del CURVATURES[Sq]


def test_softplus_dd_in_place_and_differentiable_forms_agree():
    "softplus_dd's in-place form (no gradient wanted) and its differentiable form equal autograd's second derivative."
    z = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    sp = torch.nn.functional.softplus(z, beta=2.5)
    d1, = torch.autograd.grad(sp.sum(), z, create_graph=True)
    d2, = torch.autograd.grad(d1.sum(), z)
    fast = softplus_dd(z.detach(), 2.5)
    slow = softplus_dd(z, 2.5)
    assert slow.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, d2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(slow.detach(), d2, rtol=1e-12, atol=1e-14)
    torch.autograd.grad(slow.sum(), z)   # the differentiable form still has a backward
