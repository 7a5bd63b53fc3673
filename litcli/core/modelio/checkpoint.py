"""Checkpoint files: reading (always ``weights_only``), atomic writing, fitting a state dict to a model, the
checkpoints of a run directory (``CheckpointSaver``: last, best, step-N) and finding the one to resume.

Every read uses ``torch.load(weights_only=True)``, so an untrusted file can never run code. Every write is atomic
(temporary file in the same folder, fsync, rename), so a kill at any instant leaves the old or the new file.
Layout of ``<run>/checkpoints``: ``last.pt`` (the newest state, rewritten at every save), ``best.pt`` (best eval
top-1, at epoch ends) and, with ``--save-interval N``, ``step-XXXXXXX.pt`` every N optimizer steps, of which the
newest ``--keep-last K`` are kept; with ``--keep-best K`` also ``top-epochNNNN.pt`` for the K best epochs by eval
top-1, ranked in ``top.json`` (for ``lit avg-checkpoints``).
"""
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from litcli.core.errors import CheckpointError, LitError, WriteError
from litcli.core.io import atomic_write, fsync_dir, write_json

PathLike = Union[str, Path]
STEP_FILE = re.compile(r'^step-(\d+)\.pt$')
TOP_INDEX = 'top.json'  # the --keep-best ranking: [{"file", "epoch", "metric"}], best first


def text_kind(path: PathLike) -> Optional[str]:
    """'an HTML page (...)' or 'a text file (...)' when the start of ``path`` says it is one, else None: what a
    captive portal, a sign-in wall or a server's error page leaves under a weights file's name."""
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError:
        return None
    start = head.lstrip(b'\xef\xbb\xbf \t\r\n').lower()
    if start.startswith((b'<!doctype html', b'<html', b'<head', b'<body', b'<?xml')) or b'<html' in start:
        return 'an HTML page (a sign-in page of a captive portal, or an error page, served instead of the file?)'
    try:
        text = head[:len(head) - 3 if len(head) == 512 else None].decode('utf-8')  # a cut multi-byte end is fine
    except UnicodeDecodeError:
        return None
    if not text.strip() or any(c < ' ' and c not in '\t\r\n' for c in text):
        return None
    return f'a text file (it starts {text.strip().splitlines()[0][:60]!r})'


