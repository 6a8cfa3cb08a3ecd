"""The SOAP optimizer: groups parameters by shape, calls ops, owns the state layout."""

from soap_kernels.optim.soap import SOAP

__all__ = ["SOAP"]
