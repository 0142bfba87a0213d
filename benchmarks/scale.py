"""BraTS 2021 at full size on one machine: generation, preprocessing, training and prediction.

Subcommands (each appends its figures to ``--out``, a JSON file with the host record):

- ``generate``: a synthetic set at BraTS 2021 size and layout (240 x 240 x 155, 4 modalities,
  ``BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``, readable with
  ``data=brats2021``), seeded, in parallel processes, resumable (rerun the same command);
- ``preprocess``: NIfTI -> TFRecord wall time, cases/s, peak RSS and record size per case for
  growing numbers of cases (subsets of the generated set, as folders of links), with the
  least-squares slope (s per case) and the extrapolation to 1,251 cases;
- ``train``: steps/s and peak RSS of the reference model (``model=unet3d``, 128^3 crops) with
  ``data.cache`` on and off, and the model's own time per step against the pipeline's;
- ``predict``: ``mode=predict`` throughput (cases/min) and peak RSS over whole cases.

    python -m benchmarks.scale generate --raw /work/scale/brats2021_synth --num-cases 1251
    python -m benchmarks.scale preprocess --raw /work/scale/brats2021_synth --counts 50 200 1251

Every figure is a wall time on a shared machine: the load average is stored next to it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks._common import RESULTS_DIR
from benchmarks._scale_runs import run_child

#: BraTS 2021's grid and voxel size (RSNA-ASNR-MICCAI BraTS 2021: 240 x 240 x 155, 1 mm).
BRATS2021_SHAPE = (240, 240, 155)
BRATS2021_SPACING = (1.0, 1.0, 1.0)
BRATS2021_CASES = 1251
#: Subsets, records and run folders of the benchmark (outside the repository: tens of GB).
DEFAULT_WORK = Path("/work/scale/work")
#: glibc: keep freed memory in the heap instead of returning every large array to the kernel
#: (a case allocates dozens of 36 MB float32 volumes; unmapping and faulting them back in cost
#: about a quarter of the generator's CPU time). Read by each spawned worker at start-up.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**31),
              "MALLOC_TOP_PAD_": str(256 * 2**20)}


def generate(args: argparse.Namespace) -> None:
    """Generate (or complete) the synthetic BraTS 2021-size set."""
    from unet3d.data.synthetic.generate import generate_dataset

    for key, value in MALLOC_ENV.items():
        os.environ.setdefault(key, value)
    start = time.perf_counter()
    ids = generate_dataset(args.raw, args.num_cases, BRATS2021_SHAPE, BRATS2021_SPACING,
                           args.seed, layout="brats2021", workers=args.workers)
    logging.getLogger(__name__).info("%d cases ready in %s (%.0f s)", len(ids), args.raw,
                                     time.perf_counter() - start)


def preprocess_child(args: argparse.Namespace) -> None:
    """(child process) Preprocess ``--raw`` into ``--records``; print the figures as JSON."""
    import json
    import resource

    from unet3d.data.layouts.resolve import data_config, resolve_layout
    from unet3d.data.preprocess import preprocess_dataset

    layout = resolve_layout(data_config("brats2021"), None, args.raw)
    start = time.perf_counter()
    files = preprocess_dataset(args.raw, args.records, layout, workers=args.workers)
    seconds = time.perf_counter() - start
    sizes = [Path(name).stat().st_size for name in files]
    print("RESULT " + json.dumps({
        "cases": len(files), "seconds": seconds, "cases_per_s": len(files) / seconds,
        "record_mb_per_case": sum(sizes) / len(sizes) / 1e6, "records_gb": sum(sizes) / 1e9,
        "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }), flush=True)


def preprocess(args: argparse.Namespace) -> None:
    """Preprocessing wall time, cases/s, peak memory and record size against the number of
    cases (fresh record folders; each count in its own process)."""
    import json

    from benchmarks._scale_runs import complete_cases, linear_fit, subset, update_results

    available = complete_cases(args.raw)
    rows = []
    for count in args.counts:
        count = count or len(available)
        if count > len(available):
            raise SystemExit(f"{args.raw}: only {len(available)} complete cases, asked {count}")
        folder = subset(args.raw, available[:count], args.work / f"raw_{count}")
        records = args.work / f"records_{count}"
        if records.exists() and not args.keep:
            shutil.rmtree(records)
        log = args.work / f"preprocess_{count}.log"
        child = run_child([sys.executable, "-m", "benchmarks.scale", "_preprocess",
                           "--raw", str(folder), "--records", str(records),
                           "--workers", str(args.workers)],
                          args.work, log)
        line = next(text for text in log.read_text().splitlines() if text.startswith("RESULT "))
        row = {"cases": count, **json.loads(line[len("RESULT "):]), "process": child,
               "load_average_after": list(os.getloadavg())}
        print(row, flush=True)
        rows.append(row)
    fit = linear_fit([row["cases"] for row in rows], [row["seconds"] for row in rows])
    fit["extrapolated_s_for_1251"] = fit["intercept_s"] + fit["slope_s_per_case"] * 1251
    update_results(args.out, "preprocess", {"workers": args.workers, "rows": rows, "fit": fit,
                                            "raw": str(args.raw)})


def compression(args: argparse.Namespace) -> None:
    """TFRecord compression (none, ZLIB, GZIP): size on disk against parse time per record."""
    import tensorflow as tf

    from unet3d.data.tfrecord import parse_case

    sources = sorted(Path(args.records).glob("*.tfrecord"))[: args.cases]
    rows = []
    for kind in ("", "ZLIB", "GZIP"):
        folder = args.work / f"compression_{kind or 'none'}"
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for source in sources:
            target = folder / source.name
            if not target.exists():
                with tf.io.TFRecordWriter(str(target), tf.io.TFRecordOptions(
                        compression_type=kind)) as writer:
                    for item in tf.data.TFRecordDataset(str(source)):
                        writer.write(item.numpy())
            files.append(str(target))
        timings = []
        for _ in range(args.repeats):
            os.system("sync")
            start = time.perf_counter()
            dataset = tf.data.TFRecordDataset(files, compression_type=kind).map(parse_case)
            for element in dataset:
                element["image"].numpy()
            timings.append((time.perf_counter() - start) / len(files))
        size = sum(Path(name).stat().st_size for name in files) / len(files)
        rows.append({"compression": kind or "none", "mb_per_case": size / 1e6,
                     "read_parse_s_per_case_best": min(timings),
                     "read_parse_s_per_case": timings})
        print(rows[-1], flush=True)
    base = rows[0]
    for row in rows:
        row["size_ratio"] = row["mb_per_case"] / base["mb_per_case"]
        row["read_time_ratio"] = (row["read_parse_s_per_case_best"]
                                  / base["read_parse_s_per_case_best"])
    from benchmarks._scale_runs import update_results

    update_results(args.out, "compression", {"cases": len(sources), "rows": rows,
                                             "note": "files in the page cache (read twice)"})


#: The runner settings of the scale runs: BraTS 2021 layout, fp32 (what a CPU without bf16 runs).
RUNNER_BASE = ["data=brats2021", "precision=fp32", "tracking.enabled=false"]


def _data_overrides(args: argparse.Namespace, count: int) -> list[str]:
    """The ``data`` overrides of a subset of ``count`` cases (preprocessed by ``preprocess``)."""
    from benchmarks._scale_runs import complete_cases, subset

    available = complete_cases(args.raw)
    count = count or len(available)
    folder = subset(args.raw, available[:count], args.work / f"raw_{count}")
    return [*RUNNER_BASE, f"data.raw_dir={folder}",
            f"data.preprocessed_dir={args.work / f'records_{count}'}"]


def _runner(args: argparse.Namespace, overrides: list[str], label: str) -> tuple[dict, Path]:
    """Run ``python -m unet3d.run`` in the work folder; its figures and run folder."""
    run_dir = args.work / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    command = [sys.executable, "-m", "unet3d.run", *overrides,
               f"paths.data_dir={args.work / 'data'}", f"hydra.run.dir={run_dir}"]
    child = run_child(command, args.work, args.work / "logs" / f"{label}.log")
    child["load_average_after"] = list(os.getloadavg())
    return child, run_dir


def train(args: argparse.Namespace) -> None:
    """Training steps/s, input wait and peak RSS of the reference model at 128^3, with
    ``data.cache`` true, false or auto, for each ``--plan`` run; the model alone for comparison."""
    import json

    from benchmarks._scale_runs import update_results

    model = [f"model={args.model}", "data.crop_size=[128,128,128]", "data.batch_size=2"]
    timing = [f"benchmark.warmup_steps={args.warmup}", f"benchmark.steps={args.steps}"]
    rows = []
    plans = [(int(item.split(":")[0]), item.split(":")[1]) for item in args.plan]
    for count, cache in plans:
        overrides = ["mode=benchmark", "benchmark.target=train",
                     "benchmark.synthetic_input=false", *_data_overrides(args, count), *model,
                     *timing, f"data.cache={cache}"]
        child, run_dir = _runner(args, overrides, f"train_{count}_{cache}")
        result = json.loads((run_dir / "benchmark.json").read_text())  # extra: top level
        row = {"cases": count, "cache_setting": cache, "cache": result.get("cache"),
               "train_files": result.get("train_files"), "step_time_s": result["step_time_s"],
               "steps_per_s": 1.0 / result["step_time_s"],
               "input_wait_s_per_step": result.get("input_wait_s_per_step"),
               "cpu_seconds_per_step": result.get("cpu_seconds_per_step"),
               "peak_rss_mb": result.get("peak_rss_mb"), "process": child}
        print(row, flush=True)
        rows.append(row)
    model_only = None
    if args.model_only:
        overrides = ["mode=benchmark", "benchmark.target=train", "benchmark.synthetic_input=true",
                     *_data_overrides(args, plans[0][0]), *model, *timing]
        child, run_dir = _runner(args, overrides, "train_model_only")
        result = json.loads((run_dir / "benchmark.json").read_text())
        model_only = {"step_time_s": result["step_time_s"],
                      "cpu_seconds_per_step": result.get("cpu_seconds_per_step"),
                      "peak_rss_mb": result.get("peak_rss_mb"), "process": child}
        print(model_only, flush=True)
    update_results(args.out, "train", {"rows": rows, "model_only": model_only,
                                       "warmup_steps": args.warmup, "steps": args.steps})


def predict(args: argparse.Namespace) -> None:
    """``mode=predict`` over ``--cases`` whole cases: cases/min overall and per quarter of the
    run (does throughput hold?), peak RSS; reading and writing overlap the model."""
    import re
    from datetime import datetime

    from benchmarks._scale_runs import update_results

    model = [f"model={args.model}", "data.crop_size=[128,128,128]"]
    checkpoint_overrides = ["mode=train", *_data_overrides(args, args.train_cases), *model,
                            "training.max_steps=2", "training.checkpoint_every=2",
                            "data.cache=false"]
    _, checkpoint = _runner(args, checkpoint_overrides, f"predict_checkpoint_{args.model}")
    data = _data_overrides(args, args.cases)
    folder = [item for item in data if item.startswith("data.raw_dir=")][0].split("=", 1)[1]
    output = args.work / f"predictions_{args.model}_{args.cases}"
    if output.exists():
        shutil.rmtree(output)
    overrides = ["mode=predict", *RUNNER_BASE, *model, f"predict.input_dir={folder}",
                 f"predict.checkpoint={checkpoint}", f"predict.output_dir={output}",
                 "data.raw_dir=null"]
    child, run_dir = _runner(args, overrides, f"predict_{args.model}_{args.cases}")
    pattern = re.compile(r"^\[([0-9-]+ [0-9:,]+)\].* predicted (\S+) \((\d+)/(\d+)\)")
    stamps = []
    for line in (run_dir / "run.log").read_text().splitlines():
        found = pattern.match(line)
        if found:
            stamps.append(datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    quarters = []
    if len(stamps) >= 8:
        size = len(stamps) // 4
        for part in range(4):
            chunk = stamps[part * size:(part + 1) * size + 1]
            quarters.append(60.0 * (len(chunk) - 1) / (chunk[-1] - chunk[0]))
    written = len(list(output.glob("*.nii.gz")))
    row = {"model": args.model, "cases": args.cases, "cases_written": written,
           # Steady state: cases 2..n over the time between the first and the last case line.
           "cases_per_min": (60.0 * (len(stamps) - 1) / (stamps[-1] - stamps[0])
                             if len(stamps) > 1 else None),
           "cases_per_min_with_startup": 60.0 * len(stamps) / child["wall_s"],
           "cases_per_min_by_quarter": quarters, "peak_rss_mb": child["peak_rss_mb"],
           "process": child}
    print(row, flush=True)
    update_results(args.out, f"predict_{args.model}", row)


def table(args: argparse.Namespace) -> None:
    """Print the Markdown tables of ``--out`` (for benchmarks/README.md): this host's record,
    or the file's only one."""
    from benchmarks._common import host_key, host_records

    records = host_records(args.out)
    data = records.get(host_key()) or (next(iter(records.values())) if len(records) == 1
                                       else None)
    if data is None:
        raise SystemExit(f"{args.out}: no record of this host; hosts: {sorted(records)}")
    hosts = {section: env.get("host") for section, env in data.get("environments", {}).items()}
    lines = [f"Host: {sorted(set(hosts.values()))}", ""]
    pre = data.get("preprocess")
    if pre:
        lines += ["| cases | wall s | cases/s | MB per record | main / worker peak RSS MB | "
                  "load (1 min) |", "|---|---|---|---|---|---|"]
        for row in pre["rows"]:
            lines.append(f"| {row['cases']} | {row['seconds']:.0f} | {row['cases_per_s']:.2f} | "
                         f"{row['record_mb_per_case']:.1f} | {row['parent_peak_rss_mb']:.0f} / "
                         f"{row['worker_peak_rss_mb']:.0f} | "
                         f"{row['load_average_after'][0]:.1f} |")
        fit = pre["fit"]
        lines += ["", f"slope {fit['slope_s_per_case']:.2f} s/case, intercept "
                      f"{fit['intercept_s']:.0f} s; 1,251 cases: "
                      f"{fit['extrapolated_s_for_1251'] / 60:.0f} min", ""]
    comp = data.get("compression")
    if comp:
        lines += ["| compression | MB per case | read+parse s/case | size | read time |",
                  "|---|---|---|---|---|"]
        for row in comp["rows"]:
            lines.append(f"| {row['compression']} | {row['mb_per_case']:.1f} | "
                         f"{row['read_parse_s_per_case_best']:.3f} | {row['size_ratio']:.2f}x | "
                         f"{row['read_time_ratio']:.2f}x |")
        lines.append("")
    tra = data.get("train")
    if tra:
        lines += ["| cases | data.cache | s/step | steps/s | input wait s/step | CPU s/step | "
                  "peak RSS MB |", "|---|---|---|---|---|---|---|"]
        for row in tra["rows"]:
            lines.append(f"| {row['cases']} ({row['train_files']} train) | {row['cache_setting']} "
                         f"| {row['step_time_s']:.2f} | {row['steps_per_s']:.3f} | "
                         f"{row['input_wait_s_per_step']:.3f} | {row['cpu_seconds_per_step']:.1f} "
                         f"| {row['peak_rss_mb']:.0f} |")
        if tra.get("model_only"):
            model = tra["model_only"]
            lines.append(f"| model only (in-memory tensors) | - | {model['step_time_s']:.2f} | "
                         f"{1 / model['step_time_s']:.3f} | - | "
                         f"{model['cpu_seconds_per_step']:.1f} | {model['peak_rss_mb']:.0f} |")
        lines.append("")
    for key in sorted(key for key in data if key.startswith("predict_")):
        row = data[key]
        quarters = ", ".join(f"{value:.2f}" for value in row["cases_per_min_by_quarter"])
        lines.append(f"predict ({row['model']}): {row['cases_written']} cases, "
                     f"{row['cases_per_min']:.2f} cases/min (quarters {quarters}), "
                     f"{row['cases_per_min_with_startup']:.2f} with start-up, peak RSS "
                     f"{row['peak_rss_mb']:.0f} MB")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help=generate.__doc__)
    gen.add_argument("--raw", type=Path, required=True, help="the data set's folder")
    gen.add_argument("--num-cases", type=int, default=BRATS2021_CASES)
    gen.add_argument("--seed", type=int, default=2021)
    gen.add_argument("--workers", type=int, default=0, help="processes (0: one per usable CPU)")
    pre = commands.add_parser("preprocess", help=preprocess.__doc__)
    pre.add_argument("--raw", type=Path, required=True)
    pre.add_argument("--counts", type=int, nargs="+", default=[50, 200, 0],
                     help="numbers of cases (0: every complete case)")
    pre.add_argument("--workers", type=int, default=0)
    pre.add_argument("--keep", action="store_true", help="keep existing records (resume)")
    child = commands.add_parser("_preprocess")
    child.add_argument("--raw", type=Path, required=True)
    child.add_argument("--records", type=Path, required=True)
    child.add_argument("--workers", type=int, default=0)
    comp = commands.add_parser("compression", help=compression.__doc__)
    comp.add_argument("--records", type=Path, required=True)
    comp.add_argument("--cases", type=int, default=20)
    comp.add_argument("--repeats", type=int, default=3)
    tra = commands.add_parser("train", help=train.__doc__)
    tra.add_argument("--raw", type=Path, required=True)
    tra.add_argument("--plan", nargs="+", default=["10:true", "10:false", "0:auto"],
                     help="CASES:CACHE runs (cases 0: every complete case; cache true, false "
                          "or auto); the first count also serves --model-only")
    tra.add_argument("--warmup", type=int, default=5)
    tra.add_argument("--steps", type=int, default=20)
    tra.add_argument("--model-only", action="store_true")
    tra.add_argument("--model", default="unet3d", choices=["unet3d_small", "unet3d"])
    pre_dict = commands.add_parser("predict", help=predict.__doc__)
    pre_dict.add_argument("--raw", type=Path, required=True)
    pre_dict.add_argument("--cases", type=int, default=100)
    pre_dict.add_argument("--train-cases", type=int, default=50)
    pre_dict.add_argument("--model", default="unet3d_small", choices=["unet3d_small", "unet3d"])
    tab = commands.add_parser("table", help=table.__doc__)
    for sub in (pre, comp, tra, pre_dict, tab):
        sub.add_argument("--work", type=Path, default=DEFAULT_WORK)
        sub.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    {"generate": generate, "preprocess": preprocess, "_preprocess": preprocess_child,
     "compression": compression, "train": train, "predict": predict,
     "table": table}[args.command](args)


if __name__ == "__main__":
    main()