def read_checkpoint(path: PathLike, mmap: bool = False) -> Dict:
    """Load a checkpoint file onto the CPU with ``weights_only=True``; any failure is a CheckpointError (an HTML
    page or a text file saved under a weights name is called what it is). ``mmap``: map the tensors instead of
    reading them (keys and shapes for the cost of the pickle alone; a file in torch's legacy format is read whole).

    A ``.safetensors`` file (``lit export``) is read with its JSON config into the same shape as a ``lit train``
    checkpoint (``{'model': state_dict, 'variant': ..., ...}``), so every ``--checkpoint`` accepts it.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    if path.suffix == '.safetensors':
        return read_safetensors(path)
    if path.suffix == '.onnx':
        raise CheckpointError(f'{path} is an exported ONNX model, not a checkpoint; pass the original checkpoint '
                              f'or a .safetensors export (lit export --format safetensors)')
    if is_torchscript_file(path):
        raise CheckpointError(f'{path} is a TorchScript module (lit export --format torchscript), not a checkpoint: '
                              f'run it with torch.jit.load({str(path)!r}), or pass the checkpoint it was exported '
                              f'from (or a .safetensors export)')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except MemoryError:
        raise
    except Exception as e:  # not pickled tensors, a truncated zip, not a torch file at all, ...
        kind = text_kind(path)
        if kind is not None:  # torch would call it a pickle with a bad load key
            raise CheckpointError(f'{path} is {kind}, not a checkpoint') from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError):
            raise CheckpointError(f'{path} holds objects other than tensors and plain types, refused for safety '
                                  f'({first}); re-save it as a plain state dict') from None
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint (truncated or corrupt?): '
                              f'{type(e).__name__}: {first if str(e).strip() else ""}') from None
    if not isinstance(obj, dict):
        raise CheckpointError(f'{path} holds a {type(obj).__name__}, not a state dict')
    return obj


def is_torchscript_file(path: PathLike) -> bool:
    """A ``torch.jit.save`` archive (a zip with ``code/`` and ``constants.pkl``), whatever its name."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any(n.endswith('/constants.pkl') or '/code/' in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def save_checkpoint(obj: Dict, path: PathLike, elsewhere: str = 'choose another --out'):
    """Write ``obj`` with torch.save atomically: a reader sees the old file or the complete new one. A full disk
    (or any failure to write) is a one-line ``WriteError`` whose fix ends in ``elsewhere``; nothing is left."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), elsewhere)


def detect_variant(state_dict: Dict) -> Optional[str]:
    """Which registered LIT variant a (model) state dict belongs to, from its keys and shapes; None if unknown."""
    from litcli.models.spec import unwrap_state_dict

    sd = unwrap_state_dict(state_dict)
    if 'pos_embed1' in sd and 'patch_embed1.proj.weight' in sd:
        if sd['patch_embed1.proj.weight'].shape[0] != 64:
            return None
        # the PVT layout: LIT-Ti has no attention in stage 1, PVT-S w/ MSA (paper Figure 3) full attention there
        return 'pvt_s_msa' if 'block1.0.attn.qkv.weight' in sd else 'lit_ti'
    if 'patch_embed.proj.weight' in sd:
        width = sd['patch_embed.proj.weight'].shape[0]
        stage3_depth = len({m.group(1) for k in sd for m in [re.match(r'layers\.2\.blocks\.(\d+)\.', k)] if m})
        return {(96, 6): 'lit_s', (96, 18): 'lit_m', (128, 18): 'lit_b'}.get((width, stage3_depth))
    return None


def key_examples(keys, n=3):
    keys = sorted(keys)
    return ', '.join(keys[:n]) + (f' (+{len(keys) - n} more)' if len(keys) > n else '')


def load_weights(path: PathLike, model, strict: bool = True) -> Dict:
    """Load weights from ``path`` into ``model`` and return the raw checkpoint (for its metadata).

    Accepts official files (bare or ``{'model': ...}``/``{'state_dict': ...}``, ``module.`` prefixes) and
    ``lit train`` checkpoints. Position tables are resampled when the file was trained at another size. A file
    that does not fit raises CheckpointError naming the missing/unexpected/mismatched keys and, where it can
    tell, the variant the file belongs to.
    """
    raw = read_checkpoint(path)
    apply_checkpoint(raw, model, source=path, strict=strict)
    return raw


def apply_checkpoint(raw: Dict, model, source: PathLike = 'checkpoint', strict: bool = True):
    """Load an already-read checkpoint dict into ``model`` (see ``load_checkpoint``)."""
    from litcli.models.lit import checkpoint_filter_fn

    state_dict = checkpoint_filter_fn(raw, model)
    target = model.state_dict()
    missing = set(target) - set(state_dict)
    unexpected = set(state_dict) - set(target)
    mismatched = {k for k in set(target) & set(state_dict) if tuple(target[k].shape) != tuple(state_dict[k].shape)}
    if strict and (missing or unexpected or mismatched):
        variant = raw.get('variant') or detect_variant(raw)
        model_name = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys ({key_examples(missing)})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys ({key_examples(unexpected)})')
        if mismatched:
            shown = sorted(mismatched)[:2]
            parts.append(f'{len(mismatched)} shape mismatches (' + ', '.join(
                f'{k}: file {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}' for k in shown) + ')')
        if variant and variant != model_name:
            hint = f'the file looks like a {variant} checkpoint: pass --variant {variant.removeprefix("lit_")}'
        elif mismatched and all(k.startswith('head.') for k in mismatched):
            hint = 'the classifier has another number of classes: set --num-classes to match the file'
        else:
            hint = 'check that the file is a LIT checkpoint and matches --variant'
        raise CheckpointError(f'{source} does not fit {model_name}: ' + '; '.join(parts) + f'; {hint}')
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in mismatched}, strict=strict)


def sidecar_path(path: PathLike) -> Path:
    """The JSON config written next to an exported model: ``lit_s.safetensors`` -> ``lit_s.safetensors.json``
    (the full name, so the ONNX and safetensors exports of one checkpoint do not share a config file)."""
    path = Path(path)
    return path.with_name(path.name + '.json')


def read_safetensors(path: PathLike) -> Dict:
    """A ``lit export`` safetensors file as a checkpoint dict: ``{'model': state_dict, **config}``.

    The config comes from the JSON file next to it, else from the copy in the file's own header (so a file
    moved without its sidecar still loads); a plain safetensors state dict without either loads as an
    official-format file (pass --variant).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state_dict = load_file(path, device='cpu')
        with safe_open(path, framework='pt') as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'{path} is not a readable safetensors file (truncated or corrupt?): {e}')
    sidecar = sidecar_path(path)
    try:
        if sidecar.is_file():
            config = json.loads(sidecar.read_text())
        else:
            config = json.loads(header['lit_config']) if 'lit_config' in header else {}
    except (json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f'cannot read the config of {path} ({sidecar}: {e}); re-export it with lit export')
    if not isinstance(config, dict):
        raise CheckpointError(f'{sidecar} is not a lit export config (a JSON object); re-export it with lit export')
    return {**{k: v for k, v in config.items() if k != 'model'}, 'model': state_dict}


