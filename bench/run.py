"""One entry point for the benchmark suites: `python -m bench [suite ...] [options]` (see bench/README.md).

Each suite is a module bench/<name>.py exposing `run(config: SuiteConfig) -> {"records": [...], ...}` (or,
failing that, `main(argv)`); a suite whose module is missing is skipped with a message. Every run measures
the machine's matmul and copy ceilings first, so each result carries its % of peak from the same run; it
samples the GPU through NVML while each suite runs; it writes <suite>-<device>-<date>.json and .png; and it
prints one summary table last.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import harness
from bench.ceilings import ceiling_records, measure_ceilings, percent_of_peak


@dataclass(frozen=True)
class SuiteSpec:
    module: str | None  # None: built into this file
    description: str


SUITES: dict[str, SuiteSpec] = {
    "soap_step": SuiteSpec("bench.soap_step", "SOAP optimizer step: soap_kernels vs reference SOAPs and Adam"),
    "refresh": SuiteSpec("bench.refresh", "eigenbasis refresh of Kronecker factors: qr / eigh / faster solvers"),
    "residual": SuiteSpec("bench.residual", "PINN residual + backward: jets vs nested autograd and torch.func"),
    "train_step": SuiteSpec("bench.train_step", "end-to-end PINN training step (residual + SOAP step)"),
    "jet_kernels": SuiteSpec("bench.jet_kernels", "launch settings of the fused jet layer kernels (a GPU sweep)"),
    "distributed": SuiteSpec(
        "bench.distributed", "data-parallel SOAP step on CPU processes: sharded vs redundant refresh"
    ),
    "ceilings": SuiteSpec(None, "this machine's measured matmul TFLOP/s per dtype and copy GB/s"),
}
DEFAULT_SUITES = ("soap_step", "refresh", "residual", "train_step")
STATUS_OK, STATUS_SKIPPED, STATUS_FAILED, STATUS_NOT_DONE = "ok", "skipped", "failed", "not implemented"


# ---------------------------------------------------------------------------------------------------------
# finding and running suites


def resolve_suite(name: str) -> tuple[object | None, str, str]:
    """(module or None, status, message) for a registered suite; imports its module if it exists."""
    spec = SUITES[name]
    if spec.module is None:
        return None, STATUS_OK, "built in"
    if importlib.util.find_spec(spec.module) is None:
        path = spec.module.replace(".", "/") + ".py"
        return None, STATUS_SKIPPED, f"{path} is not present (not written yet)"
    try:
        module = importlib.import_module(spec.module)
    except Exception as error:  # a suite that exists but does not import is a failure, not a skip
        return None, STATUS_FAILED, f"import of {spec.module} failed: {type(error).__name__}: {error}"
    if hasattr(module, "run"):
        import inspect

        if "config" in inspect.signature(module.run).parameters:
            return module, STATUS_OK, f"{spec.module}.run(config)"
        return module, STATUS_OK, f"{spec.module}.run() without config (sizes/providers ignored)"
    if hasattr(module, "main"):
        return module, STATUS_OK, f"{spec.module}.main(argv) (no records: it writes its own results)"
    return None, STATUS_FAILED, f"{spec.module} exposes neither run(config) nor main(argv)"


def _call_run(run, config: harness.SuiteConfig) -> dict:
    """run(config) per the contract; a run() without a `config` parameter gets device= if it takes one.

    A payload without "records" gets records derived from the timing dicts (those holding "median_ms")
    nested in it: provider = the last key on the way there, case = the keys before it.
    """
    import inspect

    parameters = inspect.signature(run).parameters
    if "config" in parameters:
        payload = run(config)
    else:
        payload = run(**({"device": str(config.device)} if "device" in parameters else {}))
    if isinstance(payload, dict) and "records" not in payload:
        payload = {**payload, "records": records_from_timings(payload), "records_derived": True}
    return payload


def records_from_timings(payload: object, path: tuple[str, ...] = ()) -> list[dict]:
    """Records for every timing dict nested in payload, named by the keys that lead to it."""
    if not isinstance(payload, dict):
        return []
    if "median_ms" in payload and path:
        return [{"case": "/".join(path[:-1]) or "-", "provider": path[-1], **payload}]
    rows: list[dict] = []
    for key, value in payload.items():
        rows += records_from_timings(value, (*path, str(key)))
    return rows


def _check_records(payload: object) -> list[dict]:
    """The records of a suite's return value, or ValueError saying what is wrong with it."""
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise ValueError("run(config) must return a dict with a list under 'records'")
    for index, row in enumerate(payload["records"]):
        if not isinstance(row, dict) or "case" not in row or "provider" not in row:
            raise ValueError(f"record {index} lacks 'case' or 'provider': {row!r}")
        if row.get("median_ms") is None and not row.get("error"):
            raise ValueError(f"record {index} ({row['case']}, {row['provider']}) has neither median_ms nor error")
    return payload["records"]


