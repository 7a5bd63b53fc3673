"""Facts about the LIT family that need no torch: the registered names, the input-size rule, state-dict unwrapping."""
from typing import Dict, Optional

PAPER_VARIANTS = ('lit_ti', 'lit_s', 'lit_m', 'lit_b')
# The paper's ablations (Tables 3-5, Figure 3), registered next to the variants.
ABLATIONS = ('lit_ti_star', 'lit_s_star', 'pvt_s_msa', 'pvt_s_dtm', 'swin_t_dtm')

REDUCTION = 32  # total downsampling of the official models: a 4x4 patch stem and three 2x2 merges

# The official ImageNet-1k weights (224 px, 1000 classes): assets of GitHub release v1.0 of ziplab/LIT, one
# ``<variant>.pth`` per paper variant, in the official key layout, wrapped as {'model': state_dict}.
RELEASE_URL = 'https://github.com/ziplab/LIT/releases/download/v1.0'
# "PVT w/ MSA" of the paper's Figure 3 (official ``pvt_small_full_msa``, 80.9% top-1), released later (v2.1) by the
# authors' group in the official layout, which is ``pvt_s_msa``'s.
PVT_S_MSA_URL = 'https://github.com/zhuang-group/LIT/releases/download/v2.1/pvt_full_msa.pth'


def release_url(variant: str, base: str = RELEASE_URL) -> str:
    """Where the released weights of ``variant`` ('lit_s', ...) are: ``<base>/<variant>.pth``."""
    return f'{base.rstrip("/")}/{variant}.pth'


def size_fits(side: int, reduction: int = REDUCTION) -> bool:
    """True when a model that downsamples ``reduction`` x takes an input side of ``side`` pixels."""
    return side > 0 and side % reduction == 0


def nearest_valid(side: int, reduction: int = REDUCTION) -> str:
    """'224' for a valid side, else the two nearest valid ones ('96 or 128'), or the smallest one below it."""
    lo = side // reduction * reduction
    return str(side) if size_fits(side, reduction) else f'{lo} or {lo + reduction}' if lo > 0 else str(reduction)


def size_problem(side: int, reduction: int = REDUCTION) -> Optional[str]:
    """None when LIT takes an input side of ``side`` pixels, else what is wrong with it and the nearest valid sides.
    ``reduction``: 32 for the 4x4 patch stem, 8 * patch_size in general."""
    if size_fits(side, reduction):
        return None
    return (f'{side} is not a multiple of {reduction} (LIT downsamples {reduction}x, so sides must be divisible by '
            f'{reduction}); nearest valid: {nearest_valid(side, reduction)}')


def unwrap_state_dict(state_dict: Dict) -> Dict:
    """Official files may be bare or wrapped as {'model': ...} / {'state_dict': ...}, with a DDP prefix."""
    for key in ('model', 'state_dict'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state_dict.items()}