def is_train_checkpoint(raw: Dict) -> bool:
    """A ``lit train`` checkpoint (or an export of one): carries its training config, variant and weights."""
    return isinstance(raw.get('config'), dict) and isinstance(raw.get('model'), dict) and 'variant' in raw


def step_checkpoint_name(step: int) -> str:
    return f'step-{step:07d}.pt'


def step_checkpoints(ckpt_dir: Path) -> List[Path]:
    """``step-*.pt`` files of ``ckpt_dir``, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob('step-*.pt') for m in [STEP_FILE.match(p.name)] if m]
    return [p for _, p in sorted(found)]


def _resumable_files(ckpt_dir: Path) -> List[Path]:
    """last.pt and the step checkpoints, newest first: by modification time, then last.pt, then the higher step.
    The step breaks ties because fast runs write several step files within one tick of a coarse file-system clock
    (1-2 s on some network and FAT file systems; last.pt is a hard link to the newest step file)."""
    def newest_first(p: Path):
        match = STEP_FILE.match(p.name)
        return p.stat().st_mtime_ns, p.name == 'last.pt', int(match.group(1)) if match else -1

    files = [p for p in [Path(ckpt_dir) / 'last.pt', *step_checkpoints(ckpt_dir)] if p.is_file()]
    return sorted(files, key=newest_first, reverse=True)


def find_run_dir(output: Path, name: Optional[str]) -> Path:
    """The run under ``output`` (named ``name`` or its -N copies, if given) with the most recent checkpoint."""
    output = Path(output)
    runs = [d for d in output.glob('*') if (d / 'checkpoints').is_dir() and _resumable_files(d / 'checkpoints')
            and (name is None or is_run_of(d.name, name))]
    if not runs:
        raise LitError(f'--resume auto found no checkpoints in {output}/{name or "*"}/checkpoints; '
                       f'pass --resume PATH, or the --output/--name of the run')
    return max(runs, key=lambda d: _resumable_files(d / 'checkpoints')[0].stat().st_mtime_ns)


def is_run_of(folder_name: str, name: str) -> bool:
    """Whether a run folder is ``name`` or one of its numbered copies ``name-2``, ``name-3``, ... (which
    ``new_run_dir`` makes), and nothing else: not another run whose whole name is digits, such as ``20241127``."""
    return re.fullmatch(re.escape(name) + r'(-[0-9]+)?', folder_name) is not None


def is_resumable_checkpoint(raw: Dict) -> bool:
    """A ``lit train`` checkpoint with its optimizer state (an export or a bare state dict cannot be resumed)."""
    return isinstance(raw.get('config'), dict) and 'optimizer' in raw


def newest_valid_checkpoint(ckpt_dir: Path, log: Callable[[str], None]) -> Tuple[Path, Dict]:
    """(path, contents) of the newest checkpoint in ``ckpt_dir`` that reads back completely.

    A truncated or corrupt newer file (e.g. a disk that filled up, a copy cut short) is reported and skipped,
    and the previous valid one is used.
    """
    bad = []
    for path in _resumable_files(ckpt_dir):
        try:
            raw = read_checkpoint(path)
        except CheckpointError as e:
            bad.append(path)
            log(f'warning: {e}; falling back to the previous checkpoint')
            continue
        if not is_resumable_checkpoint(raw):
            bad.append(path)
            log(f'warning: {path} is not a lit train checkpoint; falling back to the previous checkpoint')
            continue
        if bad:
            log(f'--resume auto: {", ".join(p.name for p in bad)} unreadable, resuming from {path} instead')
        return path, raw
    raise CheckpointError(f'no readable checkpoint in {ckpt_dir} (' + ', '.join(p.name for p in bad) +
                          ' are corrupt); start a new run or pass --resume with another file')


def remove_stale_temporaries(ckpt_dir: Path):
    """Delete ``.NAME.*.tmp`` files a killed save left behind (never a complete checkpoint)."""
    for p in Path(ckpt_dir).glob('.*.tmp'):
        p.unlink(missing_ok=True)


class CheckpointSaver:
    """The checkpoints of one run: ``last.pt`` at every save, ``best.pt`` at an epoch end with a new best metric,
    ``step-XXXXXXX.pt`` on step saves, of which the newest ``keep_last`` are kept, and with ``keep_best`` K > 0 the
    epoch-end states of the K best epochs (``top-epochNNNN.pt``, timm's CheckpointSaver history), ranked by metric
    in ``top.json`` (a tie keeps the earlier epoch). The trainer's rank 0 owns one; a state is the plain dict the
    trainer builds (see ``commands/train.py``). A save that cannot be written (full disk) is a one-line WriteError
    that leaves the earlier files as they were."""

    elsewhere = 'choose another --output'  # the way out of a failed write, for lit train

    def __init__(self, ckpt_dir: PathLike, keep_last: int = 3, keep_best: int = 0):
        self.dir = Path(ckpt_dir)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.dir)

    @property
    def last(self) -> Path:
        return self.dir / 'last.pt'

    def resume_note(self) -> str:
        """How to go on after a save failed (the earlier last.pt is intact)."""
        from litcli.core.runtime import resume_hint

        if self.last.exists():
            return f'the run stopped; once there is space, resume from the last save with: {resume_hint(self.last)}'
        return 'the run stopped before its first checkpoint'

    def save_last(self, state: Dict) -> Path:
        save_checkpoint(state, self.last, self.elsewhere)
        return self.last

    def save_epoch(self, state: Dict, is_best: bool, metric: Optional[float] = None) -> Path:
        """An epoch end: ``last.pt``, ``best.pt`` when the epoch's metric is the best so far, and with
        ``keep_best`` the epoch's own file when ``metric`` ranks among the K best."""
        self.save_last(state)
        if is_best:
            save_checkpoint(state, self.dir / 'best.pt', self.elsewhere)
        if self.keep_best > 0 and metric is not None:
            self._save_top(state, int(state['epoch']), float(metric))
        return self.last

    def _save_top(self, state: Dict, epoch: int, metric: float):
        ranking = [e for e in read_top_index(self.dir) if e['epoch'] != epoch]  # a resumed epoch replaces itself
        if len(ranking) >= self.keep_best and metric <= ranking[self.keep_best - 1]['metric']:
            return  # not among the K best (the earlier of two equal epochs stays)
        name = f'top-epoch{epoch:04d}.pt'
        link = self.dir / f'.{name}.{os.getpid()}.link.tmp'
        try:  # the state was just written as last.pt: link it instead of writing it again
            link.unlink(missing_ok=True)
            os.link(self.last, link)
            os.replace(link, self.dir / name)
            fsync_dir(self.dir)
        except OSError:
            link.unlink(missing_ok=True)
            save_checkpoint(state, self.dir / name, self.elsewhere)
        ranking.append(dict(file=name, epoch=epoch, metric=metric))
        ranking.sort(key=lambda e: (-e['metric'], e['epoch']))
        kept, dropped = ranking[:self.keep_best], ranking[self.keep_best:]
        write_json(self.dir / TOP_INDEX, kept, self.elsewhere)
        for entry in dropped:  # after the index no longer names them
            (self.dir / entry['file']).unlink(missing_ok=True)

    def save_step(self, state: Dict, step: int) -> Path:
        """Write ``step-XXXXXXX.pt``, make ``last.pt`` the same file, and keep only the newest ``keep_last`` steps.

        ``last.pt`` becomes a hard link to the step file (swapped in atomically with a rename), so the state is
        written to disk once; where hard links are not supported it is written a second time.
        """
        step_path = self.dir / step_checkpoint_name(step)
        try:
            save_checkpoint(state, step_path, self.elsewhere)
        except WriteError as e:
            raise WriteError(f'{e}; {self.resume_note()}', path=e.path, errno=e.errno) from None
        link = self.dir / f'.last.pt.{os.getpid()}.link.tmp'
        try:
            link.unlink(missing_ok=True)
            os.link(step_path, link)
            os.replace(link, self.last)
            fsync_dir(self.dir)
        except OSError:
            link.unlink(missing_ok=True)
            save_checkpoint(state, self.last, self.elsewhere)
        for old in step_checkpoints(self.dir)[:-self.keep_last] if self.keep_last > 0 else []:
            old.unlink(missing_ok=True)
        return step_path




def read_top_index(ckpt_dir: PathLike) -> List[Dict]:
    """The ``--keep-best`` ranking of a run's checkpoints folder, best first: ``[{'file', 'epoch', 'metric'}]``
    of the files that exist (a missing or unreadable index is an empty ranking)."""
    path = Path(ckpt_dir) / TOP_INDEX
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and {'file', 'epoch', 'metric'} <= set(e)
            and (Path(ckpt_dir) / str(e['file'])).is_file()]


