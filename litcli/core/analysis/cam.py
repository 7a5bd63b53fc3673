"""Class-activation maps of LIT (``lit cam``) through the ``grad-cam`` package (``pytorch_grad_cam``, an optional
extra: ``pip install 'litcli[cam]'``), which does the hooking, weighting and overlay; what it cannot know is
where a LIT stage's activations are and how its tokens lie on the image, which is written here.

A stage's blocks work on token sequences (B, prefix + h*w, C), row-major over the stage's h x w grid
(stride patch_size * 2^(stage-1) pixels); LIT-Ti prepends a class token in stage 4 (``num_prefix_tokens``). The
reshape drops the prefix and lays the tokens out as the (B, C, h, w) map grad-cam expects.
"""
import importlib.util
from typing import Callable, Tuple

from litcli.core.errors import LitError

METHODS = {'gradcam': 'GradCAM', 'gradcam++': 'GradCAMPlusPlus', 'eigencam': 'EigenCAM'}
CLASS_AGNOSTIC = ('eigencam',)  # the first principal component of the activations: the same map for every class


def grad_cam_package():
    """``pytorch_grad_cam``, or a one-line error naming the extra that installs it."""
    if importlib.util.find_spec('pytorch_grad_cam') is None:
        raise LitError("lit cam needs the grad-cam package, which is not installed: pip install 'litcli[cam]'")
    import matplotlib
    matplotlib.use('Agg')  # grad-cam imports pyplot: headless, as every lit figure
    import pytorch_grad_cam
    return pytorch_grad_cam


def stage_target(model, stage: int, input_hw: Tuple[int, int]) -> Tuple[object, Callable, Tuple[int, int]]:
    """(module whose output grad-cam reads, reshape of that output to (B, C, h, w), token grid (h, w)) of
    ``stage`` (1-4) for an input of ``input_hw`` pixels.

    The module is the stage's last block, except in the final stage of a model that classifies from its class
    token (LIT-Ti): the head reads only that token, so the patch tokens leaving the last block get no gradient;
    the input of the last attention block (its ``norm1``) does, through the class token's attention to them
    (the grad-cam package's recipe for ViTs).
    """
    from litcli.models.lit import LITBase

    if not isinstance(model, LITBase):
        raise LitError(f'lit cam draws LIT models; {type(model).__name__} has no LIT stages')
    if stage not in (1, 2, 3, 4):
        raise LitError(f'--stage {stage}: LIT has stages 1, 2, 3 and 4')
    stride = model.stage_strides[stage - 1]
    grid = (input_hw[0] // stride, input_hw[1] // stride)
    blocks = model.stage_blocks(stage - 1)
    prefix = model.num_prefix_tokens if stage == 4 else 0
    layer = blocks[-1]
    if stage == 4 and model.global_pool == 'token':
        with_attention = [b for b in blocks if hasattr(b, 'norm1')]
        if not with_attention:
            raise LitError('this model classifies from its class token and has no attention in stage 4, so no '
                           'gradient reaches the stage-4 tokens; choose --stage 3')
        layer = with_attention[-1].norm1

    def reshape(tokens):
        tokens = tokens[:, prefix:]  # B, h*w, C (LIT-Ti's class token dropped in stage 4)
        return tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[2]).permute(0, 3, 1, 2)  # B, C, h, w

    return layer, reshape, grid


def compute_cams(model, x, method: str, stage: int, classes):
    """Maps (B, H, W) in [0, 1] at the input size for ``x`` (B, 3, H, W), one target class per image (``classes``:
    a list of indices, ignored by class-agnostic methods)."""
    package = grad_cam_package()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in METHODS:
        raise LitError(f'unknown --method {method!r}; use {", ".join(METHODS)}')
    layer, reshape, _ = stage_target(model, stage, tuple(x.shape[-2:]))
    cam_class = getattr(package, METHODS[method])
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with cam_class(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=x, targets=targets)  # B, H, W (numpy, float32)


def overlay(image, cam, min_side: int):
    """The map over the image, as uint8 (S, S', 3) RGB at least ``min_side`` pixels on the short side: the image
    upscaled bicubically, the map bilinearly, blended by grad-cam's ``show_cam_on_image`` (jet colour map)."""
    import numpy as np
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    h, w = image.shape[:2]
    scale = max(1.0, min_side / min(h, w))
    size = (round(w * scale), round(h * scale))
    big = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), dtype=np.float32) / 255
    heat = np.asarray(Image.fromarray(cam.astype(np.float32)).resize(size, Image.BILINEAR))  # mode F
    return show_cam_on_image(big, np.clip(heat, 0, 1), use_rgb=True, image_weight=0.5)
