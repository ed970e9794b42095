"""The original network as a TF1 graph, written from docs/original.md (the network sections,
#xception-backbone, #checkpoints for the variable names, #anchors, #box-coding, #proposals and
#post-processing), not from lhrcnn: plain `tf.compat.v1` variables named as slim names them,
slim's computations spelled out with `tf.compat.v1` ops (conv2d_same, fused batch norm with
is_training=False, separable_conv2d, fully connected layers), and lhrcnn's compiled PS-RoI ops
standing in for the original's GPU kernels (they are checked against the original's semantics in
tests/ops/test_ops_roi_pooling.py).

`OriginalNetwork(...)` builds the test graph (batch 1, as the original's test.py) with random
weights and non-trivial BatchNorm statistics, optionally with the original trainer's state
(MomentumOptimizer slots, EMA shadows, float32 `global_step`, the LR `Variable`) or the slim
ImageNet extras (`logits`, int64 `global_step`), and saves it with a plain `tf.train.Saver`.
"""
import numpy as np
import tensorflow as tf

from lhrcnn import ops

tf1 = tf.compat.v1

SCOPES = {"resnet_v1_50": "resnet_v1_50", "resnet_v1_101": "resnet_v1_101", "xception_star": "resnet_v1_xception"}
# Units per block; each unit's (depth, bottleneck, stride, rate) in resnet_units, the original's placement
# (docs/original.md#resnet-v1-backbone).
RESNET_BLOCKS = {
    "resnet_v1_50": (3, 4, 6, 3), "resnet_v1_101": (3, 4, 23, 3)}
BBOX_STDS = np.array([0.1, 0.1, 0.2, 0.2])


def resnet_units(name):
    n1, n2, n3, n4 = RESNET_BLOCKS[name]
    return [[(256, 64, 1, 1)] * n1,
            [(512, 128, 2, 1)] + [(512, 128, 1, 1)] * (n2 - 1),
            [(1024, 256, 2, 1)] + [(1024, 256, 1, 1)] * (n3 - 1),
            [(2048, 512, 1, 2)] * n4]


XCEPTION_UNITS = [[(144, 24, 2, 1)] + [(144, 24, 1, 1)] * 3,  # docs/original.md#xception-backbone
                  [(288, 144, 2, 1)] + [(288, 144, 1, 1)] * 7,
                  [(576, 288, 1, 1)] + [(576, 288, 1, 1)] * 3]


# ----------------------------------------------------------------------------- boxes

def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(2, 4, 8, 16, 32)):
    """py-faster-rcnn anchors (docs/original.md#anchors), ratio-major."""
    ctr = (base_size - 1) / 2.0
    out = []
    for r in ratios:
        ws = np.round(np.sqrt(base_size * base_size / r))
        hs = np.round(ws * r)
        for s in scales:
            w, h = ws * s, hs * s
            out.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)])
    return np.array(out, np.float32)


def shifted_anchors(height, width, stride=16, **kwargs):
    """[H·W·A, 4], index (y·W + x)·A + a (docs/original.md#anchors)."""
    base = generate_anchors(**kwargs)
    out = [base[a] + np.array([x, y, x, y]) * stride
           for y in range(height) for x in range(width) for a in range(len(base))]
    return np.array(out, np.float32)


def bbox_transform_inv_np(boxes, deltas):
    """docs/original.md#box-coding decode (+1 widths, x2 = cx + 0.5 w), numpy; boxes [N, 4],
    deltas [N, 4k]."""
    boxes = boxes.astype(np.float64)
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    dx, dy, dw, dh = (deltas[:, i::4].astype(np.float64) for i in range(4))
    pcx, pcy = dx * w[:, None] + cx[:, None], dy * h[:, None] + cy[:, None]
    pw, ph = np.exp(dw) * w[:, None], np.exp(dh) * h[:, None]
    out = np.zeros(deltas.shape)
    out[:, 0::4], out[:, 1::4] = pcx - 0.5 * pw, pcy - 0.5 * ph
    out[:, 2::4], out[:, 3::4] = pcx + 0.5 * pw, pcy + 0.5 * ph
    return out