# ---------------------------------------------------------------------------------------------------------------
# Training state: what a checkpoint holds for an exact resume, and restoring it

# A resumed run keeps its saved LR schedule only when none of these changed (else the new plan is followed, timm's
# way, positioned at the saved epoch/step).
SCHEDULE_KEYS = ('epochs', 'warmup_epochs', 'warmup_lr', 'min_lr', 'lr', 'lr_base', 'scale_lr_bounds', 'sched',
                 'sched_on_epochs', 'batch_size', 'grad_accum_steps',
                 # the dense recipes' (absent from classification configs: equal as None)
                 'updates_per_epoch', 'decay_epochs', 'decay_rate', 'warmup_iters', 'warmup_ratio', 'poly_power')


def plain(obj):
    """Tuples -> lists, Paths -> str, so a config is plain YAML/JSON and loads under weights_only."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def rng_state() -> Dict:
    """torch / numpy / python RNG states as tensors and plain types (weights_only-loadable), for exact resume."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), numpy=[kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached], python=plain(random.getstate()))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()  # the current device's (one device per process)
    return state


def set_rng_state(state: Dict):
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if state.get('cuda') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])



@dataclass
class TrainPosition:
    """Where a run goes on: the epoch and the batch inside it (a step checkpoint is part-way into an epoch),
    optimizer updates so far, the best eval metric, and the epoch's (loss sum, sample count) up to the batch."""
    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_metric: Optional[float] = None
    loss_totals: Tuple[float, int] = (0.0, 0)