def _nvml_region(device: torch.device, enabled: bool):
    from soap_kernels import profile

    if not enabled:
        return None
    if device.type != "cuda":
        return {"available": False, "reason": f"device is {device.type}: NVML samples GPUs only"}
    return profile.NvmlSampler(device, interval_s=0.2).start()  # sparse: the GIL is shared


def run_suite(name: str, config: harness.SuiteConfig, ceilings: dict | None, nvml: bool = True, main_argv=()) -> dict:
    """Run one suite and return its result document (status, message, records with % of peak, NVML report)."""
    spec = SUITES[name]
    document: dict = {
        "description": spec.description,
        "status": STATUS_OK,
        "message": "",
        "config": {
            "device": str(config.device),
            "sizes": config.sizes,
            "providers": list(config.providers) if config.providers else None,
        },
        "ceilings": ceilings,
        "records": [],
    }
    module, status, message = resolve_suite(name)
    document["status"], document["message"] = status, message
    if status != STATUS_OK:
        return document
    torch.manual_seed(0)
    sampler = _nvml_region(config.device, nvml)
    started = time.perf_counter()
    try:
        if module is None:  # the built-in ceilings suite
            payload = {"records": ceiling_records(ceilings or measure_ceilings(config.device, config.sizes))}
        elif hasattr(module, "run"):
            payload = _call_run(module.run, config)
        else:  # main(argv) saves its own results; records only if it returns timings
            returned = module.main(list(main_argv))
            payload = {"records": records_from_timings(returned), "own_output": True}
        records = _check_records(payload)
    except NotImplementedError as error:
        document["status"], document["message"] = STATUS_NOT_DONE, f"NotImplementedError: {error}"
        records, payload = [], {}
    except Exception as error:
        document["status"] = STATUS_FAILED
        document["message"] = f"{type(error).__name__}: {error}"
        document["traceback"] = traceback.format_exc()
        records, payload = [], {}
    finally:
        if config.device.type == "cuda":
            torch.cuda.synchronize(config.device)
        document["seconds"] = time.perf_counter() - started
        if hasattr(sampler, "stop"):
            document["nvml"] = sampler.stop()
        elif sampler is not None:
            document["nvml"] = sampler
    document.update({key: value for key, value in payload.items() if key != "records"})
    document["records"] = [{**row, **percent_of_peak(row, ceilings)} for row in records]
    return document


# ---------------------------------------------------------------------------------------------------------
# the summary table


def _baseline_median(document: dict, row: dict) -> tuple[str | None, float | None]:
    baseline = row.get("baseline") or document.get("baseline_provider")
    if not baseline or baseline == row["provider"]:
        return baseline, None
    for other in document["records"]:
        if other["case"] == row["case"] and other["provider"] == baseline and other.get("median_ms"):
            return baseline, other["median_ms"]
    return baseline, None


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}%" if value < 10 else f"{value:.0f}%"


