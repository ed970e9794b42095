"""The base experiment configuration. An experiment's `config.py` subclasses `Config` and sets
only what differs; a field the base does not define (a misspelling, a removed option) is an
error naming it. Defaults are the original's ps_roialign experiment (docs/original.md#config), so
ported experiments stay short.
"""
import difflib
import getpass
import importlib.util
import inspect
import os
import sys

COCO_CLASS_NAMES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")

# The value of `class_names` that takes the classes from the training json (Config.class_names).
FROM_ANNOTATIONS = "from_annotations"

# 8192 x 8192: far above the photos detectors are trained on (COCO's are at most 640 x 640), far
# below the 23170 x 23170 a 65 KB PNG can declare. A decoded image takes 3 bytes per pixel.
DEFAULT_MAX_IMAGE_PIXELS = 1 << 26

# What the main job (`make demo`, scripts/run_main_job.py) trains by default, relative to the
# repository root: ThunderNet SNet146 on the synthetic set (docs/main_job.md).
MAIN_JOB_EXPERIMENT = "experiments/lhrcnn/thundernet.snet146.synthetic"


class Config:
    """Experiment configuration: class attributes are the fields; subclasses override them.

    `Config(**overrides)` (or a subclass) checks every field against the base: unknown names
    raise ValueError with the closest known field.
    """

    # --- bookkeeping
    experiment_name = None          # defaults to the experiment folder's name
    user = None                     # defaults to the experiment folder's parent (the original: the unix user)
    output_root = "output"          # outputs go to <output_root>/<user>/<experiment_name>/
    # Relative paths (output_root and the data paths below) are relative to the working directory.
    seed = 3                        # training: initial weights, in-graph sampling and data order; None: unseeded

    # --- data
    class_names = COCO_CLASS_NAMES  # index 0 = background; or FROM_ANNOTATIONS ("from_annotations"): "background"
                                    # + the train_annotations json's categories in id order (see resolve_class_names)
    train_annotations = "data/MSCOCO/instances_trainval35k2014.json"
    train_images = "data/MSCOCO/trainval2014"
    eval_annotations = "data/MSCOCO/instances_minival2014.json"
    eval_images = "data/MSCOCO/val2014"
    image_mean = (102.9801, 115.9465, 122.7717)  # BGR order, subtracted; no std scaling
    image_short_size = 800
    image_max_size = 1333
    eval_image_short_size = 800
    eval_image_max_size = 1333
    size_divisor = 32               # padded image sizes are multiples of this
    max_boxes_of_image = 100
    group_by_aspect_ratio = False   # training batches of landscape / portrait images apart (less padding)
    cache_decoded_images = False    # keep decoded training images in memory (small datasets only)
    max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS  # larger images (frames x height x width, read from the file's
                                    # header before decoding) are skipped by the data pipeline and refused by
                                    # the Predictor and the exported serve_bytes signature
    filter_gt_ignore_label = True   # drop crowd / ignored GT

    # --- parts, by registered name (lhrcnn.registry; the built-in ones: lhrcnn.builders)
    backbone = "resnet_v1_101"
    backbone_options = {"freeze_bn": True, "freeze_stem": True}
    neck = None                     # None, "cem" (ThunderNet's CEM) or "fpn" (feature pyramid on fpn_inputs)
    rpn_head = "standard"           # "standard" (3x3 conv) or "compressed" (ThunderNet: 5x5 depthwise + 1x1)
    rpn_feature = "C4"              # feature the RPN sits on; a tuple of names: an FPN's levels, one shared head
    head_feature = "C5"             # feature the thin map (or R-FCN head) sits on
    feature_stride = 16

    # --- anchors and box coding
    anchor_base_size = 16
    anchor_scales = (2, 4, 8, 16, 32)
    anchor_ratios = (0.5, 1.0, 2.0)
    anchor_strides = None           # multi-level RPN: each level's true stride (also its base anchor's size)
    level_anchor_scales = None      # multi-level RPN: per level, the scales (anchor size / level stride)
    box_offset = 1.0                # the original's +1 width convention (0.0 for the modern one)
    box_delta_clip = None           # upper bound of decoded dw/dh (None: the original, no clamp; log(1000/16) is safe)

    # --- RPN
    rpn_channels = 512
    rpn_box_sigma = 3.0
    rpn_positive_overlap = 0.7
    rpn_negative_overlap = 0.3
    rpn_batch_size = 256
    rpn_fg_fraction = 0.5
    rpn_allowed_border = 0
    rpn_nms_threshold = 0.7
    train_rpn_pre_nms_top_n = 12000
    train_rpn_post_nms_top_n = 2000
    test_rpn_pre_nms_top_n = 6000
    test_rpn_post_nms_top_n = 1000

    # --- feature pyramid (head "fpn_2fc" / "double_head")
    fpn_inputs = None               # backbone features the FPN merges, e.g. ("C2", "C3", "C4", "C5")
    fpn_channels = 256
    fpn_extra_pool_level = False    # P6 = P5 subsampled by 2 (ResNet-FPN); DetNet has its own C6
    roi_levels = None               # levels RoIs are pooled from by the FPN rule, e.g. ("P2", "P3", "P4", "P5")
    roi_align_sampling_ratio = 2
    roi_align_aligned = True

    # --- R-CNN head
    head = "light_head"             # RoI heads: "light_head", "rfcn", "thundernet" (SAM + Light-Head subnet),
                                    # "fpn_2fc" (FPN / DetNet 2-fc) or "double_head"
    roi_pooling = "ps_roi_align"    # "ps_roi_align" (max, 2x2) or "ps_roi_pool"
    ps_group_size = 7
    ps_sampling_ratio = (2, 2)
    large_separable_kernel = 15
    large_separable_mid_channels = 256
    large_separable_out_channels = 490  # = ps_group_size² × 10
    rcnn_fc_channels = 2048
    thin_map_norm = None            # None: the original; "batch": BatchNorm before the thin map's ReLU
    head_initializer = None         # None: the original's N(0, 0.01) for the thin map and ps_fc_1; or e.g. "he_normal"
    rfcn_channels = 1024            # R-FCN's conv_new_1
    # Double-Head R-CNN (head "double_head"): conv-head widths and blocks, non-local option, the
    # conv-head's RoI enlargement, Ext (unfocused supervision + fused scores), loss weights
    # (conv-cls, conv-reg, fc-cls, fc-reg): Ext 0.5, 2.0, 1.4, 0.6; plain 0, 2.5, 2.0, 0.
    double_head_conv_channels = 1024
    double_head_conv_mid_channels = 256
    double_head_conv_blocks = 4
    double_head_non_local = False
    double_head_conv_roi_scale = 1.3
    double_head_ext = True
    double_head_loss_weights = (0.5, 2.0, 1.4, 0.6)
    class_specific_regression = True
    bbox_means = (0.0, 0.0, 0.0, 0.0)
    bbox_stds = (0.1, 0.1, 0.2, 0.2)
    roi_batch_size_per_image = -1   # -1: every proposal + GT (the original), else sampled
    roi_fg_fraction = 0.25
    roi_fg_threshold = 0.5
    roi_bg_threshold_high = 0.5
    roi_bg_threshold_low = 0.0
    roi_append_gt = True
    ohem_top_k = 512                # per replica (the original's per-GPU 256 x 2); 0 disables OHEM
    loss_normalization = "replica"  # "replica": losses/OHEM over a replica's images together (the original's
                                    # towers); "image": per image, then averaged (replica-count invariant)
    rcnn_box_loss_weight = 2.0
    gradient_multipliers = {"conv_new": 3.0}  # variable-name substring -> gradient scale

    # --- test
    test_nms = 0.5
    test_score_threshold = 0.0      # detections scoring above it are kept (score > S, everywhere: the original's rule)
    test_max_detections = 100

    # --- training
    train_batch_per_gpu = 2
    basic_lr = 5e-4 * 2 * 1.25      # per replica; lr = basic_lr x replicas
    optimizer = "momentum"          # "momentum" (the original: SGD + momentum) | "adam"
    momentum = 0.9                  # SGD momentum; Adam's beta_1 when optimizer == "adam"
    weight_decay = 1e-4
    nr_image_per_epoch = 80000
    max_epoch = 30
    warmup_iters = 500
    warmup_factor = 1.0 / 3.0
    lr_stages = ((19, 1.0), (25, 0.1), (30, 0.01))  # (end epoch, lr factor)
    ema_decay = 0.0                 # > 0 keeps an exponential moving average of the weights
    precise_bn_batches = 0          # > 0: recompute trained BNs' statistics over this many batches at the end
    gradient_clip_norm = None       # clip the global gradient norm (None: the original, no clipping)
    # tf.distribute / speed options
    sync_batch_norm = False         # trained BNs use the global batch's statistics (all replicas)
    mixed_precision = None          # None | "mixed_float16" (GPU; dynamic loss scaling) | "mixed_bfloat16":
                                    # the backbone computes in half precision, heads and losses in float32
    jit_compile = False             # compile the backbone (forward and backward) with XLA
    ops_backend = None              # None | "custom" | "tf" for the custom ops
    depthwise_filter_grad = "tf"    # "custom": the depthwise layers' filter gradients by the compiled op (CPU)

    def __init__(self, **overrides):
        known = self.known_fields()
        for cls in type(self).__mro__:
            if cls is Config or cls is object:
                continue
            for name in vars(cls):
                if name.startswith("_") or inspect.isroutine(vars(cls)[name]) or isinstance(vars(cls)[name], (property, classmethod, staticmethod)):
                    continue
                if name not in known:
                    raise ValueError(self._unknown_message(name, f"{cls.__module__}.{cls.__qualname__}"))
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(self._unknown_message(name, "overrides"))
            setattr(self, name, value)
        self.class_names_source = None  # the json the class names were read from (FROM_ANNOTATIONS), else None
        if isinstance(self.class_names, str):
            self.resolve_class_names()
        self.validate()

    @classmethod
    def known_fields(cls):
        return {name for name, value in vars(Config).items()
                if not name.startswith("_") and not inspect.isroutine(value)
                and not isinstance(value, (property, classmethod, staticmethod))}

    @classmethod
    def _unknown_message(cls, name, where):
        close = difflib.get_close_matches(name, sorted(cls.known_fields()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown config field {name!r} in {where}{hint}"

    def resolve_class_names(self):
        """class_names = FROM_ANNOTATIONS: sets `class_names` to "background" followed by the
        categories of the train_annotations json in id order (lhrcnn.data.coco.
        class_names_from_annotations), and `class_names_source` to that file. Without that file
        (e.g. testing or exporting where only the eval set is), the eval_annotations json's
        categories are used. Paths are config paths (relative to the working directory).
        Called by the constructor, after the overrides; ValueError naming the files when neither
        exists, or for any other string."""
        if self.class_names != FROM_ANNOTATIONS:
            raise ValueError(f"config: class_names must be a sequence of names (index 0 = background) or "
                             f"{FROM_ANNOTATIONS!r}, got {self.class_names!r}")
        from lhrcnn.data.coco import class_names_from_annotations
        from lhrcnn.paths import config_path
        tried = []
        for field in ("train_annotations", "eval_annotations"):
            path = getattr(self, field)
            if not path:
                continue
            path = config_path(path)
            if os.path.isfile(path):
                self.class_names = class_names_from_annotations(path)
                self.class_names_source = path
                return self.class_names
            tried.append(f"{field} {path}")
        missing = " and no ".join(tried) if tried else "annotation file set"
        raise ValueError(f"config: class_names = {FROM_ANNOTATIONS!r} reads the classes from the training json, but "
                         f"there is no {missing}; write it, point train_annotations at your json "
                         f"(--set train_annotations=PATH) or list class_names")

    @property
    def num_classes(self):
        """Classes including the background (index 0)."""
        return len(self.class_names)

    @property
    def num_anchors(self):
        """Anchors per cell (per cell of every level for a multi-level RPN)."""
        scales = self.level_anchor_scales[0] if self.level_anchor_scales else self.anchor_scales
        return len(scales) * len(self.anchor_ratios)

    @property
    def multi_level_rpn(self):
        return isinstance(self.rpn_feature, (tuple, list))

    def validate(self):
        """Checks values whose mistakes would otherwise surface deep inside the graph."""
        def need(cond, msg):
            if not cond:
                raise ValueError(f"config: {msg}")
        for part in ("backbone", "rpn_head", "head"):  # names are looked up in the registries at build time
            need(isinstance(getattr(self, part), str) and getattr(self, part),
                 f"{part} must be a registered name, got {getattr(self, part)!r}")
        need(self.neck is None or (isinstance(self.neck, str) and self.neck),
             f"neck must be None or a registered name, got {self.neck!r}")
        if self.multi_level_rpn:
            levels = len(self.rpn_feature)
            need(self.anchor_strides is not None and len(self.anchor_strides) == levels,
                 f"a multi-level rpn_feature {tuple(self.rpn_feature)} needs anchor_strides with one stride per "
                 f"level, got {self.anchor_strides!r}")
            need(self.level_anchor_scales is not None and len(self.level_anchor_scales) == levels
                 and len({len(s) for s in self.level_anchor_scales}) == 1,
                 f"a multi-level rpn_feature needs level_anchor_scales: one tuple of scales per level, all the "
                 f"same length (one shared RPN head), got {self.level_anchor_scales!r}")
        if self.head in ("fpn_2fc", "double_head"):
            need(bool(self.roi_levels), f"head {self.head!r} needs roi_levels (the pyramid levels RoIs are pooled from)")
        if self.head == "double_head":
            need(self.ohem_top_k == 0, "head 'double_head' trains on sampled RoIs: set ohem_top_k = 0 and "
                 "roi_batch_size_per_image (e.g. 512)")
            need(len(self.double_head_loss_weights) == 4,
                 "double_head_loss_weights must be (conv-cls, conv-reg, fc-cls, fc-reg)")
            need(self.double_head_ext or (self.double_head_loss_weights[0] == 0 and self.double_head_loss_weights[3] == 0),
                 "without double_head_ext there is no conv-head classifier or fc-head regressor: their loss "
                 f"weights must be 0, got {self.double_head_loss_weights}")
        need(self.roi_pooling in ("ps_roi_align", "ps_roi_pool"),
             f"roi_pooling must be 'ps_roi_align' or 'ps_roi_pool', got {self.roi_pooling!r}")
        need(len(self.class_names) >= 2, "class_names needs the background and at least one class")
        need(self.large_separable_out_channels % (self.ps_group_size ** 2) == 0,
             f"large_separable_out_channels ({self.large_separable_out_channels}) must be divisible by "
             f"ps_group_size² ({self.ps_group_size ** 2})")
        need(self.ops_backend in (None, "custom", "tf"), f"ops_backend must be None, 'custom' or 'tf'")
        need(_is_integer(self.max_image_pixels) and self.max_image_pixels >= 1,
             f"max_image_pixels must be a positive integer, got {self.max_image_pixels!r}")
        need(self.seed is None or (_is_integer(self.seed) and 0 <= self.seed < 2 ** 32),
             f"seed must be None or an integer in [0, 2**32), got {self.seed!r}")
        need(self.optimizer in ("momentum", "adam"), f"optimizer must be 'momentum' or 'adam', got {self.optimizer!r}")
        need(int(self.precise_bn_batches) >= 0, "precise_bn_batches must be >= 0")
        need(self.train_batch_per_gpu >= 1, "train_batch_per_gpu must be >= 1")
        need(self.box_offset in (0.0, 1.0), "box_offset must be 0.0 or 1.0")
        need(self.loss_normalization in ("replica", "image"),
             f"loss_normalization must be 'replica' or 'image', got {self.loss_normalization!r}")
        need(self.depthwise_filter_grad in ("tf", "custom"),
             f"depthwise_filter_grad must be 'tf' or 'custom', got {self.depthwise_filter_grad!r}")
        need(self.mixed_precision in (None, "mixed_float16", "mixed_bfloat16"),
             f"mixed_precision must be None, 'mixed_float16' or 'mixed_bfloat16', got {self.mixed_precision!r}")

    def output_dir(self, experiment_dir=None):
        experiment_dir = experiment_dir or getattr(self, "experiment_dir", None) or "."
        name = self.experiment_name or os.path.basename(os.path.abspath(experiment_dir))
        user = self.user or os.path.basename(os.path.dirname(os.path.abspath(experiment_dir))) or getpass.getuser()
        return os.path.join(self.output_root, user, name)


def _is_integer(value):
    """A Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _import_file(path, module_name):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _module_name(experiment_dir, file):
    key = os.path.abspath(experiment_dir).replace(os.sep, "_").replace(".", "_").replace("-", "_")
    return f"lhrcnn_experiment{key}_{file}"


def _config_class(module, experiment_dir):
    """The one Config subclass an experiment's config.py defines (not one it imports)."""
    classes = [v for v in vars(module).values()
               if inspect.isclass(v) and issubclass(v, Config) and v.__module__ == module.__name__]
    if len(classes) != 1:
        raise ValueError(f"{experiment_dir}/config.py must define exactly one Config subclass, found "
                         f"{[c.__name__ for c in classes]}")
    return classes[0]


def load_config_class(experiment_dir):
    """The Config subclass that `<experiment_dir>/config.py` defines, not instantiated: its class
    attributes as written (class_names may still be FROM_ANNOTATIONS; no file it names is read)."""
    if not os.path.isdir(experiment_dir):
        raise FileNotFoundError(f"experiment directory {experiment_dir} does not exist")
    module = _import_file(os.path.join(experiment_dir, "config.py"), _module_name(experiment_dir, "config"))
    return _config_class(module, experiment_dir)


def load_config(experiment_dir, **overrides):
    """The experiment's Config instance from `<experiment_dir>/config.py` (class_names =
    FROM_ANNOTATIONS resolved: Config.resolve_class_names)."""
    config = load_config_class(experiment_dir)(**overrides)
    config.experiment_dir = os.path.abspath(experiment_dir)
    return config


def base_experiment_config(this_file, experiment):
    """The Config class of a sibling experiment, for an experiment's config.py to extend:
    `class ExperimentConfig(base_experiment_config(__file__, "thundernet.snet146.coco")): ...`
    (`experiment`: a folder next to this_file's folder)."""
    directory = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(this_file))), experiment)
    module = _import_file(os.path.join(directory, "config.py"), _module_name(directory, "base_config"))
    return _config_class(module, directory)


def load_network_module(experiment_dir):
    """The experiment's `network_desp` module (it defines `build_network(config)`)."""
    return _import_file(os.path.join(experiment_dir, "network_desp.py"), _module_name(experiment_dir, "network_desp"))
