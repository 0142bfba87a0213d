"""MONAI-style whole-volume prediction in PyTorch: the reference side of predict_vs_monai.py.

Runs under the interpreter of a separate virtual environment (``--torch-python`` of
``predict_vs_monai.py``; PyTorch is no dependency of this project) and imports only torch,
monai, numpy and nibabel. Create it with:

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.13.0 monai numpy nibabel

What it does for one case folder, like MONAI's BraTS tutorial (no brain-box crop): read the
four modalities (``<id>_{t1,t1ce,t2,flair}.nii.gz``, nibabel), stack them channels first,
``NormalizeIntensity(nonzero=True, channel_wise=True)``, ``sliding_window_inference`` (roi
``--roi``^3, ``--overlap``, ``mode="gaussian"``, ``sw_batch_size`` ``--sw-batch``) with MONAI's
``DynUNet`` (nnU-Net's 3D U-Net: conv 3^3 -> instance norm -> LeakyReLU 0.01, twice per level,
stride-2 convolutions down, transposed convolutions up) at ``--filters`` (random weights,
seeded: timing does not depend on them), argmax, and write the uint8 segmentation as NIfTI with
the input's affine. ``torch.set_num_threads(--threads)``. Prints one JSON line: the seconds of
each step, the number of windows, the versions.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

STARTED = time.perf_counter()

MODALITIES = ("t1", "t1ce", "t2", "flair")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="segmentation .nii.gz")
    parser.add_argument("--filters", type=int, nargs="+",
                        default=[32, 64, 128, 256, 320, 320])
    parser.add_argument("--roi", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()

    import monai
    import nibabel as nib
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import DynUNet
    from monai.transforms import NormalizeIntensity

    imported = time.perf_counter()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(arguments.seed)
    levels = len(arguments.filters)
    network = DynUNet(
        spatial_dims=3, in_channels=4, out_channels=4, kernel_size=[3] * levels,
        strides=[1] + [2] * (levels - 1), upsample_kernel_size=[2] * (levels - 1),
        filters=arguments.filters, norm_name=("instance", {"affine": True}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}), res_block=False,
    ).eval()
    built = time.perf_counter()

    case_id = arguments.case_dir.name
    images = [nib.load(str(arguments.case_dir / f"{case_id}_{name}.nii.gz"))
              for name in MODALITIES]
    volume = np.stack([np.asarray(image.dataobj, dtype=np.float32) for image in images])
    normalised = NormalizeIntensity(nonzero=True, channel_wise=True)(volume)
    inputs = torch.as_tensor(np.asarray(normalised))[None]
    read = time.perf_counter()

    with torch.inference_mode():
        logits = sliding_window_inference(inputs, (arguments.roi,) * 3, arguments.sw_batch,
                                          network, overlap=arguments.overlap, mode="gaussian")
        labels = torch.argmax(logits, dim=1)[0].to(torch.uint8).numpy()
    predicted = time.perf_counter()

    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, images[0].affine), str(arguments.out))
    written = time.perf_counter()

    interval = [max(int(arguments.roi * (1 - arguments.overlap)), 1)] * 3
    windows = math.prod(math.ceil(max(side - arguments.roi, 0) / step) + 1
                        for side, step in zip(volume.shape[1:], interval, strict=True))
    print(json.dumps({
        "import_s": imported - STARTED, "build_s": built - imported, "read_s": read - built,
        "sliding_window_s": predicted - read, "write_s": written - predicted,
        "total_s": written - STARTED, "windows": windows, "shape": list(volume.shape[1:]),
        "parameters": sum(parameter.numel() for parameter in network.parameters()),
        "torch": torch.__version__, "monai": monai.__version__,
        "threads": torch.get_num_threads(), "sw_batch_size": arguments.sw_batch,
    }))


if __name__ == "__main__":
    main()
