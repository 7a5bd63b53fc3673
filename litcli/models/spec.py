"""Facts about the LIT family that need no torch: the registered names, the input-size rule, state-dict unwrapping."""
from typing import Dict, Optional

PAPER_VARIANTS = ('lit_ti', 'lit_s', 'lit_m', 'lit_b')
# The paper's ablations (Tables 3-5, Figure 3), registered next to the variants.
ABLATIONS = ('lit_ti_star', 'lit_s_star', 'pvt_s_msa', 'pvt_s_dtm', 'swin_t_dtm')

REDUCTION = 32  # total downsampling: a 4x4 patch stem and three 2x2 merges

# The official ImageNet-1k weights (224 px, 1000 classes): assets of GitHub release v1.0 of ziplab/LIT, one
# ``<variant>.pth`` per paper variant, in the official key layout, wrapped as {'model': state_dict}.
RELEASE_URL = 'https://github.com/ziplab/LIT/releases/download/v1.0'


def release_url(variant: str, base: str = RELEASE_URL) -> str:
    """Where the released weights of ``variant`` ('lit_s', ...) are: ``<base>/<variant>.pth``."""
    return f'{base.rstrip("/")}/{variant}.pth'


def nearest_valid(side: int) -> str:
    """'224' for a valid side, else the two nearest valid ones ('96 or 128'), or '32' below it."""
    lo = side // REDUCTION * REDUCTION
    return str(side) if lo == side and side > 0 else f'{lo} or {lo + REDUCTION}' if lo > 0 else str(REDUCTION)


def size_problem(side: int) -> Optional[str]:
    """None when LIT takes an input side of ``side`` pixels, else what is wrong with it and the nearest valid sides."""
    if side > 0 and side % REDUCTION == 0:
        return None
    return (f'{side} is not a multiple of {REDUCTION} (LIT downsamples 32x, so sides must be divisible by '
            f'{REDUCTION}); nearest valid: {nearest_valid(side)}')


def unwrap_state_dict(state_dict: Dict) -> Dict:
    """Official files may be bare or wrapped as {'model': ...} / {'state_dict': ...}, with a DDP prefix."""
    for key in ('model', 'state_dict'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state_dict.items()}
