"""alignment_score: the paper's A(v_1..v_n) = 2 ||mean_i v_i/||v_i|| ||^2 - 1."""

import math

import pytest
import torch

from soap_kernels import alignment_score


def test_two_vectors_give_the_cosine():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(37, 5, generator=generator, dtype=torch.float64)
    b = torch.randn(185, generator=generator, dtype=torch.float64)
    cosine = torch.dot(a.reshape(-1), b) / (a.norm() * b.norm())
    assert alignment_score([a, b]).item() == pytest.approx(cosine.item(), abs=1e-12)


def test_known_values():
    e1 = torch.tensor([1.0, 0.0, 0.0])
    e2 = torch.tensor([0.0, 3.0, 0.0])
    e3 = torch.tensor([0.0, 0.0, 0.5])
    assert alignment_score([e1, 2 * e1]).item() == pytest.approx(1.0)
    assert alignment_score([e1, -e1]).item() == pytest.approx(-1.0)
    assert alignment_score([e1, e2]).item() == pytest.approx(0.0, abs=1e-7)
    # three orthonormal directions: ||(e1+e2+e3)/3||^2 = 1/3, A = 2/3 - 1
    assert alignment_score([e1, e2, e3]).item() == pytest.approx(-1.0 / 3.0)


def test_scale_invariance_and_sequence_input():
    generator = torch.Generator().manual_seed(1)
    grads_1 = [torch.randn(4, 3, generator=generator), torch.randn(3, generator=generator)]
    grads_2 = [torch.randn(4, 3, generator=generator), torch.randn(3, generator=generator)]
    flat_1 = torch.cat([g.reshape(-1) for g in grads_1])
    flat_2 = torch.cat([g.reshape(-1) for g in grads_2])
    from_lists = alignment_score([grads_1, grads_2])
    from_flat = alignment_score([7.0 * flat_1, 0.01 * flat_2])
    assert from_lists.item() == pytest.approx(from_flat.item(), abs=1e-6)


def test_matches_explicit_formula_for_many_vectors():
    generator = torch.Generator().manual_seed(2)
    vectors = [torch.randn(50, generator=generator, dtype=torch.float64) for _ in range(5)]
    mean = sum(v / v.norm() for v in vectors) / 5
    expected = 2 * mean.dot(mean) - 1
    assert alignment_score(vectors).item() == pytest.approx(expected.item(), abs=1e-12)
    assert -1.0 <= alignment_score(vectors).item() <= 1.0
    assert alignment_score(vectors).dtype == torch.float64


def test_half_angle_identity():
    angle = 1.1
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    assert alignment_score([a, b]).item() == pytest.approx(math.cos(angle), abs=1e-12)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([torch.ones(3)], "at least 2"),
        ([torch.ones(3), torch.ones(4)], "number of elements"),
        (torch.ones(2, 3), "sequence of vectors"),
    ],
)
def test_bad_input_raises(bad, message):
    with pytest.raises(ValueError, match=message):
        alignment_score(bad)
