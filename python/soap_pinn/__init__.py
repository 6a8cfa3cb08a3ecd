"""soap-pinn: the thin PINN trainer that reproduces the SOAP-PINN paper's benchmarks (arXiv 2502.00604).

PDE definitions (pdes/), reference generators (references.py, spectral.py), sampling, loss weighting,
the training loop (trainer.py), command line (cli.py) and plots. It uses soap_kernels like any user:
soap_kernels.SOAP, soap_kernels.jet, soap_kernels.nn, soap_kernels.alignment_score.
"""

__version__ = "0.1.0"
