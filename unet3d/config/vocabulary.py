"""The vocabularies of the settings: every list of allowed values and the built-in components.

The modules import them from :mod:`unet3d.config` (one home); :mod:`unet3d.config`'s schema
and rules check the composed config against them.
"""

MODES = ("train", "evaluate", "train_and_evaluate", "predict", "benchmark", "postprocess",
         "cross_validate", "score", "export")
TRAINING_MODES = ("train", "train_and_evaluate")
#: The modes a fold of ``mode=cross_validate`` may run (``mode.fold_mode``: they return
#: held-out metrics).
FOLD_MODES = ("train_and_evaluate", "evaluate")
DEVICE_TYPES = ("auto", "cpu", "gpu", "mlu")
STRATEGIES = ("auto", "mirrored", "multi_worker", "horovod")
CLUSTER_RESOLVERS = ("tf_config", "slurm")
#: Collective communication of strategy=multi_worker.
COMMUNICATIONS = ("auto", "ring", "nccl")
#: Keras dtype policies of ``precision.policy``: ``auto`` the fastest on this host
#: (unet3d.runtime.precision_auto), ``mixed`` mixed_bfloat16 on CPU / mixed_float16 on GPU/MLU.
PRECISION_POLICIES = ("auto", "float32", "mixed", "mixed_bfloat16", "mixed_float16")
#: Normalisations of the U-Net's conv units (``none``: no norm, the convolutions get a bias).
NORMS = ("instance", "group", "batch", "none")
#: Output heads (``model.head``): a softmax over the classes, or one sigmoid per evaluation
#: region (region-based training, nnU-Net's ``regions_class_order``).
HEADS = ("softmax", "regions")
#: ``model.head`` of a model group without one (a model of your own): the class softmax.
DEFAULT_HEAD = "softmax"
#: ``model.num_regions`` when a model group has none: BraTS's WT, TC and ET.
DEFAULT_NUM_REGIONS = 3
#: Units of the post-processing's ET volume threshold (``postprocess.unit``).
VOLUME_UNITS = ("voxels", "mm3")
#: Kernels of the U-Net's class-logit convolution (3: the reference's published head).
HEAD_KERNELS = (1, 3)
#: Built-in losses (``loss.name`` of ``loss=default``).
LOSSES = ("dice+ce", "dice", "ce")
#: Built-in learning-rate schedules (``training.lr_schedule``).
LR_SCHEDULES = ("constant", "cosine")
BLENDS = ("gaussian", "constant")
#: Engines that run the network on the windows (``inference.engine``; unet3d/inference/engines.py):
#: ``auto`` the fastest installed here by a short probe, cached per host.
INFERENCE_ENGINES = ("auto", "tensorflow", "openvino", "onnxruntime", "openvino_int8")
#: Formats ``mode=export`` writes (``export.formats``).
EXPORT_FORMATS = ("onnx", "openvino", "saved_model", "openvino_int8")
BENCHMARK_TARGETS = ("train", "predict", "pipeline", "runner")
#: Layouts the synthetic data set writes (``data.synthetic.layout``): ``flat`` BraTS 2019 names
#: in <case>/ folders, ``brats2019`` the same under HGG/ and LGG/, ``brats2021`` flat with BraTS
#: 2021 ids, and the layouts and labels of
#: ``conf/data/{brats2023,brats2024_post,msd_brain,nnunet_raw}.yaml``.
SYNTHETIC_LAYOUTS = ("flat", "brats2019", "brats2021", "brats2023", "brats2024_post",
                     "msd_brain", "nnunet_raw")
#: Lesion-wise rules (``evaluation.lesionwise``): ``auto`` from the data set's convention,
#: the BraTS 2023 (GLI/SSA/PED, MEN, MET) and 2024 (post-treatment GLI) scripts' rules, the
#: ``brats-evaluation`` package's (2025), or none (unet3d/evaluation/lesionwise.py).
LESIONWISE_RULES = ("auto", "off", "brats2023", "brats2023_men", "brats2023_met", "brats2024",
                    "brats2025")

# ---- the built-in components ------------------------------------------------------------------

UNET3D_TARGET = "unet3d.model.unet3d.build_unet3d"
SEGMENTATION_LOSS_TARGET = "unet3d.training.losses.SegmentationLoss"
REGION_LOSS_TARGET = "unet3d.training.region_loss.RegionLoss"
LR_SCHEDULE_TARGET = "unet3d.training.optimizer.learning_rate_schedule"
SYNTHETIC_DATASET_TARGET = "unet3d.data.datasets.SyntheticBraTS"
BRATS_FOLDER_TARGET = "unet3d.data.datasets.BraTSFolder"
#: Keys of the ``data`` group that the framework reads (preprocessing cache, training input);
#: the data set's ``_target_`` is called with every other key of the group.
DATA_PIPELINE_KEYS = ("name", "preprocessed_dir", "crop_size", "batch_size", "augment",
                      "augmentation", "foreground_probability", "shuffle_buffer", "cache",
                      "preprocess_workers",
                      # the layout and label convention (unet3d/data/layouts/resolve.py)
                      "reader", "convention", "labels", "regions", "region_order")
