"""Lie groups: axioms, Exp/Log (incl. small-angle and small-scale branches), adjoint, Jacobians."""
import math

import pytest
import torch

from mast3r_slam.lie import SE3, SO3, Sim3, skew, umeyama

GROUPS = [SO3, SE3, Sim3]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def rand_tangent(G, n, dtype, scale=1.0, gen=None):
    xi = torch.randn(n, G.dim, dtype=torch.float64, generator=gen) * scale
    rot = slice(0, 3) if G is SO3 else slice(3, 6)
    norm = xi[:, rot].norm(dim=-1, keepdim=True)
    xi[:, rot] *= torch.where(norm > 3.0, 3.0 / norm, torch.ones_like(norm))  # stay below pi (log is unique)
    return xi.to(dtype)


def rand_elem(G, n, dtype, gen=None):
    return G.exp(rand_tangent(G, n, torch.float64, gen=gen)).to(dtype)


def hat_sim3(xi):
    """4x4 matrix of a Sim(3) tangent vector: [[ [w]x + sigma I, tau ], [0, 0]]."""
    M = torch.zeros(xi.shape[:-1] + (4, 4), dtype=xi.dtype)
    M[..., :3, :3] = skew(xi[..., 3:6]) + xi[..., 6, None, None] * torch.eye(3, dtype=xi.dtype)
    M[..., :3, 3] = xi[..., :3]
    return M


def as_matrix(G, T):
    if G is SO3:
        return SO3.matrix(T)
    return G.matrix(T)


def same_element(G, a, b, tol):
    """Compare group elements through their matrices (quaternion sign ambiguity)."""
    return torch.allclose(as_matrix(G, a), as_matrix(G, b), atol=tol, rtol=0)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("G", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_axioms(G, dtype, gen):
    a, b, c = (rand_elem(G, 16, dtype, gen) for _ in range(3))
    tol = TOL[dtype] * 10
    e = G.identity(16, dtype=dtype)
    assert same_element(G, G.mul(G.mul(a, b), c), G.mul(a, G.mul(b, c)), tol)  # associativity
    assert same_element(G, G.mul(a, e), a, tol) and same_element(G, G.mul(e, a), a, tol)  # identity
    assert same_element(G, G.mul(a, G.inv(a)), e, tol)  # inverse
    assert same_element(G, G.mul(G.inv(a), a), e, tol)
    # action is a homomorphism: (ab) x = a (b x)
    x = torch.randn(16, 3, dtype=torch.float64, generator=gen).to(dtype)
    assert torch.allclose(G.act(G.mul(a, b), x), G.act(a, G.act(b, x)), atol=tol)
    # matrix representation is a homomorphism
    assert torch.allclose(as_matrix(G, G.mul(a, b)), as_matrix(G, a) @ as_matrix(G, b), atol=tol)


@pytest.mark.parametrize("G", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-5, 1e-7, 0.0])
def test_exp_log_roundtrip(G, dtype, scale, gen):
    xi = rand_tangent(G, 32, dtype, scale=scale, gen=gen)
    T = G.exp(xi)
    xi2 = G.log(T)
    # relative to the tangent's magnitude, plus absolute float noise
    tol = TOL[dtype] * (1 + xi.abs().max().item()) if scale > 0 else TOL[dtype]
    assert torch.allclose(xi2, xi, atol=max(tol, 1e-12), rtol=1e-4 if dtype == torch.float32 else 1e-9)
    # exp(log(T)) = T for random (not near-identity) elements
    T = rand_elem(G, 32, dtype, gen)
    assert same_element(G, G.exp(G.log(T)), T, TOL[dtype] * 10)


def test_sim3_exp_matches_matrix_exponential(gen):
    # general, small angle, small scale, both small, zero
    cases = []
    for th_scale, sig in [(1.0, 0.7), (1e-6, 0.5), (1.0, 1e-9), (1e-7, 1e-9), (1e-5, 0.05), (0.3, -2.0), (0.0, 0.0)]:
        xi = torch.randn(8, 7, dtype=torch.float64, generator=gen)
        xi[:, 3:6] *= th_scale
        xi[:, 6] = sig
        cases.append(xi)
    xi = torch.cat(cases)
    M_ref = torch.linalg.matrix_exp(hat_sim3(xi))
    for dtype, tol in [(torch.float64, 1e-10), (torch.float32, 3e-6)]:
        M = Sim3.matrix(Sim3.exp(xi.to(dtype))).double()
        assert torch.allclose(M, M_ref, atol=tol * (1 + M_ref.abs().max().item()), rtol=0), (M - M_ref).abs().max()


def test_se3_exp_matches_matrix_exponential(gen):
    xi = torch.randn(64, 6, dtype=torch.float64, generator=gen)
    xi[:16, 3:] *= 1e-7
    Mhat = torch.zeros(64, 4, 4, dtype=torch.float64)
    Mhat[:, :3, :3] = skew(xi[:, 3:])
    Mhat[:, :3, 3] = xi[:, :3]
    assert torch.allclose(SE3.matrix(SE3.exp(xi)), torch.linalg.matrix_exp(Mhat), atol=1e-10)


