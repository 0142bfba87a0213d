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

    python benchmarks/scale.py generate --raw /work/scale/brats2021_synth --num-cases 1251
    python benchmarks/scale.py preprocess --raw /work/scale/brats2021_synth --counts 50 200 1251

Every figure is a wall time on a shared machine: the load average is stored next to it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


#: BraTS 2021's grid and voxel size (RSNA-ASNR-MICCAI BraTS 2021: 240 x 240 x 155, 1 mm).
BRATS2021_SHAPE = (240, 240, 155)
BRATS2021_SPACING = (1.0, 1.0, 1.0)
BRATS2021_CASES = 1251
#: glibc: keep freed memory in the heap instead of returning every large array to the kernel
#: (a case allocates dozens of 36 MB float32 volumes; unmapping and faulting them back in cost
#: about a quarter of the generator's CPU time). Read by each spawned worker at start-up.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**31),
              "MALLOC_TOP_PAD_": str(256 * 2**20)}


def generate(args: argparse.Namespace) -> None:
    """Generate (or complete) the synthetic BraTS 2021-size set."""
    from unet3d.data.synthetic import generate_dataset

    for key, value in MALLOC_ENV.items():
        os.environ.setdefault(key, value)
    start = time.perf_counter()
    ids = generate_dataset(args.raw, args.num_cases, BRATS2021_SHAPE, BRATS2021_SPACING,
                           args.seed, layout="brats2021", workers=args.workers)
    logging.getLogger(__name__).info("%d cases ready in %s (%.0f s)", len(ids), args.raw,
                                     time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help=generate.__doc__)
    gen.add_argument("--raw", type=Path, required=True, help="the data set's folder")
    gen.add_argument("--num-cases", type=int, default=BRATS2021_CASES)
    gen.add_argument("--seed", type=int, default=2021)
    gen.add_argument("--workers", type=int, default=0, help="processes (0: one per usable CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    {"generate": generate}[args.command](args)


if __name__ == "__main__":
    main()
