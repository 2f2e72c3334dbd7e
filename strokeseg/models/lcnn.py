"""LCNN: the SEAN local path and a ResNeXt-50 32×4d global path, fused per pixel (hoangtung386).

Spec: ``docs/upstream-other-projects.md`` §A.2 (architecture v1), §A.3 (ver2 differences),
§A.4 (alignment losses) and §A.6 (porting notes). This is the ver2 "alignment first" design with
v1's ResNeXt global path, corrected where §A.6 says upstream is wrong.

Input (B, H, W, 3): three adjacent slices (centre ±1) as channels.

1. **Alignment** (§A.2.1, ver2 style). One CNN, shared by the three slices (``TimeDistributed``):
   conv 7×7 (32) → GroupNorm(4) → ReLU → max-pool 2 → conv 5×5 (32) → GroupNorm(4) → ReLU →
   max-pool 2 → adaptive average pool to 16×16 → dense 128 + ReLU → dropout 0.3 → dense 3 with
   zero kernel and bias → tanh × 0.2. Each slice gets ``[angle, tx, ty]``: angle in radians,
   shifts in normalised units (1 = half the image side); the zero head starts at the identity.
   :class:`RigidSliceWarp` resamples every slice with its own rigid transform by bilinear
   interpolation with border padding, written in ``keras.ops`` so the segmentation loss and the
   alignment losses both send gradients into the alignment CNN (v1 detached them, §A.2.1).
   Output pixel ``p`` samples the input at ``R(angle)·(p − c) + c + t`` in (x = column, y = row)
   pixel coordinates, ``c`` the image centre and ``t = (tx·(W−1)/2, ty·(H−1)/2)``. The rotation is
   done in pixels, so it stays rigid on non-square canvases (upstream rotates normalised
   coordinates, which shears anything but a square).
2. **SEAN local path** on the aligned stack seen as a volume (B, 3, H, W, 1). 3-D encoder, four
   blocks of [conv3D 3³ → BN → ReLU → spatial dropout 0.1 → conv3D 3³ → BN → ReLU] with
   64-128-256-512 channels, each followed by max-pool (1, 2, 2), in-plane only (§A.6; 2-D pooling
   applied per depth slice, since TF has no float16 MaxPool3D on CPU), so the depth of 3 reaches
   the bottleneck (conv3D 1024 ×2, spatial dropout 0.2 between) instead of collapsing after the
   first block. :class:`SymmetryEnhancedAttention` (§A.2.5) then attends, per partition of a P×Q
   grid, from the centre slice's queries to the keys/values of every slice in the same partition
   (self branch) and in the mirrored partition (symmetric branch), sums over slices, and returns a
   2-D map (LayerNorm → 1×1 conv → residual on the centre slice). The 2-D decoder has four blocks of
   [transposed conv 2×2 stride 2 → concat with the centre depth slice of the skip → conv 3×3-BN-ReLU
   ×2] and a 1×1 conv gives the local logit.
3. **Global path** (§A.2): the aligned centre slice → trainable 1×1 conv to 3 channels (weights
   1.0, no bias) → ResNeXt-50 32×4d built from grouped convolutions (stem 7×7/2 + max-pool 3×3/2,
   bottleneck stages [3, 4, 6, 3], stride on the 3×3 grouped conv). The last stage keeps stride 1
   and uses dilation 2, so the output stride is 16 rather than 32 and every canvas that is a
   multiple of 16 (208 = 16·13) works; the parameter count is unchanged. Head: transposed conv
   8×8 stride 4 (to H/4) → bilinear ×4 → global logit.
4. **Fusion** (§A.3 AdaptiveFusion): concat(global, local logits) → conv 3×3 (64) → ReLU → conv 1×1
   (2) → softmax = per-pixel weights; logit = w_g·global + w_l·local → sigmoid in float32.

Upstream's two-class softmax is replaced by one sigmoid channel per path (a two-class softmax is
the sigmoid of the logit difference), as every model of this package outputs P(lesion).

Mirror axis: in this package slices keep the volume's axis order (``strokeseg.data.planes``), so in
axial and coronal canvases the brain's left-right axis (NIfTI x) runs along the canvas *height*.
``mirror_axis="height"`` (default) therefore mirrors rows; ``"width"`` is upstream's convention
for its CT PNGs. Sagittal slices have no in-plane left-right symmetry: the symmetric branch and
the symmetry loss then only add a generic prior.

Partitions: the bottleneck is (H/16, W/16), 13×15 on the axial canvas, and 13 is prime. Unless
``partitions=(P, Q)`` is given, each side is cut into its largest divisor ≤ 4 parts (upstream's 4×4
grid on its 32×32 bottleneck), except that the mirrored side needs ≥ 2 parts for the mirror to
mean anything and takes its smallest divisor ≥ 2 when that largest divisor is 1. Axial 208×240
with mirror on the height: 13×3 partitions of 1×5 (row r attends to row 12 − r); sagittal 240×208:
3×1 of 5×13; coronal 208×208: 13×1 of 1×13; 512×512: 4×4 as upstream.

Options: ``width`` multiplies every channel count (ResNeXt: the cardinality, 32·width, keeps 4×2^s
channels per group), ``partitions``, ``mirror_axis``. Canonical build: (208, 240, 3), width 1.0:
96,138,154 parameters (96,058,154 trainable) = local 72,957,604 (of which the alignment CNN
1,076,451) + global 23,179,204 (ResNeXt-50 32×4d backbone 22,979,904 trainable, exactly
torchvision's without its classifier, + 68,224 batch-norm statistics + the 1×1 to-RGB conv and the
head) + fusion 1,346. The count does not depend on H and W. No published count exists for this
redesign.

Alignment losses (§A.4, ver2 symmetry term) are plain ``keras.ops`` functions, no ``add_loss``::

    probabilities, aligned, params = training_model(model)(x, training=True)
    terms = alignment_losses(x, aligned, params, mirror_axis="height")
    total = segmentation + 0.05 * sum(ALIGNMENT_WEIGHTS[k] * terms[k] for k in terms)

``training_model(model)`` and ``alignment_model(model)`` are views of the same layers (shared
weights); use the former in a custom train step so one forward pass gives everything (the latter
runs the alignment CNN again, with its own dropout draw). Pass the model's mirror axis,
``model.get_layer("symmetry_attention").mirror_axis``, to :func:`alignment_losses`.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from strokeseg.errors import ConfigError
from strokeseg.models import check_input_shape

CANONICAL_INPUT = (208, 240, 3)
CANONICAL_PARAMS = 96_138_154
SIZE_MULTIPLE = 16  # four in-plane poolings in SEAN; the ResNeXt path is dilated to output stride 16

SLICES = 3
ENCODER_FILTERS = (64, 128, 256, 512)
BOTTLENECK_FILTERS = 1024
RESNEXT_STAGES = (3, 4, 6, 3)
RESNEXT_CARDINALITY = 32
RESNEXT_GROUP_WIDTH = 4
ALIGN_LIMIT = 0.2           # tanh bound of angle (rad) and shifts (half-sides), ver2
ALIGN_POOL = 16             # the alignment CNN's adaptive pooling grid
ALIGNMENT_WEIGHTS = {"symmetry": 1.0, "regularisation": 0.1, "edge": 0.5}  # §A.4
MIRROR_AXES = {"height": 1, "width": 2}

# Initializers are made per layer, not shared module constants: an unseeded Keras initializer
# fixes its seed when constructed, so one made at import time ignores keras.utils.set_random_seed
# and gave different weights in every process.
def _conv_init():
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")  # Kaiming fan-out


def _dense_init():
    return keras.initializers.RandomNormal(stddev=0.01)


@keras.saving.register_keras_serializable(package="strokeseg")
class RigidSliceWarp(layers.Layer):
    """Warp each slice of (B, H, W, S) by its own rigid transform, params (B, S, 3) = angle, tx, ty.

    Computed in float32 (sub-pixel coordinates do not survive float16). Bilinear with border
    padding; identity parameters give back the input bit for bit.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        images, params = inputs
        _, height, width, slices = images.shape
        flat = ops.reshape(ops.transpose(images, (0, 3, 1, 2)), (-1, height * width))
        params = ops.reshape(params, (-1, 3))
        angle, tx, ty = params[:, 0:1], params[:, 1:2], params[:, 2:3]
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        u = ops.convert_to_tensor((cols.reshape(1, -1) - cx).astype("float32"))
        v = ops.convert_to_tensor((rows.reshape(1, -1) - cy).astype("float32"))
        cos, sin = ops.cos(angle), ops.sin(angle)
        # clipping the source coordinates is border padding (grid_sample padding_mode="border")
        xs = ops.clip(cos * u - sin * v + cx + tx * cx, 0.0, width - 1.0)
        ys = ops.clip(sin * u + cos * v + cy + ty * cy, 0.0, height - 1.0)
        # lower corner at most side-2 so the upper corner is always inside; weights reach 1 there
        x0 = ops.clip(ops.floor(xs), 0.0, width - 2.0)
        y0 = ops.clip(ops.floor(ys), 0.0, height - 2.0)
        wx, wy = xs - x0, ys - y0
        x0 = ops.cast(x0, "int32")
        y0 = ops.cast(y0, "int32")

        def at(dy, dx):
            return ops.take_along_axis(flat, (y0 + dy) * width + x0 + dx, axis=1)

        # (1 - w)·a + w·b rather than a + w·(b - a): exact at w = 0 and w = 1
        top = (1.0 - wx) * at(0, 0) + wx * at(0, 1)
        bottom = (1.0 - wx) * at(1, 0) + wx * at(1, 1)
        warped = (1.0 - wy) * top + wy * bottom
        return ops.transpose(ops.reshape(warped, (-1, slices, height, width)), (0, 2, 3, 1))

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])


