"""The LIT model family. Importing this package registers ``lit_ti``, ``lit_s``, ``lit_m``, ``lit_b`` in timm."""
from .dtm import (DTM_BACKENDS, DeformableTokenMerging, DeformConv2x2, capture_offsets, deform_conv2x2,
                  resolve_dtm_backend, torchvision_ops_available)
from .lit import (LIT_ARCHS, Attention, LITBase, LITPvtStyle, LITSwinStyle, MlpBlock, TransformerBlock,
                  checkpoint_filter_fn, lit_b, lit_m, lit_s, lit_ti, relative_position_index)

VARIANTS = tuple(LIT_ARCHS)  # ('lit_ti', 'lit_s', 'lit_m', 'lit_b')