def cython_nms(dets, thresh):
    """py-faster-rcnn cpu_nms (docs/original.md#nms): by descending score, +1 areas, suppress IoU >= thresh.
    Exactly equal scores (PSROIPool gives them to RoIs that round to the same pixels) are visited
    lower index first; the original's `scores.argsort()[::-1]` leaves their order to numpy's
    unstable sort."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou < thresh]
    return keep


def postprocess_detections(cls_prob, bbox_pred, rois, im_info, nms_thresh, max_per_image=100, score_thresh=0.0):
    """test.py's post-processing (docs/original.md#post-processing) of one image: -> (boxes [K, 4],
    scores [K], classes [K]), by descending score."""
    scale = im_info[2]
    boxes = rois[:, 1:5] / scale
    pred = bbox_transform_inv_np(boxes, bbox_pred)
    pred[:, 0::2] = np.clip(pred[:, 0::2], 0, im_info[4] - 1)
    pred[:, 1::2] = np.clip(pred[:, 1::2], 0, im_info[3] - 1)
    out = []
    for j in range(1, cls_prob.shape[1]):
        inds = np.where(cls_prob[:, j] > score_thresh)[0]
        dets = np.hstack([pred[inds, 4 * j:4 * j + 4], cls_prob[inds, j:j + 1]])
        for k in cython_nms(dets, nms_thresh):
            out.append((*dets[k], j))
    out = np.array(out).reshape(-1, 6)
    out = out[np.argsort(-out[:, 4], kind="stable")][:max_per_image]
    return out[:, :4], out[:, 4], out[:, 5].astype(np.int64)


# ----------------------------------------------------------------------------- the graph

class OriginalNetwork:
    """The original test graph for one image of `height` x `width` (fixed, so anchors are
    constants). `tensors` holds C2..C5, rpn_cls_score, rpn_bbox_pred, rois, the thin map
    (`ps_fm`) or the R-FCN maps, cls_score, bbox_fc (raw deltas), cls_prob, bbox_pred
    (de-normalised); `rois` can be fed to evaluate the head on given RoIs.

    head: "light_head", "rfcn" or None (ImageNet backbone: adds `logits` and an int64
    global_step instead of the detector's training state).
    """

    def __init__(self, backbone="resnet_v1_101", head="light_head", pooling="ps_roi_align", num_classes=81,
                 rpn_channels=512, mid_channels=256, height=64, width=96, training_state=True, seed=0,
                 checkpoint=None):
        """`checkpoint`: restore the variables from this prefix instead of initialising them."""
        self.backbone, self.head, self.pooling, self.num_classes = backbone, head, pooling, num_classes
        self.scope = SCOPES[backbone]
        self.height, self.width = height, width
        self.rng = np.random.default_rng(seed)
        self.graph = tf.Graph()
        self.shadow_assigns = []
        with self.graph.as_default():
            tf1.set_random_seed(seed)
            self.image = tf1.placeholder(tf.float32, [1, height, width, 3], name="data")
            self.im_info = tf1.placeholder(tf.float32, [1, 6], name="im_info")
            self.tensors = {}
            self._build(rpn_channels, mid_channels)
            self.model_variables = {v.op.name: v.shape.as_list() for v in tf1.global_variables()}
            self.trainable_names = {v.op.name for v in tf1.trainable_variables()}
            if head is None:
                with tf1.variable_scope(self.scope):
                    self._fc_variables("logits", [1, 1, self.tensors["C5"].shape[-1], 1000], 0.01)
                tf1.get_variable("global_step", [], tf.int64, tf1.zeros_initializer(), trainable=False)
            elif training_state:
                self._training_state()
            self.saver = tf1.train.Saver()
            self.session = tf1.Session(graph=self.graph)
            if checkpoint is not None:
                self.saver.restore(self.session, checkpoint)
            else:
                self.session.run(tf1.global_variables_initializer())
                self.session.run(self.shadow_assigns)

    # ------------------------------------------------------------------ variables
    def _variable(self, name, shape, initializer, trainable):
        return tf1.get_variable(name, shape, tf.float32, initializer, trainable=trainable)

    def _fc_variables(self, scope, shape, std, trainable=True):
        with tf1.variable_scope(scope):
            w = self._variable("weights", shape, tf1.random_normal_initializer(0.0, std), trainable)
            b = self._variable("biases", shape[-1:], tf1.random_normal_initializer(0.0, 0.1), trainable)
        return w, b

    def _batch_norm(self, y):
        """slim batch_norm(is_training=False, scale, center, eps 1e-5) with random statistics."""
        depth = y.shape[-1]
        with tf1.variable_scope("BatchNorm"):
            beta = self._variable("beta", [depth], tf1.random_normal_initializer(0.0, 0.2), False)
            gamma = self._variable("gamma", [depth], tf1.random_uniform_initializer(0.4, 0.8), False)
            mean = self._variable("moving_mean", [depth], tf1.random_normal_initializer(0.0, 0.2), False)
            var = self._variable("moving_variance", [depth], tf1.random_uniform_initializer(0.5, 2.0), False)
        y, _, _ = tf1.nn.fused_batch_norm(y, gamma, beta, mean, var, epsilon=1e-5, is_training=False)
        return y

    # ------------------------------------------------------------------ slim layers
    def conv_bn(self, x, scope, depth, k, stride=1, rate=1, relu=True, trainable=True):
        """slim conv2d (no bias) + BatchNorm (+ ReLU); k > 1 with stride > 1 is conv2d_same's
        explicit symmetric padding then VALID, otherwise SAME (docs/original.md#resnet-v1-backbone)."""
        cin = int(x.shape[-1])
        with tf1.variable_scope(scope):
            std = np.sqrt(2.0 / (k * k * cin))  # He init
            w = self._variable("weights", [k, k, cin, depth], tf1.truncated_normal_initializer(0.0, std), trainable)
            if k > 1 and stride > 1:
                total = k + (k - 1) * (rate - 1) - 1
                x = tf.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])
                y = tf1.nn.conv2d(x, w, [1, stride, stride, 1], "VALID")
            else:
                y = tf1.nn.conv2d(x, w, [1, stride, stride, 1], "SAME", dilations=[1, rate, rate, 1])
            y = self._batch_norm(y)
        return tf.nn.relu(y) if relu else y

    def conv_bias(self, x, scope, depth, kh, kw, std, relu, padding="SAME"):
        """slim conv2d with biases, no normaliser (the heads)."""
        w, b = self._fc_variables(scope, [kh, kw, int(x.shape[-1]), depth], std)
        y = tf.nn.bias_add(tf1.nn.conv2d(x, w, [1, 1, 1, 1], padding), b)
        return tf.nn.relu(y) if relu else y

    def fully_connected(self, x, scope, depth, std, relu):
        w, b = self._fc_variables(scope, [int(x.shape[-1]), depth], std)
        y = tf.nn.bias_add(tf.matmul(x, w), b)
        return tf.nn.relu(y) if relu else y

    def bottleneck(self, x, depth, bottleneck, stride, rate, trainable):
        """slim bottleneck_v1 (docs/original.md#resnet-v1-backbone) or geonseoks' separable unit
        (#xception-backbone) under bottleneck_v1/."""
        with tf1.variable_scope("bottleneck_v1"):
            if int(x.shape[-1]) == depth:
                shortcut = x if stride == 1 else tf1.nn.max_pool(x, [1, 1, 1, 1], [1, stride, stride, 1], "SAME")
            else:
                shortcut = self.conv_bn(x, "shortcut", depth, 1, stride, relu=False, trainable=trainable)
            r = self.conv_bn(x, "conv1", bottleneck, 1, trainable=trainable)
            if self.backbone == "xception_star":
                with tf1.variable_scope("dws_conv2"):  # slim separable_conv2d defaults: bias, ReLU, SAME
                    c = int(r.shape[-1])
                    dw = self._variable("depthwise_weights", [3, 3, c, 1],
                                        tf1.truncated_normal_initializer(0.0, np.sqrt(2.0 / 9)), True)
                    pw = self._variable("pointwise_weights", [1, 1, c, bottleneck],
                                        tf1.truncated_normal_initializer(0.0, np.sqrt(2.0 / c)), True)
                    b = self._variable("biases", [bottleneck], tf1.random_normal_initializer(0.0, 0.1), True)
                    r = tf1.nn.separable_conv2d(r, dw, pw, [1, stride, stride, 1], "SAME")
                    r = tf.nn.relu(tf.nn.bias_add(r, b))
            else:
                r = self.conv_bn(r, "conv2", bottleneck, 3, stride, rate, trainable=trainable)
            r = self.conv_bn(r, "conv3", depth, 1, relu=False, trainable=trainable)
            return tf.nn.relu(shortcut + r)

    # ------------------------------------------------------------------ network
    def _build(self, rpn_channels, mid_channels):
        t = self.tensors
        xception = self.backbone == "xception_star"
        with tf1.variable_scope(self.scope):
            x = self.conv_bn(self.image, "conv1", 24 if xception else 64, 3 if xception else 7, 2, trainable=False)
            x = tf1.nn.max_pool(x, [1, 3, 3, 1], [1, 2, 2, 1], "SAME")
            features = ["C3", "C4", "C5"] if xception else ["C2", "C3", "C4", "C5"]
            if xception:
                t["C2"] = x
            for b, units in enumerate(XCEPTION_UNITS if xception else resnet_units(self.backbone), start=1):
                with tf1.variable_scope(f"block{b}"):
                    for u, (depth, bottleneck, stride, rate) in enumerate(units, start=1):
                        with tf1.variable_scope(f"unit_{u}"):
                            x = self.bottleneck(x, depth, bottleneck, stride, rate, trainable=b > 1)
                t[features[b - 1]] = x
            if self.head is not None:
                self._heads(t["C4"], t["C5"], rpn_channels, mid_channels)

    def _heads(self, rpn_input, head_input, rpn_channels, mid_channels):
        t, a = self.tensors, 15
        rpn = self.conv_bias(rpn_input, "rpn_conv/3x3", rpn_channels, 3, 3, 0.01, True)
        t["rpn_cls_score"] = self.conv_bias(rpn, "rpn_cls_score", 2 * a, 1, 1, 0.01, False, "VALID")
        t["rpn_bbox_pred"] = self.conv_bias(rpn, "rpn_bbox_pred", 4 * a, 1, 1, 0.002, False, "VALID")
        t["rois"] = tf1.placeholder_with_default(self._proposals(), [None, 5], name="rois")
        rois, c = t["rois"], self.num_classes
        if self.head == "light_head":
            k, n = 15, 490  # global_context_module (docs/original.md#large-separable-convolution)
            w = self.conv_bias(self.conv_bias(head_input, "conv_new_1_conv15_w_pre", mid_channels, k, 1, 0.01, False),
                               "conv_new_1_conv15_w", n, 1, k, 0.01, False)
            h = self.conv_bias(self.conv_bias(head_input, "conv_new_1_conv15_h_pre", mid_channels, 1, k, 0.01, False),
                               "conv_new_1_conv15_h", n, k, 1, 0.01, False)
            t["ps_fm"] = tf.nn.relu(w + h)
            if self.pooling == "ps_roi_align":
                pooled = ops.ps_roi_align(t["ps_fm"], rois, 7, 1.0 / 16, (2, 2), "max", backend="custom")
            else:
                pooled = ops.ps_roi_pool(t["ps_fm"], rois, 7, 1.0 / 16, backend="custom")
            flat = tf.reshape(pooled, [-1, 490])  # slim.flatten: (ph, pw, k) order
            fc = self.fully_connected(flat, "ps_fc_1", 2048, 0.05, True)
            t["cls_score"] = self.fully_connected(fc, "cls_fc", c, 0.1, False)
            t["bbox_fc"] = self.fully_connected(fc, "bbox_fc", 4 * c, 0.01, False)
        else:  # R-FCN (docs/original.md#r-fcn-head)
            conv_new = self.conv_bias(head_input, "conv_new_1", 1024, 1, 1, 0.02, True)
            t["rfcn_cls"] = self.conv_bias(conv_new, "rfcn_cls", 49 * c, 1, 1, 0.1, False)
            t["rfcn_bbox"] = self.conv_bias(conv_new, "rfcn_bbox", 49 * 4, 1, 1, 0.01, False)
            pool = lambda m: ops.ps_roi_pool(m, rois, 7, 1.0 / 16, backend="custom")  # noqa: E731
            t["cls_score"] = tf.reduce_mean(pool(t["rfcn_cls"]), axis=[1, 2])
            t["bbox_fc"] = tf.tile(tf.reduce_mean(pool(t["rfcn_bbox"]), axis=[1, 2]), [1, c])
        t["cls_prob"] = tf.nn.softmax(t["cls_score"])
        t["bbox_pred"] = t["bbox_fc"] * np.tile(BBOX_STDS, c).astype(np.float32)  # means are 0

    def _proposals(self, pre_nms=6000, post_nms=1000, nms_thresh=0.7):
        """proposal_opr in TEST mode (docs/original.md#proposals), batch 1; top_k of min(pre_nms, #anchors)."""
        t = self.tensors
        prob = tf.reshape(tf.nn.softmax(tf.reshape(t["rpn_cls_score"], [-1, 2])), tf.shape(t["rpn_cls_score"]))
        scores = tf.reshape(prob, [1, -1, 2])[0, :, 1]
        deltas = tf.reshape(t["rpn_bbox_pred"], [1, -1, 4])[0]
        fh, fw = int(t["rpn_cls_score"].shape[1]), int(t["rpn_cls_score"].shape[2])
        anchors = tf.constant(shifted_anchors(fh, fw))
        w = anchors[:, 2] - anchors[:, 0] + 1.0
        h = anchors[:, 3] - anchors[:, 1] + 1.0
        cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
        pcx, pcy = deltas[:, 0] * w + cx, deltas[:, 1] * h + cy
        pw, ph = tf.exp(deltas[:, 2]) * w, tf.exp(deltas[:, 3]) * h
        im_h, im_w = self.im_info[0, 0], self.im_info[0, 1]
        boxes = tf.stack([tf.clip_by_value(pcx - 0.5 * pw, 0.0, im_w - 1), tf.clip_by_value(pcy - 0.5 * ph, 0.0, im_h - 1),
                          tf.clip_by_value(pcx + 0.5 * pw, 0.0, im_w - 1), tf.clip_by_value(pcy + 0.5 * ph, 0.0, im_h - 1)],
                         axis=1)
        order = tf.nn.top_k(scores, min(pre_nms, fh * fw * 15), sorted=True)[1]
        boxes, scores = tf.gather(boxes, order), tf.gather(scores, order)
        keep = tf.image.non_max_suppression(boxes + tf.constant([0.0, 0.0, 1.0, 1.0]), scores, post_nms, nms_thresh)
        boxes = tf.gather(boxes, keep)
        return tf.concat([tf.zeros_like(boxes[:, :1]), boxes], axis=1)

    def _training_state(self):
        """tools/train.py's state (docs/original.md#training-state): float32 global_step, the LR
        Variable, Momentum slots and EMA shadows of the trainable variables. Shadows are set apart
        from the raw weights."""
        trainable = tf1.trainable_variables()
        global_step = tf1.get_variable("global_step", [], tf.float32, tf1.constant_initializer(0.0), trainable=False)
        lr = tf1.Variable(0.01, trainable=False)  # unnamed: "Variable"
        optimizer = tf1.train.MomentumOptimizer(lr, 0.9)
        optimizer.apply_gradients([(tf.zeros_like(v), v) for v in trainable], global_step=global_step)
        ema = tf1.train.ExponentialMovingAverage(0.9999, num_updates=global_step)
        ema.apply(trainable)
        self.ema = ema
        for v in trainable:
            factor = tf1.random_uniform(v.shape, 0.8, 1.2, seed=int(self.rng.integers(1 << 30)))
            self.shadow_assigns.append(tf1.assign(ema.average(v), v * factor))

    # ------------------------------------------------------------------ use
    def im_info_row(self, scale, orig_h, orig_w):
        return np.array([[self.height, self.width, scale, orig_h, orig_w, 0]], np.float32)

    def run(self, names, image, im_info=None, rois=None):
        feed = {self.image: image}
        if im_info is not None:
            feed[self.im_info] = im_info
        if rois is not None:
            feed[self.tensors["rois"]] = rois
        return self.session.run({n: self.tensors[n] for n in names}, feed)

    def save(self, prefix, version="V2"):
        with self.graph.as_default():
            saver = self.saver if version == "V2" else tf1.train.Saver(write_version=tf1.train.SaverDef.V1)
            return saver.save(self.session, prefix, write_meta_graph=False)

    def restore(self, prefix):
        with self.graph.as_default():
            self.saver.restore(self.session, prefix)

    def restore_ema(self, prefix):
        """test.py restores raw weights; this restores the EMA shadows into the variables instead."""
        with self.graph.as_default():
            tf1.train.Saver(self.ema.variables_to_restore()).restore(self.session, prefix)
