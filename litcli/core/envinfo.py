"""The software and hardware a job runs on: what ``lit env`` prints and every run directory records (env.json)."""
import platform
from importlib import metadata
from typing import Dict


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return 'not installed'


def collect_env() -> Dict:
    """Versions, devices and the active DTM backend, as plain types."""
    import torch

    from litcli import __version__
    from litcli.models.dtm import resolve_dtm_backend, torchvision_ops_available

    cuda = torch.cuda.is_available()
    info = {
        'lit': __version__,
        'python': platform.python_version(),
        'platform': platform.platform(),
        'torch': torch.__version__,
        'torchvision': _version('torchvision'),
        'timm': _version('timm'),
        'fvcore': _version('fvcore'),
        'typer': _version('typer'),
        'torch_cuda_build': torch.version.cuda,
        'cuda_available': cuda,
        'cuda_devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        'cpu_threads': torch.get_num_threads(),
        'torchvision_ops_loaded': torchvision_ops_available(),
        'dtm_backend_cpu': resolve_dtm_backend('auto', torch.device('cpu')),
    }
    if cuda:
        info['dtm_backend_cuda'] = resolve_dtm_backend('auto', torch.device('cuda'))
        info['bf16_supported'] = torch.cuda.is_bf16_supported()
    return info
