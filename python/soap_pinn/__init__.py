"""soap-pinn: the thin PINN trainer that reproduces the SOAP-PINN paper's benchmarks (arXiv 2502.00604).

It uses soap_kernels like any user would (soap_kernels.SOAP, soap_kernels.jet, soap_kernels.nn.PirateNet,
soap_kernels.alignment_score) and holds no kernel code. One concern per module:

    pdes/            each PDE: residual, initial/boundary losses, domain, the paper's recipe
    spectral.py      Fourier pseudo-spectral ETDRK4 (Kassam-Trefethen) and trigonometric interpolation
    references.py    reference generators on the published grids; cache.py caches them (~/.cache/soap_pinn)
    finite_differences.py   fourth-order grid derivatives (an independent residual check)
    derivatives.py   the one place input derivatives are taken (soap_kernels.jet, or nested autograd)
    models.py        network factory (PirateNet from soap_kernels.nn; a local fallback MLP)
    sampling.py schedule.py weighting.py optimizers.py   residual points, lr schedule, causal and
                     grad-norm weights, SOAP/Adam with the paper's settings
    config.py        presets 'small' (CPU, minutes) and 'paper' (GPU)
    trainer.py       the loop, time windows, metrics.jsonl, checkpoints and resume
    plots.py compare.py step_timing.py cli.py   outputs and the `soap-pinn` command

Usage:
    soap-pinn list
    soap-pinn train allen_cahn --optimizer soap --out runs/ac-soap      # small preset, 2000 steps
    soap-pinn train --resume runs/ac-soap
    soap-pinn compare runs/ac-soap runs/ac-adam [--save report.json]
    soap-pinn time-step allen_cahn [--device cuda --preset paper]
    soap-pinn train allen_cahn --preset paper --device cuda --max-minutes 10
Set SOAP_KERNELS_BACKEND=torch to run soap_kernels' torch reference paths instead of the fused kernels.
"""

__version__ = "0.1.0"
