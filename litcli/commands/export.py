"""``lit export``: a checkpoint as safetensors (+ JSON config), ONNX (verified with onnxruntime) or TorchScript.

Every file is serialised in memory, written with the one atomic writer (``core.io``) to a temporary name, verified
where a runtime exists (from the file), and only then renamed into place, so a failed or rejected export (a full
disk included: one line) leaves nothing behind and never touches an existing file.
"""
import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Dict, Optional

from litcli.core.errors import LitError, UsageError

FORMATS = ('onnx', 'safetensors', 'torchscript')
SUFFIXES = {'onnx': '.onnx', 'safetensors': '.safetensors', 'torchscript': '.torchscript.pt'}
TOLERANCE = 1e-4  # max |exported - PyTorch| on fp32 logits
MIN_OPSET = 18  # torch's exporter implements opset 18+ only; asked for less it still writes 18 (its down-conversion fails)
ELSEWHERE = 'choose another --out'
VERIFY_BATCH = 3  # differs from the export example's batch (2), so the check also exercises the dynamic batch


def _portable(model):
    """Switch the model to the paths that export through standard operators; both compute the same function.

    DTM: the pure-PyTorch backend (bilinear gather + matmul): torchvision's deform_conv2d has no ONNX/TorchScript
    form; under export the gather is Gather + weighted sum (ONNX Gather/Mul/ReduceSum). Attention: the explicit softmax(q k^T + bias) v path, because in
    torch 2.14 the ONNX exporter cannot decompose fused SDPA with a relative-position bias and a dynamic batch
    (lit_s/m/b fail with "Cannot view a tensor ..."); the explicit path exports as MatMul/Softmax.
    """
    from litcli.models import Attention, DeformConv2x2

    for m in model.modules():
        if isinstance(m, DeformConv2x2):
            m.backend = 'pure'
        elif isinstance(m, Attention):
            m.fused_attn = False
    return model


