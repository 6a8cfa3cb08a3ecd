"""Command line: `soap-pinn train|list|compare` (also `python -m soap_pinn`).

    soap-pinn train allen_cahn --optimizer soap --steps 2000 --preset small --out runs/ac-soap
    soap-pinn train --resume runs/ac-soap [--steps N]
    torchrun --standalone --nproc_per_node 2 -m soap_pinn train allen_cahn   (data parallel, see README)
    soap-pinn list
    soap-pinn compare runs/ac-soap runs/ac-adam
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    from .optimizers import OPTIMIZERS

    parser = argparse.ArgumentParser(prog="soap-pinn", description="Train the SOAP-PINN paper's benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a PINN on one PDE")
    train.add_argument("pde", nargs="?", help="PDE name (see `soap-pinn list`); omit with --resume")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="default: soap")
    train.add_argument("--steps", type=_positive_int, default=None, help="total optimizer steps (all windows)")
    train.add_argument("--preset", choices=PRESETS, default=None, help="default: small")
    train.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cpu")
    train.add_argument("--dtype", choices=("float32", "float64"), default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--batch-size", type=_positive_int, default=None)
    train.add_argument("--log-every", type=_positive_int, default=None)
    train.add_argument("--save-every", type=_positive_int, default=None)
    train.add_argument("--architecture", choices=("auto", "pirate", "local"), default=None)
    train.add_argument("--derivatives", choices=("jet", "autograd"), default=None,
                       help="input derivatives by soap_kernels.jet (default) or nested autograd (baseline)")
    train.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    train.add_argument("--sample-chunks", type=_positive_int, default=None,
                       help="draw the batch in this many seeded chunks (default 8); under torchrun the number "
                            "of processes must divide it")  # fmt: skip
    train.add_argument("--shard-refresh", action="store_true",
                       help="under torchrun: divide SOAP's eigenbasis refresh among the ranks")  # fmt: skip
    train.add_argument("--cuda-graph", action="store_true",
                       help="replay unlogged steps from a CUDA graph (one CUDA process; fixed for the run)")
    train.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                       help="under torchrun: how long a rank waits for its peers before failing (default "
                            "300)")  # fmt: skip
    train.add_argument("--max-minutes", type=float, default=None,
                       help="stop after this much training wall time and finish (summary, plots)")
    train.add_argument("--no-plots", action="store_true", help="skip the PNG plots at the end")
    train.add_argument("--out", type=Path, default=None, help="run folder (default runs/<pde>-<optimizer>)")
    train.add_argument("--resume", type=Path, default=None, help="continue the run in this folder")
    train.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                       help="start from the model of the run in DIR (same architecture; fresh optimizer), "
                            "e.g. the previous Reynolds number of an ldc curriculum")
    train.add_argument("--reference", type=Path, default=None,
                       help="reference solution file instead of the generated one (required by ldc: the paper's "
                            "ldc_Re*.mat with x, y, u, v, nu; 1-D PDEs: t, x, usol[t, x])")

    commands.add_parser("list", help="list PDEs and presets")

    timing = commands.add_parser("time-step", help="per-step cost of soap/adam x jet/autograd, interleaved")
    timing.add_argument("pde")
    timing.add_argument("--preset", choices=PRESETS, default="small")
    timing.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    timing.add_argument("--rounds", type=_positive_int, default=5)
    timing.add_argument("--steps-per-round", type=_positive_int, default=10)
    timing.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    timing.add_argument("--cuda-graph", action="store_true",
                        help="also time the jet variants with their steps replayed from a CUDA graph (--device cuda)")
    timing.add_argument("--save", type=Path, default=None, help="write the JSON result to this file")
    timing.add_argument("--reference", type=Path, default=None, help="reference solution file (required by ldc)")

    compare = commands.add_parser("compare", help="tabulate runs")
    compare.add_argument("runs", nargs="+", type=Path, help="run folders")
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")
    compare.add_argument("--save", type=Path, default=None,
                         help="also write a JSON report (machine, rows, rel L2 curves) to this file")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _train(args, parser) -> int:
    import torch

    from . import distributed
    from .config import TrainConfig, make_config, validate
    from .trainer import NonFiniteLossError, Trainer

    if args.dist_timeout is not None and args.dist_timeout <= 0:
        parser.error(f"--dist-timeout must be positive, got {args.dist_timeout}")
    try:
        world = distributed.env_world()
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume is not None:
        config_path = args.resume / "config.json"
        if not config_path.exists():
            parser.error(f"--resume {args.resume}: no config.json there (not a soap-pinn run folder)")
        config = TrainConfig.from_file(config_path)
        if args.pde is not None and args.pde != config.pde:
            parser.error(f"--resume {args.resume} is a {config.pde!r} run, not {args.pde!r}")
        fixed = [flag for flag, value in (
            ("--optimizer", args.optimizer), ("--preset", args.preset), ("--device", args.device),
            ("--dtype", args.dtype), ("--seed", args.seed), ("--batch-size", args.batch_size),
            ("--log-every", args.log_every), ("--save-every", args.save_every),
            ("--architecture", args.architecture), ("--derivatives", args.derivatives), ("--out", args.out),
            ("--sample-chunks", args.sample_chunks), ("--cuda-graph", True if args.cuda_graph else None),
            ("--reference", args.reference), ("--init-from", args.init_from),
        ) if value is not None]  # fmt: skip
        if fixed:
            parser.error(f"--resume continues the saved configuration; {', '.join(fixed)} cannot change "
                         "(only --steps, --threads, --no-plots, --shard-refresh and --dist-timeout can)")
        if args.steps is not None and args.steps != config.steps and config.time_windows > 1:
            parser.error(f"--steps cannot change on resume for {config.pde!r}: its {config.time_windows} time windows "
                         f"split the saved {config.steps} steps")
        if args.steps is not None:
            config.steps = args.steps
        if args.no_plots:
            config.plots = False
        if args.shard_refresh:
            config.shard_refresh = True
        try:
            validate(config)
        except ValueError as error:
            parser.error(str(error))
        out, resume = args.resume, True
    else:
        if args.pde is None:
            parser.error("train needs a PDE name (or --resume DIR)")
        overrides = dict(
            optimizer=args.optimizer, steps=args.steps, device=args.device, dtype=args.dtype, seed=args.seed,
            batch_size=args.batch_size, log_every=args.log_every, save_every=args.save_every,
            architecture=args.architecture, derivatives=args.derivatives, plots=False if args.no_plots else None,
            sample_chunks=args.sample_chunks, shard_refresh=True if args.shard_refresh else None,
            cuda_graph=True if args.cuda_graph else None,
            reference_settings=None if args.reference is None else {"file": str(args.reference.resolve())},
            init_from=None if args.init_from is None else str(args.init_from.resolve()),
        )  # fmt: skip
        try:
            config = make_config(args.pde, args.preset or "small", **overrides)
        except (ValueError, NotImplementedError) as error:
            parser.error(str(error))
        out, resume = args.out or Path("runs") / f"{config.pde}-{config.optimizer}", False
        if (out / "checkpoint.pt").exists():
            parser.error(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    if config.sample_chunks % world.world_size:
        parser.error(f"{world.world_size} processes (WORLD_SIZE) must divide --sample-chunks {config.sample_chunks}")
    timeout = distributed.DEFAULT_TIMEOUT_S if args.dist_timeout is None else args.dist_timeout
    context = distributed.init_from_env(config.device, timeout)
    finished = False
    try:
        trainer = Trainer(config, out, resume=resume, progress=context.is_main)
        summary = trainer.run(time_limit_s=None if args.max_minutes is None else 60.0 * args.max_minutes)
        finished = True
    except NonFiniteLossError as error:
        if context.is_main:
            print(f"soap-pinn: {error}", file=sys.stderr)
        return 3
    except distributed.DistributedError as error:
        print(str(error), file=sys.stderr)
        return 4
    finally:
        distributed.shutdown(synchronise=finished)
    if context.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def _time_step(args, parser) -> int:
    import platform

    import torch

    from .step_timing import time_variants

    if args.threads:
        torch.set_num_threads(args.threads)
    reference = {} if args.reference is None else {"reference_settings": {"file": str(args.reference.resolve())}}
    variants = [dict(optimizer=o, derivatives=d, device=args.device, **reference)
                for o in ("soap", "adam") for d in ("jet", "autograd")]  # fmt: skip
    if args.cuda_graph:
        if args.device != "cuda":
            parser.error(f"--cuda-graph needs --device cuda, got {args.device}")
        variants += [dict(variant, cuda_graph=True) for variant in variants if variant["derivatives"] == "jet"]
    try:
        results = time_variants(args.pde, variants, args.preset, args.rounds, args.steps_per_round)
    except (ValueError, NotImplementedError) as error:
        parser.error(str(error))
    for row in results:
        v = row["variant"]
        name = f"{v['optimizer']:5s} {v['derivatives']:8s} {'graph' if v.get('cuda_graph') else 'eager':5s}"
        if "error" in row:
            print(f"{name} failed: {row['error']}")
            continue
        wall_ms, cpu_ms = 1e3 * row["wall_s_per_step"], 1e3 * row["cpu_s_per_step"]
        print(f"{name} wall {wall_ms:8.1f} ms/step   cpu {cpu_ms:8.1f} ms/step")
    if args.save is not None:
        report = {"pde": args.pde, "preset": args.preset, "rounds": args.rounds,
                  "steps_per_round": args.steps_per_round, "torch_threads": torch.get_num_threads(),
                  "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                              "cuda": torch.cuda.get_device_name(0) if args.device == "cuda" else None},
                  "results": results}  # fmt: skip
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _list() -> int:
    from .config import PRESETS
    from .pdes import NOT_IMPLEMENTED, PDES

    print("PDEs:")
    for name, pde in PDES.items():
        windows = f" [{pde.recipe.time_windows} time windows]" if pde.recipe.time_windows > 1 else ""
        print(f"  {name:16s} {pde.summary}{windows}")
    for name, reason in NOT_IMPLEMENTED.items():
        print(f"  {name:16s} (not implemented: {reason})")
    print("presets:")
    print("  small            PirateNet 2x64, batch 1024, 2000 steps: minutes on a laptop CPU (default)")
    print("  paper            PirateNet 3x256 (ldc: 4x256), the paper's batch, schedule and step counts (for a GPU)")
    assert set(PRESETS) == {"small", "paper"}
    return 0


def _compare(args, parser) -> int:
    from .compare import collect_run, comparison_report, format_table

    try:
        rows = [collect_run(path) for path in args.runs]
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(comparison_report(args.runs), indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train(args, parser)
    if args.command == "list":
        return _list()
    if args.command == "time-step":
        return _time_step(args, parser)
    return _compare(args, parser)
