"""3-D attention U-Net with deep supervision: the ISLES'22 project's segmenter
(docs/upstream-other-projects.md C.3, raviteja7748/3D-Stroke-Segmentation-ISLES2022).

- Input (D, H, W, M): C.3 trains on [DWI, ADC] patches of 112×112×80 (M = 2); any patch with D, H
  and W multiples of 16 and M >= 1 channels builds.
- Encoder: four levels of 64, 128, 256, 512 filters (× ``width``), bridge of 1024 at 1/16 (7×7×5
  for C.3's patch). Each block is [Conv 3×3×3 (no bias) → InstanceNorm (affine) → ReLU →
  SpatialDropout3D 0.15] × 2; MaxPool 2×2×2 between levels.
- Decoder level with ``f`` output filters: ConvTranspose 2×2×2 stride 2 (2f → f, with bias), an
  additive attention gate on the skip of that resolution gated by the upsampled decoder feature,
  ``psi = sigmoid(IN(Conv1³_1(ReLU(IN(Conv1³_{f/2}(g)) + IN(Conv1³_{f/2}(skip))))))`` and
  ``skip ← skip · psi``, then concatenation and a conv block to ``f`` filters.
- Head: Conv 1×1×1 → 1 channel → sigmoid (float32 under mixed precision).
- ``deep_supervision=True``: C.3's three auxiliary 1×1×1 heads on dec2, dec3 and dec4; the model
  returns [full, 1/2, 1/4, 1/8]. The default build (``deep_supervision=False``) has the main head
  only and is the model a run saves for inference; the shared layers have the same names in both.

Differences from C.3, and why:

- Auxiliary heads stay at their own resolution and the targets are downsampled by nearest
  neighbour with nnU-Net's weights (``strokeseg.train.deep_supervision``); C.3 upsamples the
  auxiliary maps trilinearly to full size and adds them with weights 0.6 (dec4), 0.4 (dec3) and 0.3
  (dec2). Downsampled targets are cheaper and nnU-Net's weighting is the better-tested rule; the
  loss wrapper takes C.3's weights too (``weights=[1, 0.3, 0.4, 0.6]``).
- The gates' 1×1×1 convs carry no bias, because the instance norm after each removes any
  per-channel constant (as in the 2-D ``attention_unet``); no padding of the upsampled map to the
  skip (D, H, W are multiples of 16); no gradient checkpointing (a PyTorch memory device).
- ``width`` scales every filter count (rounded, at least 1), the gates' F_int = f/2 included, so a
  CPU can train 1/8-width versions.

Instance norm is ``GroupNormalization(groups=-1)`` with PyTorch's epsilon 1e-5; initialisation is
Keras' Glorot-uniform, C.3's Xavier-uniform. The canonical build is C.3's patch (112, 112, 80, 2):
90,650,857 parameters, all trainable, measured here (C.3 publishes no count).

Options: ``width`` (default 1.0), ``deep_supervision`` (default False), ``dropout`` (default 0.15).
"""
from __future__ import annotations

import functools

import keras

from strokeseg.models.attention_unet import attention_gate
from strokeseg.models.unet3d import DROPOUT, assemble

CANONICAL_INPUT = (112, 112, 80, 2)
CANONICAL_PARAMS = 90_650_857
SIZE_MULTIPLE = 16  # four 2×2×2 poolings


def build(input_shape: tuple[int, int, int, int], *, width: float = 1.0, deep_supervision: bool = False,
          dropout: float = DROPOUT, **unknown) -> keras.Model:
    """Attention U-Net for inputs (D, H, W, M), D, H and W multiples of 16.

    Returns one (D, H, W, 1) probability map, or with ``deep_supervision`` the list [full, 1/2, 1/4,
    1/8] of probability maps (training only; the default build is the inference model)."""
    return assemble("attention_unet3d", input_shape, width=width, deep_supervision=deep_supervision,
                    dropout=dropout, gate=functools.partial(attention_gate, dims=3), unknown=unknown)
