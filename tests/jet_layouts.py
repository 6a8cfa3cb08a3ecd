"""Jet layouts the kernel tests share: first and fourth order, mixed with a Laplacian slot, and value only."""

from soap_kernels.jets.plan import JetPlan

LAYOUTS = {
    "allen_cahn": JetPlan.build(2, [(0,), (1, 1)]),
    "kuramoto_sivashinsky": JetPlan.build(2, [(0,), (1, 1), (1, 1, 1, 1)]),
    "mixed_kdv_laplacian": JetPlan.build(3, [(0, 1), (1, 1, 1)], laplacian_axes=[0, 2]),
    "value_only": JetPlan.build(2, []),
}
