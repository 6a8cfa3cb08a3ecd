"""Forward-mode jets: network values with their input derivatives (DESIGN.md section 5).

`jet(model, x, derivatives)` is the entry point; `Jet`, `JetPlan` and `JetModule` are for building
networks that propagate jets; `jet_autograd` is the nested-autograd equivalent (fallback and oracle).
"""

from soap_kernels.jets.api import jet
from soap_kernels.jets.autograd import jet_autograd
from soap_kernels.jets.jet import Jet
from soap_kernels.jets.module import JetModule
from soap_kernels.jets.plan import JetPlan

__all__ = ["Jet", "JetModule", "JetPlan", "jet", "jet_autograd"]
