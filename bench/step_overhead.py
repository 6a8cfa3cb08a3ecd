"""Host time of one optimizer step on tiny tensors: the floor under an eager SOAP step on a GPU.

On tiny tensors every operation costs its dispatch and Python overhead alone, which an eager GPU step pays the
same way before its kernels run (on a GPU the host only queues them). Parameter set: the paper's PirateNet
layout (bench/soap_step.py's shapes) at width 8 and 4 Fourier features, so the same stacks and dims as at
width 256. Providers timed in interleaved rounds of 40 steps, one thread: soap_kernels (backend auto) and
soap_kernels_torch, without refresh and with the paper's precondition_frequency 2, and torch.optim.Adam
(foreach) as the floor an optimizer can reach.

    python bench/step_overhead.py [--root DIR]

--root imports soap_kernels from another checkout (its soap_kernels/_C built or copied in place), so two
commits can be compared on one machine; results go to this checkout's
bench/results/step_overhead[-<label>]-<machine>-<date>.json (--label names a run).
"""

from __future__ import annotations

import argparse
import sys

STEPS_PER_ROUND = 40


def _import_from(root: str) -> None:
    """Make `import soap_kernels` load the package under root (ahead of an editable install's finder)."""
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
    sys.path.insert(0, root)


def _providers(torch, shapes: list[tuple]) -> dict:
    """{name: callable running STEPS_PER_ROUND steps} on fixed gradients, state already initialised."""
    from bench.soap_step import NO_REFRESH_FREQUENCY, PAPER_SETTINGS
    from soap_kernels import SOAP

    generator = torch.Generator().manual_seed(0)
    no_refresh = {**PAPER_SETTINGS, "precondition_frequency": NO_REFRESH_FREQUENCY}
    makers = {
        "soap_kernels_no_refresh": lambda p: SOAP(p, **no_refresh),
        "soap_kernels": lambda p: SOAP(p, **PAPER_SETTINGS),
        "soap_kernels_torch_no_refresh": lambda p: SOAP(p, **no_refresh, backend="torch"),
        "soap_kernels_torch": lambda p: SOAP(p, **PAPER_SETTINGS, backend="torch"),
        "adam": lambda p: torch.optim.Adam(p, lr=PAPER_SETTINGS["lr"], betas=PAPER_SETTINGS["betas"], foreach=True),
    }
    blocks = {}
    for name, make in makers.items():
        params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer = make(params)
        for _ in range(3):  # the initialising step and a refresh before timing
            optimizer.step()

        def block(step=optimizer.step) -> None:
            for _ in range(STEPS_PER_ROUND):
                step()

        blocks[name] = block
    return blocks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="import soap_kernels from this checkout")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--label", default="", help="suffix of the results file name, e.g. a commit")
    args = parser.parse_args(argv)
    import torch

    from bench.harness import save_results, time_interleaved  # this checkout's bench, whatever --root says
    from bench.soap_step import pirate_net_shapes

    if args.root:
        _import_from(args.root)
    import soap_kernels

    torch.set_num_threads(1)
    shapes = pirate_net_shapes(width=8, fourier=4)
    timings = time_interleaved(_providers(torch, shapes), "cpu", rounds=args.rounds)
    records = []
    for name, timing in timings.items():
        per_step = {k: v / STEPS_PER_ROUND if k.endswith("_ms") else v for k, v in timing.items()}
        records.append({"case": "piratenet-layout width 8", "provider": name, **per_step})
        print(f"{name:32s} {per_step['median_ms']:7.3f} ms/step (p10 {per_step['p10_ms']:.3f}, "
              f"p90 {per_step['p90_ms']:.3f})")  # fmt: skip
    path = save_results("step_overhead" + (f"-{args.label}" if args.label else ""), {
        "description": __doc__.splitlines()[0], "package": soap_kernels.__file__, "root": args.root,
        "unit": "ms of host time per step (median over rounds of 40 steps, one thread)", "records": records,
    })  # fmt: skip
    print(f"saved {path}")
    return {"records": records}


if __name__ == "__main__":
    main()
