"""The LIT model family. Importing this package registers ``lit_ti``, ``lit_s``, ``lit_m``, ``lit_b`` in timm."""
from .dtm import (DTM_BACKENDS, DeformableTokenMerging, DeformConv2x2, capture_offsets, deform_conv2x2,
                  offset_lengths_px, resolve_dtm_backend, torchvision_ops_available)
from .lit import (LIT_ARCHS, Attention, LITBase, LITPvtStyle, LITSwinStyle, MlpBlock, TransformerBlock,
                  checkpoint_filter_fn, lit_b, lit_m, lit_s, lit_s_star, lit_ti, lit_ti_star, pvt_s_dtm, pvt_s_msa,
                  relative_position_index)
from .swin_dtm import swin_t_dtm
from .dense import (DENSE_TASKS, DENSE_VARIANTS, DenseLITS, DenseLITTi, create_dense_backbone,
                    dense_state_dict_from_classification)
from .segmentation import SemanticFPN, semantic_fpn_lit
from .dense_zoo import DENSE_MODEL_NAMES, DENSE_MODELS, DenseModel, convert_official, create_dense_model, dense_model
from .detection import identify_mmdet, mask_rcnn_from_mmdet, mask_rcnn_lit, retinanet_from_mmdet, retinanet_lit

from .spec import ABLATIONS, PAPER_VARIANTS, REDUCTION, nearest_valid, size_problem, unwrap_state_dict  # noqa: F401