@keras.saving.register_keras_serializable(package="strokeseg")
class SymmetryEnhancedAttention(layers.Layer):
    """SEA (§A.2.5) on (B, D, h, w, C) features; returns the centre slice's (B, h, w, C) map.

    Per partition of a P×Q grid, queries θ of the centre slice attend, for every slice t, to keys φ
    and values g of the same partition (self) and to keys φ and values h of the partition mirrored
    along ``mirror_axis`` (only the partition index is mirrored, not the pixels in it). Softmax is
    scaled by √key_dim and taken per slice; the results are summed over slices, concatenated
    (self, symmetric), layer-normalised, projected 1×1 back to C and added to the centre slice.
    """

    def __init__(self, partitions, mirror_axis="height", key_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.partitions = tuple(int(p) for p in partitions)
        self.mirror_axis = mirror_axis
        self.key_dim = key_dim
        if mirror_axis not in MIRROR_AXES:
            raise ConfigError(f"mirror_axis must be one of {sorted(MIRROR_AXES)}, got {mirror_axis!r}")

    def build(self, input_shape):
        _, depth, height, width, channels = input_shape
        rows, cols = self.partitions
        if height % rows or width % cols:
            raise ConfigError(f"SEA partitions {self.partitions} must divide the bottleneck "
                              f"{height}×{width}")
        key_dim = self.key_dim or channels // 2
        self.query = layers.Dense(key_dim, kernel_initializer=_conv_init(), name="theta")
        self.key = layers.Dense(key_dim, kernel_initializer=_conv_init(), name="phi")
        self.value_self = layers.Dense(key_dim, kernel_initializer=_conv_init(), name="g")
        self.value_mirror = layers.Dense(key_dim, kernel_initializer=_conv_init(), name="h")
        self.norm = layers.LayerNormalization(name="norm")
        self.project = layers.Dense(channels, kernel_initializer=_conv_init(), name="project")
        for dense in (self.query, self.key, self.value_self, self.value_mirror):
            dense.build((None, channels))
        self.norm.build((None, 2 * key_dim))
        self.project.build((None, 2 * key_dim))

    def _split(self, x):
        """(B, D, h, w, c) -> (B, D, P, Q, n, c) with n = (h/P)·(w/Q) positions per partition."""
        _, depth, height, width, channels = x.shape
        rows, cols = self.partitions
        x = ops.reshape(x, (-1, depth, rows, height // rows, cols, width // cols, channels))
        x = ops.transpose(x, (0, 1, 2, 4, 3, 5, 6))
        return ops.reshape(x, (-1, depth, rows, cols, (height // rows) * (width // cols), channels))

    def call(self, x):
        _, depth, height, width, _ = x.shape
        rows, cols = self.partitions
        centre = x[:, depth // 2]
        axis = 2 if self.mirror_axis == "height" else 3                  # partition row / column

        def partitions(t, mirror=False):
            t = self._split(t)
            if mirror:
                t = ops.flip(t, axis)
            # one partition axis: (B, D, P·Q, n, c), which keeps TF's softmax within 5 dims
            return ops.reshape(t, (-1, t.shape[1], rows * cols) + tuple(t.shape[4:]))

        queries = partitions(self.query(centre)[:, None])[:, 0]          # (B, PQ, n, k)
        keys = self.key(x)
        scale = 1.0 / math.sqrt(self.query.units)

        def attend(keys, values):
            logits = ops.einsum("bpnc,bdpmc->bdpnm", queries, keys) * scale
            weights = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), values.dtype)
            return ops.einsum("bdpnm,bdpmc->bpnc", weights, values)      # summed over slices

        out = ops.concatenate(
            [attend(partitions(keys), partitions(self.value_self(x))),
             attend(partitions(keys, mirror=True), partitions(self.value_mirror(x), mirror=True))],
            axis=-1)
        out = ops.reshape(out, (-1, rows, cols, height // rows, width // cols, out.shape[-1]))
        out = ops.reshape(ops.transpose(out, (0, 1, 3, 2, 4, 5)), (-1, height, width, out.shape[-1]))
        return centre + self.project(self.norm(out))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(input_shape[2:])

    def get_config(self):
        return {**super().get_config(), "partitions": self.partitions,
                "mirror_axis": self.mirror_axis, "key_dim": self.key_dim}


@keras.saving.register_keras_serializable(package="strokeseg")
class GatedLogitFusion(layers.Layer):
    """out = Σ_i softmax(gates)_i · logits_i over the last axis (§A.3 AdaptiveFusion)."""

    def call(self, inputs):
        logits, gates = inputs
        weights = ops.softmax(gates, axis=-1)
        return ops.sum(weights * logits, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0][:-1]) + (1,)


def _channels(n, width):
    return max(1, int(round(n * width)))


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def default_partitions(bottleneck, mirror_axis="height"):
    """The SEA grid for a (h, w) bottleneck (see the module docstring)."""
    grid = []
    for side, n in zip(("height", "width"), bottleneck):
        parts = max(d for d in _divisors(n) if d <= 4)
        if side == mirror_axis and parts == 1 and n > 1:
            parts = min(d for d in _divisors(n) if d >= 2)
        grid.append(parts)
    return tuple(grid)


def _alignment_cnn(height, width, width_mult):
    filters = _channels(32, width_mult)
    groups = math.gcd(4, filters)
    inputs = keras.Input((height, width, 1), name="slice")
    x = inputs
    for i, kernel in enumerate((7, 5), start=1):
        x = layers.Conv2D(filters, kernel, padding="same", kernel_initializer=_conv_init(),
                          name=f"align_conv{i}")(x)
        x = layers.GroupNormalization(groups, name=f"align_gn{i}")(x)
        x = layers.Activation("relu", name=f"align_relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"align_pool{i}")(x)
    x = layers.AdaptiveAveragePooling2D((ALIGN_POOL, ALIGN_POOL), name="align_adaptive_pool")(x)
    x = layers.Flatten(name="align_flatten")(x)
    x = layers.Dense(_channels(128, width_mult), activation="relu", kernel_initializer=_dense_init(),
                     name="align_dense")(x)
    x = layers.Dropout(0.3, name="align_dropout")(x)
    # zero head: the network starts at the identity transform and learns away from it
    x = layers.Dense(3, kernel_initializer="zeros", bias_initializer="zeros", name="alignment_head")(x)
    x = layers.Activation("tanh", name="align_tanh")(x)
    x = layers.Rescaling(ALIGN_LIMIT, dtype="float32", name="align_bound")(x)
    return keras.Model(inputs, x, name="alignment_cnn")


def _conv3d_block(x, filters, dropout, name):
    for i in (1, 2):
        x = layers.Conv3D(filters, 3, padding="same", kernel_initializer=_conv_init(),
                          name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        if i == 1:
            x = layers.SpatialDropout3D(dropout, name=f"{name}_dropout")(x)
    return x


def _conv2d_bn_relu(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", kernel_initializer=_conv_init(), name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _centre_slice(volume, name):
    """(B, D, h, w, c) -> (B, h, w, c), the middle depth slice."""
    _, depth, height, width, channels = volume.shape
    x = layers.Cropping3D(((depth // 2, depth // 2), (0, 0), (0, 0)), name=f"{name}_crop")(volume)
    return layers.Reshape((height, width, channels), name=name)(x)


def _sean(volume, width_mult, partitions, mirror_axis):
    """SEAN on the aligned (B, D, H, W, 1) volume -> local logit (B, H, W, 1)."""
    x, skips = volume, []
    for level, filters in enumerate(ENCODER_FILTERS, start=1):
        x = _conv3d_block(x, _channels(filters, width_mult), 0.1, f"enc{level}")
        skips.append(x)
        # in-plane only (§A.6); per depth slice as 2-D pooling (no float16 MaxPool3D on TF CPU)
        x = layers.TimeDistributed(layers.MaxPooling2D(2), name=f"enc{level}_pool")(x)
    x = _conv3d_block(x, _channels(BOTTLENECK_FILTERS, width_mult), 0.2, "bottleneck")
    x = SymmetryEnhancedAttention(partitions, mirror_axis, key_dim=_channels(512, width_mult),
                                  name="symmetry_attention")(x)
    for level in range(len(ENCODER_FILTERS), 0, -1):
        filters = _channels(ENCODER_FILTERS[level - 1], width_mult)
        x = layers.Conv2DTranspose(filters, 2, strides=2, kernel_initializer=_conv_init(),
                                   name=f"dec{level}_up")(x)
        skip = _centre_slice(skips[level - 1], f"dec{level}_skip")
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skip])
        x = _conv2d_bn_relu(x, filters, f"dec{level}_a")
        x = _conv2d_bn_relu(x, filters, f"dec{level}_b")
    return layers.Conv2D(1, 1, kernel_initializer=_conv_init(), name="local_logits")(x)


def _resnext_bottleneck(x, group_width, groups, out_filters, strides, dilation, project, name):
    shortcut = x
    if project:
        shortcut = layers.Conv2D(out_filters, 1, strides=strides, use_bias=False,
                                 kernel_initializer=_conv_init(), name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(groups * group_width, 1, use_bias=False, kernel_initializer=_conv_init(),
                      name=f"{name}_reduce")(x)
    y = layers.BatchNormalization(name=f"{name}_reduce_bn")(y)
    y = layers.Activation("relu", name=f"{name}_reduce_relu")(y)
    y = layers.Conv2D(groups * group_width, 3, strides=strides, dilation_rate=dilation, groups=groups,
                      padding="same", use_bias=False, kernel_initializer=_conv_init(),
                      name=f"{name}_grouped")(y)
    y = layers.BatchNormalization(name=f"{name}_grouped_bn")(y)
    y = layers.Activation("relu", name=f"{name}_grouped_relu")(y)
    y = layers.Conv2D(out_filters, 1, use_bias=False, kernel_initializer=_conv_init(),
                      name=f"{name}_expand")(y)
    y = layers.BatchNormalization(name=f"{name}_expand_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _resnext50(centre, width_mult):
    groups = _channels(RESNEXT_CARDINALITY, width_mult)
    x = layers.Conv2D(3, 1, use_bias=False, kernel_initializer="ones", name="global_to_rgb")(centre)
    x = layers.Conv2D(_channels(64, width_mult), 7, strides=2, padding="same", use_bias=False,
                      kernel_initializer=_conv_init(), name="resnext_stem")(x)
    x = layers.BatchNormalization(name="resnext_stem_bn")(x)
    x = layers.Activation("relu", name="resnext_stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="resnext_stem_pool")(x)
    for stage, blocks in enumerate(RESNEXT_STAGES):
        group_width = RESNEXT_GROUP_WIDTH * 2 ** stage
        out_filters = _channels(256 * 2 ** stage, width_mult)
        last = stage == len(RESNEXT_STAGES) - 1
        for block in range(blocks):
            # the last stage trades its stride for dilation: output stride 16, so 208 = 16·13 works
            strides = 2 if block == 0 and 0 < stage and not last else 1
            x = _resnext_bottleneck(x, group_width, groups, out_filters, strides,
                                    dilation=2 if last else 1, project=block == 0,
                                    name=f"resnext_s{stage + 1}b{block + 1}")
    x = layers.Conv2DTranspose(1, 8, strides=4, padding="same", kernel_initializer=_conv_init(),
                               name="global_head")(x)
    return layers.UpSampling2D(4, interpolation="bilinear", name="global_logits")(x)


def build(input_shape, width=1.0, partitions=None, mirror_axis="height"):
    """LCNN for (H, W, 3) inputs; see the module docstring for the options."""
    height, width_px, channels = check_input_shape("lcnn", input_shape, SIZE_MULTIPLE)
    if channels != SLICES:
        raise ConfigError(f"lcnn: input must hold {SLICES} adjacent slices as channels (centre ±1), "
                          f"got C = {channels}")
    if not isinstance(width, (int, float)) or not 0 < width <= 4:
        raise ConfigError(f"lcnn: width must be a channel multiplier in (0, 4], got {width!r}")
    if mirror_axis not in MIRROR_AXES:
        raise ConfigError(f"lcnn: mirror_axis must be one of {sorted(MIRROR_AXES)}, got {mirror_axis!r}")
    bottleneck = (height // SIZE_MULTIPLE, width_px // SIZE_MULTIPLE)
    if partitions is None:
        partitions = default_partitions(bottleneck, mirror_axis)
    partitions = tuple(int(p) for p in partitions)
    if len(partitions) != 2 or min(partitions) < 1 or bottleneck[0] % partitions[0] \
            or bottleneck[1] % partitions[1]:
        raise ConfigError(f"lcnn: partitions {partitions} must be two positive divisors of the "
                          f"bottleneck {bottleneck[0]}×{bottleneck[1]} (input / 16)")

    inputs = keras.Input((height, width_px, SLICES), name="slices")
    x = layers.Permute((3, 1, 2), name="slices_first")(inputs)
    x = layers.Reshape((SLICES, height, width_px, 1), name="slices_as_batch")(x)
    params = layers.TimeDistributed(_alignment_cnn(height, width_px, width), name="alignment_net")(x)
    aligned = RigidSliceWarp(name="aligned_slices")([inputs, params])

    volume = layers.Permute((3, 1, 2), name="slices_as_depth")(aligned)
    volume = layers.Reshape((SLICES, height, width_px, 1), name="aligned_volume")(volume)
    local = _sean(volume, width, partitions, mirror_axis)
    global_ = _resnext50(_centre_slice(volume, "aligned_centre_slice"), width)

    logits = layers.Concatenate(name="fusion_logits")([global_, local])
    gates = layers.Conv2D(_channels(64, width), 3, padding="same", activation="relu",
                          kernel_initializer=_conv_init(), name="fusion_conv")(logits)
    gates = layers.Conv2D(2, 1, kernel_initializer=_conv_init(), name="fusion_gates")(gates)
    fused = GatedLogitFusion(name="fused_logits")([logits, gates])
    outputs = layers.Activation("sigmoid", dtype="float32", name="probabilities")(fused)
    return keras.Model(inputs, outputs, name="lcnn")


def training_model(model):
    """(probabilities, aligned, params) for the inputs of an LCNN built here; shares its weights."""
    return keras.Model(model.input, [model.output, model.get_layer("aligned_slices").output,
                                      model.get_layer("alignment_net").output],
                       name=f"{model.name}_with_alignment")


def alignment_model(model):
    """(aligned (B, H, W, 3), params (B, 3, 3) = angle, tx, ty per slice); shares the weights."""
    return keras.Model(model.input, [model.get_layer("aligned_slices").output,
                                      model.get_layer("alignment_net").output],
                       name=f"{model.name}_alignment")


def _sobel_magnitude(images):
    """Per-slice Sobel gradient magnitude of (B, H, W, S), zero padding as upstream."""
    _, height, width, slices = images.shape
    flat = ops.reshape(ops.transpose(images, (0, 3, 1, 2)), (-1, height, width, 1))
    gx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype="float32")
    kernel = np.stack([gx, gx.T], axis=-1)[:, :, None, :]           # (3, 3, 1, 2)
    grads = ops.conv(flat, ops.convert_to_tensor(kernel), padding="same")
    return ops.sqrt(ops.sum(grads * grads, axis=-1) + 1e-8)


def alignment_losses(original, aligned, params, mirror_axis="height"):
    """The three alignment terms (§A.4, symmetry from ver2 §A.3), each a float32 scalar.

    original, aligned: (B, H, W, S) slices before and after the warp; params: (B, S, 3).
    - ``symmetry``: 1 − cosine similarity of each aligned slice, z-scored over the whole batch
      tensor, with its mirror along ``mirror_axis``; mean over batch and slices.
    - ``regularisation``: mean(angle²) + mean(tx² + ty²).
    - ``edge``: mean |Sobel magnitude(aligned) − Sobel magnitude(original)|.
    Weight them with :data:`ALIGNMENT_WEIGHTS` (and the overall 0.05 of §A.3/§A.4).
    """
    if mirror_axis not in MIRROR_AXES:
        raise ConfigError(f"mirror_axis must be one of {sorted(MIRROR_AXES)}, got {mirror_axis!r}")
    original = ops.cast(original, "float32")
    aligned = ops.cast(aligned, "float32")
    params = ops.cast(params, "float32")

    z = (aligned - ops.mean(aligned)) / (ops.std(aligned) + 1e-6)
    mirrored = ops.flip(z, axis=MIRROR_AXES[mirror_axis])
    # a mirror has the same norm, so the cosine is <z, z'> / |z|²
    cosine = ops.sum(z * mirrored, axis=(1, 2)) / (ops.sum(z * z, axis=(1, 2)) + 1e-6)
    symmetry = 1.0 - ops.mean(cosine)

    regularisation = ops.mean(params[..., 0] ** 2) + ops.mean(params[..., 1] ** 2 + params[..., 2] ** 2)
    edge = ops.mean(ops.abs(_sobel_magnitude(aligned) - _sobel_magnitude(original)))
    return {"symmetry": symmetry, "regularisation": regularisation, "edge": edge}