@pytest.mark.parametrize("G", GROUPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adjoint_identity(G, dtype, gen):
    """T Exp(x) T^-1 = Exp(Ad_T x)."""
    T = rand_elem(G, 16, dtype, gen)
    x = rand_tangent(G, 16, dtype, scale=0.5, gen=gen)
    lhs = G.mul(G.mul(T, G.exp(x)), G.inv(T))
    rhs = G.exp((G.adjoint(T) @ x[..., None])[..., 0])
    assert same_element(G, lhs, rhs, TOL[dtype] * 20)


@pytest.mark.parametrize("G", [SE3, Sim3])
def test_small_adjoint_exponentiates_to_adjoint(G, gen):
    xi = rand_tangent(G, 8, torch.float64, gen=gen)
    assert torch.allclose(torch.linalg.matrix_exp(G.ad(xi)), G.adjoint(G.exp(xi)), atol=1e-10)


def test_sim3_act_jacobian_finite_differences(gen):
    T = rand_elem(Sim3, 4, torch.float64, gen)
    x = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    p = Sim3.act(T, x)
    J = Sim3.act_jacobian(p)  # [4, 3, 7]
    eps = 1e-6
    for k in range(7):
        d = torch.zeros(4, 7, dtype=torch.float64)
        d[:, k] = eps
        num = (Sim3.act(Sim3.retr(T, d), x) - Sim3.act(Sim3.retr(T, -d), x)) / (2 * eps)
        assert torch.allclose(num, J[..., k], atol=1e-7), k


def test_act_jacobian_matches_autograd(gen):
    T = rand_elem(Sim3, 1, torch.float64, gen)[0]
    x = torch.randn(3, dtype=torch.float64, generator=gen)
    J_auto = torch.autograd.functional.jacobian(lambda xi: Sim3.act(Sim3.retr(T, xi), x), torch.zeros(7, dtype=torch.float64))
    assert torch.allclose(J_auto, Sim3.act_jacobian(Sim3.act(T, x)), atol=1e-10)


@pytest.mark.parametrize("G", GROUPS)
def test_left_jacobian_finite_differences(G, gen):
    """Exp(xi + d) ~= Exp(J_l(xi) d) Exp(xi): J_l by central differences of log(Exp(xi+d) Exp(xi)^-1)."""
    xi = rand_tangent(G, 4, torch.float64, scale=0.8, gen=gen)
    if G is SO3:
        J = SO3.left_jacobian(xi)
    else:
        J = G.left_jacobian(xi)
    eps = 1e-6
    Ti = G.inv(G.exp(xi))
    for k in range(G.dim):
        d = torch.zeros_like(xi)
        d[:, k] = eps
        num = (G.log(G.mul(G.exp(xi + d), Ti)) - G.log(G.mul(G.exp(xi - d), Ti))) / (2 * eps)
        assert torch.allclose(num, J[..., k], atol=1e-6), (G.__name__, k)


def test_exp_jacobian_autograd_at_zero_is_identity():
    """d log(Exp(d)) / d d = I at 0 (through the Taylor branches, via autograd)."""
    for G in GROUPS:
        z = torch.zeros(G.dim, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(lambda d: G.log(G.exp(d)), z)
        assert torch.allclose(J, torch.eye(G.dim, dtype=torch.float64), atol=1e-8), G.__name__


@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_roundtrip(dtype, gen):
    for G in (SE3, Sim3):
        T = rand_elem(G, 16, dtype, gen)
        assert same_element(G, G.from_matrix(G.matrix(T)), T, TOL[dtype] * 10)
    q = rand_elem(SO3, 64, dtype, gen)
    assert same_element(SO3, SO3.from_matrix(SO3.matrix(q)), q, TOL[dtype] * 10)
    # 180-degree rotations exercise every branch of matrix_to_quat
    for axis in torch.eye(3, dtype=dtype):
        q = SO3.exp(axis * math.pi)
        assert same_element(SO3, SO3.from_matrix(SO3.matrix(q)), q, 1e-5)


def test_broadcasting_pose_acts_on_pointmap(gen):
    T = rand_elem(Sim3, 1, torch.float32, gen)  # [1, 8]
    X = torch.randn(100, 3, generator=gen)  # [HW, 3]
    Y = Sim3.act(T, X)
    M = Sim3.matrix(T)[0]
    assert Y.shape == (100, 3)
    assert torch.allclose(Y, X @ M[:3, :3].T + M[:3, 3], atol=1e-5)


@pytest.mark.parametrize("with_scale", [True, False])
def test_umeyama_recovers_known_transform(with_scale, gen):
    T = rand_elem(Sim3, 1, torch.float64, gen)[0]
    s = 1.234 if with_scale else 1.0
    T[7] = s
    x = torch.randn(200, 3, dtype=torch.float64, generator=gen)
    y = Sim3.act(T, x)
    R, t, s_est = umeyama(x, y, with_scale=with_scale)
    assert torch.allclose(R, SO3.matrix(T[3:7]), atol=1e-10)
    assert torch.allclose(t, T[:3], atol=1e-10)
    assert abs(s_est.item() - s) < 1e-10


def test_umeyama_degenerate_raises():
    x = torch.zeros(10, 3, dtype=torch.float64)
    x[:, 0] = torch.arange(10.0)
    with pytest.raises(ValueError, match="degenerate"):
        umeyama(x, x)
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(x[:2], x[:2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_lie_on_gpu_matches_cpu(gen):
    xi = rand_tangent(Sim3, 64, torch.float32, gen=gen)
    a = Sim3.exp(xi)
    b = Sim3.exp(xi.cuda()).cpu()
    assert torch.allclose(a, b, atol=1e-5)