def summary_table(documents: list[dict]) -> str:
    """A plain-text table of every record (median, spread, ratio to the suite's baseline, % of peak)."""
    header = ("suite", "case", "provider", "median ms", "p10-p90 ms", "speedup", "TFLOP/s (%peak)", "GB/s (%peak)")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for document in documents:
        suite = document.get("suite", "?")
        if document.get("status", STATUS_OK) != STATUS_OK:
            notes.append(f"{suite}: {document['status'].upper()}: {document.get('message', '')}")
        if "records" not in document:
            notes.append(f"{suite}: saved in its own format, not as records: read its JSON")
        if document.get("baseline_provider"):
            notes.append(f"{suite}: speedup = median of {document['baseline_provider']} / median of the row")
        if document.get("nvml", {}).get("available"):
            nvml = document["nvml"]
            sm = nvml.get("metrics", {}).get("sm_clock_mhz", {}).get("median")
            watts = nvml.get("metrics", {}).get("power_w", {}).get("max")
            throttles = ", ".join(k for k in nvml.get("throttle_reasons", {}) if k != "gpu_idle") or "none"
            notes.append(
                f"{suite}: NVML: SM clock median {_fmt(sm)} MHz, power max {_fmt(watts)} W, "
                f"throttle reasons seen: {throttles}"
            )
            gpm = nvml.get("gpm", {})
            if gpm.get("available"):
                whole = gpm.get("whole_region", {})
                notes.append(
                    f"{suite}: GPM over the suite: SM occupancy {_fmt(whole.get('sm_occupancy_pct'))}%, "
                    f"DRAM bandwidth {_fmt(whole.get('dram_bw_util_pct'))}%, "
                    f"tensor cores active {_fmt(whole.get('any_tensor_util_pct'))}%"
                )
            elif gpm.get("reason"):
                notes.append(f"{suite}: GPM: {gpm['reason']}")
        for row in document.get("records", []):
            if row.get("median_ms") is None:
                rows.append((suite, row["case"], row["provider"], f"error: {row.get('error', '?')}", "", "", "", ""))
                continue
            baseline, base_ms = _baseline_median(document, row)
            speedup = f"{base_ms / row['median_ms']:.2f}x" if base_ms else ""
            if base_ms and baseline != document.get("baseline_provider"):
                speedup += f" vs {baseline}"
            spread = f"{_fmt(row.get('p10_ms'))}-{_fmt(row.get('p90_ms'))}"
            tflops = (
                f"{_fmt(row['tflops'])} ({_pct(row.get('pct_matmul_peak'))} {row.get('peak_dtype', '')})"
                if "tflops" in row
                else ""
            )
            gbps = f"{_fmt(row['gbps'])} ({_pct(row.get('pct_copy_peak'))})" if "gbps" in row else ""
            rows.append((suite, row["case"], row["provider"], _fmt(row["median_ms"]), spread, speedup, tflops, gbps))
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    machines = sorted({document.get("machine", {}).get("device", "?") for document in documents})
    return "\n".join([f"machine: {', '.join(machines)}", *lines, *notes])


# ---------------------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="*", help=f"suites to run (default: {' '.join(DEFAULT_SUITES)}; 'all')")
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument(
        "--sizes",
        choices=harness.SIZES,
        default=None,
        help="problem sizes (default: paper on GPU, small on CPU; smoke for CI)",
    )
    parser.add_argument("--providers", default=None, help="comma-separated providers to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results)")
    parser.add_argument(
        "--plots",
        choices=("per-suite", "combined", "none"),
        default="per-suite",
        help="PNG per suite, one for the whole run, or none",
    )
    parser.add_argument("--time-budget-s", type=float, default=None, help="hint to each suite")
    parser.add_argument("--no-ceilings", action="store_true", help="skip measuring matmul/copy ceilings")
    parser.add_argument("--no-nvml", action="store_true", help="skip NVML sampling")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a requested suite is skipped too")
    parser.add_argument("--list", action="store_true", help="list the suites and whether they are present")
    parser.add_argument("--dry-run", action="store_true", help="resolve the suites and exit without timing")
    parser.add_argument(
        "--summarize",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="print the summary table of saved result files (and --plot them)",
    )
    parser.add_argument("--plot", type=Path, default=None, help="with --summarize: write one PNG of them here")
    return parser


