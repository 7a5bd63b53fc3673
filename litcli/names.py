"""Model names: the CLI's short names and the registered timm names. Light (no torch), so the CLI can use it."""
import difflib

from litcli.errors import UsageError

PAPER_VARIANTS = ('lit_ti', 'lit_s', 'lit_m', 'lit_b')
# The paper's ablations (Tables 3-5, Figure 3), registered by litcli.models.
ABLATIONS = ('lit_ti_star', 'lit_s_star', 'pvt_s_msa', 'pvt_s_dtm', 'swin_t_dtm')
SHORT_NAMES = {name.removeprefix('lit_'): name for name in PAPER_VARIANTS}  # 'ti' -> 'lit_ti'
CLI_CHOICES = (*SHORT_NAMES, *ABLATIONS)


def model_name(name: str) -> str:
    """'s' | 'lit_s' | an ablation name -> the registered timm name; a UsageError with a suggestion otherwise."""
    key = str(name).strip().lower().replace('-', '_')
    if key in SHORT_NAMES:
        return SHORT_NAMES[key]
    if key in PAPER_VARIANTS or key in ABLATIONS:
        return key
    close = difflib.get_close_matches(key, CLI_CHOICES + PAPER_VARIANTS, n=1, cutoff=0.3)
    hint = f"; did you mean {close[0]!r}?" if close else ''
    raise UsageError(f"unknown variant {name!r}: choose one of {', '.join(CLI_CHOICES)}{hint}")
