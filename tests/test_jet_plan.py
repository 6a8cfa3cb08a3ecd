"""JetPlan: slot layouts and the compiled Faa di Bruno / Leibniz programs."""

import pytest

from soap_kernels.jets.plan import JetPlan


def test_layout_closes_under_sub_indices_and_orders_by_degree():
    plan = JetPlan.build(3, [(2, 0), (1, 1, 1)])
    assert plan.indices == ((), (0,), (1,), (2,), (0, 2), (1, 1), (1, 1, 1))
    assert plan.num_slots == 7 and plan.laplacian_slot is None


def test_laplacian_slot_comes_last_and_brings_first_derivatives():
    plan = JetPlan.build(3, [], laplacian_axes=[2, 0])
    assert plan.indices == ((), (0,), (2,))
    assert plan.laplacian_axes == (0, 2) and plan.laplacian_slot == 3 and plan.num_slots == 4


def test_key_round_trips():
    for plan in [JetPlan.build(2, [(0,), (1, 1, 1, 1)]), JetPlan.build(4, [(3, 1)], laplacian_axes=[0, 1])]:
        assert JetPlan.from_key(plan.key) == plan


def test_fourth_order_rule_is_faa_di_bruno():
    plan = JetPlan.build(1, [(0, 0, 0, 0)])
    s1, s2, s3, s4 = 1, 2, 3, 4  # slots of orders 1..4
    assert set(plan.activation_terms[s4]) == {
        (1.0, 1, (s4,)),
        (4.0, 2, (s1, s3)),
        (3.0, 2, (s2, s2)),
        (6.0, 3, (s1, s1, s2)),
        (1.0, 4, (s1, s1, s1, s1)),
    }
    assert plan.max_activation_order == 4


def test_mixed_second_order_rules():
    plan = JetPlan.build(2, [(0, 1)])
    mixed = plan.slot((0, 1))
    assert set(plan.activation_terms[mixed]) == {(1.0, 1, (mixed,)), (1.0, 2, (1, 2))}
    assert set(plan.product_terms[mixed]) == {(1.0, 0, mixed), (1.0, mixed, 0), (1.0, 1, 2), (1.0, 2, 1)}


@pytest.mark.parametrize(
    "request_, error, match",
    [
        ((2,), ValueError, "axis 2 is out of range"),
        ((0, 0, 0, 0, 0), ValueError, "order 5"),
        ((0.5,), TypeError, "0.5"),
        (1, TypeError, "derivative 1"),
    ],
)
def test_bad_requests_name_the_offender(request_, error, match):
    with pytest.raises(error, match=match):
        JetPlan.build(2, [request_])


def test_mixed_third_order_layout_and_rule():
    plan = JetPlan.build(2, [(1, 0, 1)])
    assert plan.indices == ((), (0,), (1,), (0, 1), (1, 1), (0, 1, 1))
    s0, s1, s01, s11, s011 = 1, 2, 3, 4, 5
    assert set(plan.activation_terms[s011]) == {
        (1.0, 1, (s011,)),
        (2.0, 2, (s1, s01)),
        (1.0, 2, (s0, s11)),
        (1.0, 3, (s0, s1, s1)),
    }


def test_malformed_key():
    with pytest.raises(ValueError, match="malformed"):
        JetPlan.from_key("2;x;")
