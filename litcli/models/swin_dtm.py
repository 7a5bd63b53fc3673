"""Swin-Ti + DTM (the paper's Table 4): timm's Swin-T with its three patch-merging layers replaced by DTM.

Built on timm's ``swin_tiny_patch4_window7_224`` rather than re-implemented, so everything but the merges is
timm's Swin. timm's stages run on NHWC maps; ``NHWCTokenMerging`` adapts DTM (NCHW) to that.
"""
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models.swin_transformer import PatchMerging

from .dtm import DeformableTokenMerging

__all__ = ['NHWCTokenMerging', 'swin_t_dtm']


class NHWCTokenMerging(nn.Module):
    """DTM on (B, H, W, C) maps: (B, H, W, C_in) -> (B, H/2, W/2, C_out)."""

    def __init__(self, in_chs: int, out_chs: int, backend: str = 'auto'):
        super().__init__()
        self.dtm = DeformableTokenMerging(in_chs, out_chs, backend=backend)

    def forward(self, x):
        return self.dtm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


default_cfgs = generate_default_cfgs({'swin_t_dtm.untrained': {
    'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'crop_pct': 0.9, 'interpolation': 'bicubic',
    'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'first_conv': 'patch_embed.proj',
    'classifier': 'head.fc', 'license': 'apache-2.0'}})


@register_model
def swin_t_dtm(pretrained: bool = False, dtm_backend: str = 'auto', **kwargs):
    """Swin-Ti + DTM (Table 4): 28M / 4.5G in the paper."""
    import timm
    if pretrained:
        raise ValueError('swin_t_dtm has no released weights')
    model = timm.create_model('swin_tiny_patch4_window7_224', **kwargs)
    for stage in model.layers:
        if isinstance(stage.downsample, PatchMerging):
            stage.downsample = NHWCTokenMerging(stage.downsample.dim, stage.downsample.out_dim, backend=dtm_backend)
    model.stage_strides = tuple(info['reduction'] for info in model.feature_info)  # 4, 8, 16, 32, as LIT's
    model.pretrained_cfg = dict(default_cfgs['swin_t_dtm'].default.to_dict(), architecture='swin_t_dtm')
    return model