@dataclass
class TrainState:
    """The objects whose state a checkpoint holds: model (unwrapped), optimizer, scheduler, fp16 scaler, EMA."""
    model: Any
    optimizer: Any
    scheduler: Any
    loss_scaler: Any = None
    ema: Any = None

    def state_dicts(self) -> Dict:
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=plain(self.scheduler.state_dict()),
                    scaler=self.loss_scaler.state_dict() if self.loss_scaler is not None else None,
                    ema=self.ema.state_dict() if self.ema is not None else None)

    def restore(self, ckpt: Dict, cfg: Dict, world_size: int, rank: int, source, log) -> TrainPosition:
        """Load every state of ``ckpt`` and return where the run goes on. The schedule is set to the saved
        position; each process's random streams are restored when the process count is the same."""
        self.model.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        saved = ckpt['config']
        if cfg.get('task'):
            pass  # a dense schedule is a function of the config and the step alone: rebuilt for this run (its
            # updates per epoch can differ from the saved run's: another process count, a data set edited)
        elif all(saved.get(k) == cfg.get(k) for k in SCHEDULE_KEYS):
            self.scheduler.load_state_dict(ckpt['scheduler'])
        else:  # e.g. a larger --epochs: keep the new plan (timm's way), positioned at the saved epoch/step below
            log('schedule settings changed since the checkpoint: the LR schedule follows the new config')
        if self.loss_scaler is not None and ckpt.get('scaler'):
            self.loss_scaler.load_state_dict(ckpt['scaler'])
        if self.ema is not None and ckpt.get('ema'):
            self.ema.load_state_dict(ckpt['ema'])
        position = TrainPosition(epoch=ckpt.get('resume_epoch', ckpt['epoch'] + 1), batch=ckpt.get('resume_batch', 0),
                                 step=ckpt['step'], best_metric=ckpt.get('best_metric'))
        if position.batch:
            saved_world = ckpt.get('world_size', 1)
            if (saved_world, saved['batch_size'], saved['grad_accum_steps']) != \
                    (world_size, cfg['batch_size'], cfg['grad_accum_steps']):
                raise CheckpointError(
                    f'{source} was saved part-way into epoch {position.epoch} with {saved_world} process(es), '
                    f'batch {saved["batch_size"]} x {saved["grad_accum_steps"]} accumulation; resume it with the '
                    f'same, or resume an epoch-end checkpoint (best.pt, or last.pt after an epoch)')
            position.loss_totals = tuple(ckpt.get('epoch_loss_totals') or (0.0, 0))
        self.scheduler.step(position.epoch)  # the optimizer state carried the old lr: set the lr of this position
        if not cfg.get('sched_on_epochs'):  # per-update schedules (the dense recipes' too)
            self.scheduler.step_update(num_updates=position.step)
        rngs = ckpt.get('rng_ranks') or [ckpt.get('rng')]
        if len(rngs) == world_size and rngs[rank]:
            set_rng_state(rngs[rank])
        elif ckpt.get('rng'):
            log(f'the checkpoint holds the random states of {len(rngs)} process(es), this run has {world_size}: '
                f'random streams are re-seeded (the run is not bit-identical to an uninterrupted one)')
        return position


def resume_source(resume: str, output: Path, name: Optional[str], log) -> Tuple[Path, Dict]:
    """(path, contents) to resume from: the given file, or for ``auto`` the newest valid checkpoint of the run
    under ``output`` (``name`` and its -N copies, if given) with the most recent checkpoint."""
    if resume == 'auto':
        return newest_valid_checkpoint(find_run_dir(output, name) / 'checkpoints', log)
    path = Path(resume)
    raw = read_checkpoint(path)
    if not is_resumable_checkpoint(raw):
        raise CheckpointError(f'{path} is not a lit train checkpoint (no config/optimizer state); '
                              f'use --initial-checkpoint to start from its weights')
    return path, raw