def _inputs(batch: int, size: int, seed: int):
    import torch

    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _max_diff(a, b) -> float:
    import torch

    return (torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max().item()


def _check(diff: float, what: str):
    if not diff < TOLERANCE:  # also catches NaN
        raise LitError(f'{what} differs from PyTorch by {diff:.3g} (max |diff|, limit {TOLERANCE:g} in fp32); '
                       f'the export is wrong and was not written')


def _write_safetensors(model, config: Dict, f) -> Dict:
    from safetensors.torch import save

    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # A copy of the config in the header keeps the file loadable when it travels without its JSON sidecar.
    f.write(save(state_dict, metadata={'lit_config': json.dumps(config)}))
    return dict(tensors=len(state_dict))


def _write_onnx(model, f, size: int, opset: int) -> Dict:
    """torch.export-based exporter (``dynamo=True``, the default since torch 2.9; the TorchScript-based one is
    deprecated). Dynamic batch; the spatial size is fixed (see README "Deploy")."""
    import torch

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (the exporter's op library)
    except ImportError as e:
        raise LitError(f'ONNX export needs the onnx and onnxscript packages ({e.name} is missing); '
                       f'pip install "litcli[export]"')
    example = _inputs(2, size, seed=0)
    batch = torch.export.Dim('batch', min=1, max=4096)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # the exporter narrates each step on stdout
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, input_names=['input'],
                                        output_names=['logits'], dynamic_shapes=({0: batch},))
        data = program.model_proto.SerializeToString()  # what program.save(path) writes (one file, < 2 GB)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LitError(f'ONNX export failed: {type(e).__name__}: {first}')
    f.write(data)
    f.flush()
    info = dict(opset=opset, input='input', output='logits', dynamic_axes=['batch'],
                input_shape=['batch', 3, size, size])
    try:
        import onnxruntime as ort
    except ImportError:
        info['verified'] = 'not verified: onnxruntime is not installed (pip install onnxruntime)'
        return info
    session = ort.InferenceSession(f.name, providers=['CPUExecutionProvider'])  # the file, as written
    x = _inputs(VERIFY_BATCH, size, seed=1)
    with torch.inference_mode():
        expected = model(x)
    diff = _max_diff(session.run(None, {'input': x.numpy()})[0], expected)
    _check(diff, 'onnxruntime output')
    info.update(verified=f'onnxruntime {ort.__version__}, batch {VERIFY_BATCH}', max_abs_diff=diff)
    return info


def _write_torchscript(model, f, size: int) -> Dict:
    import torch

    with torch.inference_mode(), warnings.catch_warnings():
        # Tracing warns at every Python-level shape check (constants for a fixed input size, which is what a
        # traced module is), and torch.jit itself is deprecated in favour of torch.export (see README "Deploy").
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', FutureWarning)
        traced = torch.jit.trace(model, _inputs(2, size, seed=0), check_trace=False)
        # To a file object torch.jit.save serialises in memory and then writes the bytes: a full disk is then an
        # OSError for the writer, where saving to a path aborts the process in C++.
        torch.jit.save(traced, f)
        f.flush()
        loaded = torch.jit.load(f.name)  # verify the file, not the in-memory trace
        x = _inputs(VERIFY_BATCH, size, seed=1)
        diff = _max_diff(loaded(x), model(x))
    _check(diff, 'the TorchScript module')
    return dict(input_shape=['batch', 3, size, size], verified=f'torch.jit.load, batch {VERIFY_BATCH}',
                max_abs_diff=diff)


def default_out(checkpoint, fmt: str) -> Path:
    """Next to the checkpoint: ``lit_s.pth`` -> ``lit_s.safetensors`` / ``lit_s.onnx`` / ``lit_s.torchscript.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(checkpoint.suffix) + SUFFIXES[fmt])


def run(checkpoint: Optional[Path], fmt: str, out: Optional[Path] = None, variant: Optional[str] = None,
        force: bool = False, img_size: Optional[int] = None, opset: int = 18, use_ema: Optional[bool] = None,
        pretrained: bool = False) -> Dict:
    """Export ``checkpoint`` (official ``.pth``, ``lit train`` checkpoint or safetensors) to ``fmt`` at ``out``
    and write the JSON config next to it; returns a summary. ``pretrained``: the released ImageNet-1k weights of
    ``variant`` (default lit_s) instead of ``checkpoint``; ``out`` then defaults to ``<variant><suffix>`` here."""
    from litcli.core.io import atomic_write, write_json
    from litcli.core.modelio.checkpoint import sidecar_path
    from litcli.core.modelio.factory import load_model

    if fmt not in FORMATS:
        raise UsageError(f'unknown format {fmt!r}: choose one of {", ".join(FORMATS)}')
    if fmt == 'onnx' and opset < MIN_OPSET:
        raise UsageError(f'--opset {opset} is too old: torch\'s ONNX exporter writes opset {MIN_OPSET} or newer; '
                         f'use --opset {MIN_OPSET}')
    if checkpoint is not None and pretrained:
        raise UsageError('--checkpoint and --pretrained both name the weights; pass one')
    if checkpoint is None and not pretrained:
        raise UsageError('lit export needs weights: pass --checkpoint PATH, or --pretrained for the released ones')
    # The released weights sit in the download cache: their export goes to the current folder instead.
    source = checkpoint if checkpoint is not None else Path(f'{variant or "lit_s"}.pth')
    out = Path(out) if out is not None else default_out(source, fmt)
    sidecar = sidecar_path(out)
    if out.suffix == '.json':
        raise UsageError(f'--out {out} ends in .json, the name of the config written next to the model; '
                         f'use e.g. {out.with_suffix(SUFFIXES[fmt])}')
    if checkpoint is not None and out.resolve() == Path(checkpoint).resolve():
        raise UsageError(f'--out {out} is the checkpoint itself; choose another name')
    if out.is_dir():
        raise UsageError(f'--out {out} is a folder; give a file name such as {out / default_out(source, fmt).name}')
    taken = [p for p in (out, sidecar) if p.exists()]
    if taken and not force:
        raise LitError(f'{taken[0]} already exists; pass --force to overwrite it or choose another --out')
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LitError(f'cannot create the folder {out.parent} ({e.strerror}); choose a writable --out')
    if not os.access(out.parent, os.W_OK):
        raise LitError(f'{out.parent} is not writable; choose another --out')

    loaded = load_model(checkpoint, variant, use_ema=use_ema, img_size=img_size, pretrained=pretrained)
    model = _portable(loaded.model)
    size = loaded.img_size
    config = dict(variant=loaded.variant,
                  model_kwargs={**(loaded.checkpoint.get('model_kwargs') or {}), 'img_size': size},
                  num_classes=loaded.num_classes, class_names=loaded.class_names, data_config=loaded.data_config,
                  weights=loaded.weights, source=loaded.pretrained or loaded.source)
    if loaded.train_config is not None:  # lets lit eval find the run's data and transforms, as from the checkpoint
        config['config'] = {**loaded.train_config, 'img_size': size}

    info = {}

    def write(f):
        if fmt == 'safetensors':
            info.update(_write_safetensors(model, config, f))
        elif fmt == 'onnx':
            info.update(_write_onnx(model, f, size, opset))
        else:
            info.update(_write_torchscript(model, f, size))
        config['export'] = dict(format=fmt, **info)
        write_json(sidecar, config, ELSEWHERE)  # before the model is renamed into place: never one without the other

    atomic_write(out, write, ELSEWHERE)  # a full disk: one line, nothing left, an existing file unchanged
    return dict(format=fmt, path=str(out), config=str(sidecar), variant=loaded.variant, img_size=size,
                num_classes=loaded.num_classes, weights=loaded.weights, bytes=out.stat().st_size, **info)


def print_result(result: Dict):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f'lit export: {result["variant"]} -> {result["format"]}', show_header=False)
    table.add_row('written', f'{result["path"]} ({result["bytes"] / 2 ** 20:.1f} MiB)')
    table.add_row('config', result['config'])
    if 'input_shape' in result:
        table.add_row('input', ' x '.join(map(str, result['input_shape'])) + ' (dynamic batch, fixed size)')
    if 'opset' in result:
        table.add_row('opset', str(result['opset']))
    if 'verified' in result:
        table.add_row('verified', result['verified'])
    if 'max_abs_diff' in result:
        table.add_row('max |diff| vs PyTorch', f'{result["max_abs_diff"]:.3g} (limit {TOLERANCE:g})')
    Console().print(table)
