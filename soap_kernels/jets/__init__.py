"""Forward-mode jets: network values with their input derivatives (DESIGN.md section 5).

    import soap_kernels
    model = soap_kernels.nn.MLP(2, 1, 256, 4, "tanh")
    d = soap_kernels.jet(model, x, [(0,), (1, 1)])            # x [N, 2] = (t, x)
    residual = d[(0,)] - 1e-4 * d[(1, 1)] + 5 * d[()] ** 3 - 5 * d[()]
    (residual ** 2).mean().backward()                          # first-order backward only

`jet(model, x, derivatives, laplacian_axes=..., backend=...)` is the entry point; `Jet`, `JetPlan` and
`JetModule` are for building networks that propagate jets; `jet_autograd` is the nested-autograd
equivalent (the fallback for other models, and the test oracle).
"""

from soap_kernels.jets.api import jet
from soap_kernels.jets.autograd import jet_autograd
from soap_kernels.jets.jet import Jet
from soap_kernels.jets.module import JetModule
from soap_kernels.jets.plan import JetPlan

__all__ = ["Jet", "JetModule", "JetPlan", "jet", "jet_autograd"]