def _selected(names: list[str]) -> list[str]:
    if not names:
        return list(DEFAULT_SUITES)
    if names == ["all"]:
        return list(SUITES)
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        raise SystemExit(f"unknown suite(s) {unknown}; known: {', '.join(SUITES)}")
    return names


def _list(names: list[str]) -> int:
    failed = 0
    for name in names:
        module, status, message = resolve_suite(name)
        providers = getattr(module, "PROVIDERS", None)
        extra = f" providers: {', '.join(providers)}" if providers else ""
        print(f"{name:<11} {status:<8} {message}{extra}\n{'':<20} {SUITES[name].description}")
        failed += status == STATUS_FAILED
    return 1 if failed else 0


def _summarize(paths: list[Path], plot: Path | None) -> int:
    documents = [json.loads(path.read_text()) for path in paths]
    if plot is not None and documents:
        from bench.plots import plot_results

        title = ", ".join(sorted({d.get("machine", {}).get("device", "?") for d in documents}))
        print(f"wrote {plot_results(documents, plot, title)}")
    print(summary_table(documents))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    main_argv: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, main_argv = argv[:split], argv[split + 1 :]
    args = _parser().parse_args(argv)
    if args.summarize:
        return _summarize(args.summarize, args.plot)
    names = _selected(args.suites)
    if args.list or args.dry_run:
        return _list(names)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 1
    sizes = args.sizes or ("paper" if device.type == "cuda" else "small")
    config = harness.SuiteConfig(
        device=device,
        sizes=sizes,
        providers=tuple(args.providers.split(",")) if args.providers else None,
        time_budget_s=args.time_budget_s,
        results_dir=args.out or harness.RESULTS_DIR,
    )
    ceilings = None
    if not args.no_ceilings or "ceilings" in names:
        print(f"measuring matmul and copy ceilings on {harness.device_name(device)} ({sizes}) ...", flush=True)
        ceilings = measure_ceilings(device, sizes)
        tflops = ", ".join(f"{k} {v:.3g}" for k, v in ceilings["matmul_tflops"].items())
        print(f"  matmul TFLOP/s: {tflops}; copy {ceilings['copy_gbps']:.4g} GB/s", flush=True)

    documents = []
    for name in names:
        print(f"== {name} ({sizes}, {device}) ...", flush=True)
        document = run_suite(name, config, ceilings, nvml=not args.no_nvml, main_argv=main_argv)
        document = {"suite": name, "machine": harness.machine_report(device), **document}
        print(f"   {document['status']}: {document['message']} ({document.get('seconds', 0):.1f} s)", flush=True)
        if document["status"] == STATUS_FAILED and "traceback" in document:
            print(document["traceback"], file=sys.stderr, flush=True)
        documents.append(document)
        if document["status"] == STATUS_SKIPPED:
            continue  # nothing measured: no file
        if document.get("own_output"):
            continue  # main(argv) wrote <suite>-<device>-<date>.json itself: do not overwrite it
        path = harness.save_results(name, document, device, results_dir=config.results_dir)
        print(f"   wrote {path}", flush=True)
        if args.plots == "per-suite" and document["records"]:
            from bench.plots import plot_results

            png = harness.results_path(name, device, ".png", config.results_dir)
            print(f"   wrote {plot_results([document], png, harness.device_name(device))}", flush=True)
    if args.plots == "combined" and any(d["records"] for d in documents):
        from bench.plots import plot_results

        png = harness.results_path("bench", device, ".png", config.results_dir)
        print(f"wrote {plot_results(documents, png, harness.device_name(device))}", flush=True)

    print(summary_table(documents), flush=True)
    failed = [d["suite"] for d in documents if d["status"] == STATUS_FAILED]
    skipped = [d["suite"] for d in documents if d["status"] != STATUS_OK and d["suite"] not in failed]
    if failed or (args.strict and skipped):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
