"""The ``lit`` command line: Typer only. Each command parses its arguments into typed values and calls
``litcli.commands.<name>.run(...)``, imported lazily so ``lit --help`` stays instant (no torch). A ``LitError`` from
the package prints as one line with its exit code; any other exception is a bug and keeps its traceback."""
from enum import Enum
from pathlib import Path
from typing import List, Optional, Tuple, Union

import typer
from typing_extensions import Annotated

from litcli.core.config import CLI_CHOICES, PAPER_VARIANTS, model_name
from litcli.core.errors import LitError, UsageError, one_line

app = typer.Typer(
    name='lit',
    help='Toolkit for the LIT vision transformer (Less is More: Pay Less Attention in Vision Transformers).',
    no_args_is_help=True,
    rich_markup_mode='rich',
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


# ti/s/m/b and the paper's ablation models (litcli.names); Typer validates them (exit 2 with the choices).
Variant = Enum('Variant', {name: name for name in CLI_CHOICES}, type=str)
DenseTask = Enum('DenseTask', {name: name for name in ('retinanet', 'mask-rcnn', 'semantic-fpn')}, type=str)
VariantOrAll = Enum('VariantOrAll', {name: name for name in (*CLI_CHOICES, 'all')}, type=str)


def fail(message: str, code: int = 1):
    """Print a one-line error and exit non-zero (no traceback)."""
    typer.secho(f'Error: {message}', fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


class user_errors:
    """Context manager that turns a LitError from the package into a one-line error and its exit code (1; 2 for a
    UsageError). Anything else is a bug: it propagates with its traceback."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, LitError):
            fail(one_line(str(exc)), exc.exit_code)
        return False


# ---- parsing command-line strings into typed values (no torch) ----
def parse_names(text: Optional[str]) -> List[str]:
    """'a, b,c' -> ['a', 'b', 'c']; None -> []."""
    return [part.strip() for part in (text or '').split(',') if part.strip()]


def parse_ints(text: Optional[str], what: str, example: str = '1,2') -> List[int]:
    """'1,2' -> [1, 2]; a UsageError naming ``what`` otherwise."""
    try:
        return [int(part) for part in parse_names(text)]
    except ValueError:
        raise UsageError(f'{what} {text!r}: give whole numbers, e.g. {example}') from None


def parse_sizes(text: str, what: str = '--img-size') -> List[Tuple[int, int]]:
    """'224' | '224x320' | '224,512,800x1344' -> [(224, 224), (512, 512), (800, 1344)]."""
    sizes = []
    for item in (part.strip() for part in str(text).split(',')):
        parts = item.lower().split('x')
        if not item or len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
            raise UsageError(f"{what} {item!r} is not a size: use N or HxW (e.g. 224 or 800x1344), "
                             "comma-separated for a sweep")
        sizes.append((int(parts[0]), int(parts[-1])))
    return sizes


def parse_token(text: str, what: str) -> Tuple[int, int]:
    """'ROW,COL' -> (row, col)."""
    try:
        r, c = (int(v) for v in text.split(','))
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: use ROW,COL (e.g. '3,3')") from None
    return r, c


def parse_tokens(text: str) -> Union[str, List[Tuple[int, int]]]:
    """'all' | 'center' | 'ROW,COL;ROW,COL' -> 'all' | 'center' | [(row, col), ...]."""
    if text.strip().lower() in ('all', 'center', 'centre'):
        return text.strip().lower()
    tokens = [parse_token(part, 'token') for part in filter(None, (p.strip() for p in text.split(';')))]
    if not tokens:
        raise UsageError("no token given: use 'all', 'center' or ROW,COL[;ROW,COL...]")
    return tokens


def variant_name(variant) -> Optional[str]:
    """The registered name of a Variant choice (None stays None)."""
    return model_name(variant.value) if variant is not None else None


@app.command(rich_help_panel='Inspect')
def env(json: Annotated[bool, typer.Option('--json', help='Machine-readable output.')] = False):
    """Versions, devices, and which DTM backend is active."""
    from litcli.commands import env as command
    command.run(as_json=json)


@app.command(rich_help_panel='Inspect')
def info(
    variant: Annotated[VariantOrAll, typer.Option('--variant', '-v', help='Which LIT variant, or all.')] = VariantOrAll.all,
    image: Annotated[Optional[Path], typer.Option(help='Photo to run through the model (default: a cat in assets/).',
                                                  exists=True, dir_okay=False)] = None,
    img_size: Annotated[int, typer.Option('--img-size', min=32, help='Input size (a multiple of 32).')] = 224,
):
    """Structure, exact parameter counts and a timed forward pass of each variant on a real photo."""
    from litcli.commands import info as command
    variants = list(PAPER_VARIANTS) if variant.value == 'all' else [model_name(variant.value)]
    with user_errors():
        command.run(variants, image, img_size)


@app.command(rich_help_panel='Inspect')
def weights(
    download: Annotated[Optional[str], typer.Option(
        '--download', '-d',
        help='Download these released weights into the cache, verified, unless cached: names as listed, '
             'comma-separated (ti, s, pvt_s_msa, retinanet_lit_ti, ...), or all.')] = None,
    json_out: Annotated[bool, typer.Option('--json', help='Print JSON instead of a table.')] = False,
):
    """The released weights (ImageNet-1k classifiers; COCO / ADE20K dense models): paper results, URL, and whether
    and where each is cached."""
    from litcli.commands import weights as command
    with user_errors():
        result = command.run(None if download is None else parse_names(download))
    command.print_result(result, as_json=json_out)


@app.command(rich_help_panel='Inspect')
def flops(
    variant: Annotated[Variant, typer.Option('--variant', '-v', help='LIT variant (ti, s, m, b) or an ablation '
                                                                     'model.')] = Variant.s,
    remove_msa: Annotated[Optional[str], typer.Option('--remove-msa', help='Stages to strip of attention, e.g. 1,2 '
                                                      '(Table 5: pvt_s_msa w/o MSA in those stages).')] = None,
    img_size: Annotated[Optional[str], typer.Option(
        '--img-size', help='N or HxW, multiples of 32; a comma list is a sweep (e.g. 224,512,800x1344). Default 224; '
                           'with --task the paper\'s size (800x1280 detection, 512x512 segmentation), any size.',
        show_default=False)] = None,
    task: Annotated[Optional[str], typer.Option(
        '--task', help='A dense model of the paper instead (Tables 6-8): retinanet, mask-rcnn or semantic-fpn, with '
                       '--variant ti or s: parameters and GMACs by part (backbone, neck, heads).',
        show_default=False)] = None,
    batch: Annotated[int, typer.Option(help='Batch size (MACs scale linearly).')] = 1,
    compare: Annotated[Optional[str], typer.Option(help='timm model names to count alongside, comma-separated '
                                                        '(e.g. swin_tiny_patch4_window7_224,resnet50).')] = None,
    two_x: Annotated[bool, typer.Option('--two-x', help='Print 2 x MAC (FLOPs as torch counts them) instead of '
                                                        'MACs (the papers\' "FLOPs").')] = False,
    depth: Annotated[int, typer.Option(min=0, help='Also print the per-module table to this depth (0: off).')] = 0,
    counter: Annotated[str, typer.Option(help="auto (fvcore if installed), fvcore, or torch (FlopCounterMode/2).")] = 'auto',
    json_out: Annotated[bool, typer.Option('--json', help='Print machine-readable JSON instead of tables.')] = False,
    json_file: Annotated[Optional[Path], typer.Option('--json-file', dir_okay=False,
                                                      help='Also write the JSON to this file.')] = None,
    plot: Annotated[Optional[Path], typer.Option(dir_okay=False, help='Save GMACs against input size as a PNG.')] = None,
):
    """Parameters and FLOPs (as MACs, the papers' convention), per stage: MLP / attention / DTM; with --task, of a
    detection or segmentation model by part."""
    from litcli.commands import flops as command
    with user_errors():
        if task is not None:
            given = [flag for flag, used in (('--remove-msa', remove_msa), ('--compare', compare), ('--plot', plot),
                                             ('--batch', batch != 1), ('--depth', depth)) if used]
            if given:
                raise UsageError(f'{", ".join(given)} count classification models; drop '
                                 f'{"it" if len(given) == 1 else "them"} with --task {task}')
            command.run_dense(task, variant.value, parse_sizes(img_size) if img_size else None, two_x, counter,
                              json_out, json_file)
            return
        command.run(variant_name(variant), parse_sizes(img_size or '224'), batch, parse_names(compare), two_x, depth,
                    counter, json_out, json_file, plot,
                    parse_ints(remove_msa, '--remove-msa') if remove_msa else None)



@app.command(rich_help_panel='Inspect')
def bench(
    variant: Annotated[Variant, typer.Option('--variant', '-v', help='LIT variant (ti, s, m, b) or an ablation '
                                                                     'model.')] = Variant.s,
    compare: Annotated[Optional[str], typer.Option(help='timm models to time alongside, comma-separated '
                                                        '(e.g. swin_tiny_patch4_window7_224,pvt_v2_b2).')] = None,
    task: Annotated[Optional[str], typer.Option(
        '--task', help='A dense model of the paper beside its ResNet-50 counterpart instead: retinanet, mask-rcnn or '
                       'semantic-fpn, with --variant ti or s.', show_default=False)] = None,
    mode: Annotated[str, typer.Option(help='infer (forward) or train (forward + backward + AdamW step).')] = 'infer',
    batch_size: Annotated[Optional[int], typer.Option('--batch-size', '-b', min=1, show_default=False,
                                                      help='Images per step (default 16; 1 with --task).')] = None,
    img_size: Annotated[Optional[str], typer.Option(
        '--img-size', help='N or NxN (square), multiples of 32; a comma list is a sweep (224,384,512). Default 224; '
                           'with --task any HxW, default 320x512 detection / 512x512 segmentation on a CPU, the '
                           'paper\'s 800x1280 / 512x512 on a GPU.', show_default=False)] = None,
    amp_dtype: Annotated[Optional[str], typer.Option('--amp-dtype', help='Autocast in bfloat16 or float16 (CUDA '
                                                                         'only), as lit train (default: float32).')] = None,
    amp: Annotated[Optional[str], typer.Option('--amp', hidden=True, help='Old spelling of --amp-dtype (bf16, '
                                                                          'fp16).')] = None,
    compile: Annotated[bool, typer.Option('--compile', help='torch.compile each model.')] = False,
    channels_last: Annotated[bool, typer.Option('--channels-last')] = False,
    device: Annotated[Optional[str], typer.Option(help='cpu, cuda or cuda:N (default: cuda if available).')] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help='CPU threads (torch.set_num_threads).')] = None,
    warmup: Annotated[int, typer.Option(min=0)] = 2,
    repeats: Annotated[int, typer.Option(min=1, help='Interleaved timed repeats per model.')] = 7,
    memory: Annotated[bool, typer.Option(help='Measure peak memory (on CPU: one fresh process per model).')] = True,
    drop_path: Annotated[float, typer.Option(min=0.0, max=1.0, help='Train mode: the same stochastic-depth rate '
                                             'for every model (timm Swin-T default).')] = 0.1,
    profile: Annotated[bool, typer.Option('--profile', help='Also profile one step per model (torch.profiler): '
                                          'share of time per kind of op and the top ops.')] = False,
    json_out: Annotated[bool, typer.Option('--json', help='Print JSON instead of tables.')] = False,
    csv: Annotated[Optional[Path], typer.Option(dir_okay=False, help='Also write a CSV.')] = None,
    plot: Annotated[Optional[Path], typer.Option(dir_okay=False, help='Throughput and memory against input size (PNG).')] = None,
):
    """Images/s, ms/step, peak memory and share of the device's GEMM rate, models timed interleaved."""
    from litcli.commands import bench as command
    from litcli.core.analysis.benchmark import BenchConfig
    with user_errors():
        if amp is not None and amp_dtype is not None:
            raise UsageError(f'--amp {amp} and --amp-dtype {amp_dtype}: give one (--amp is the old spelling)')
        if task is not None and (compare or plot):
            raise UsageError(f'{"--compare" if compare else "--plot"} is for classification models; --task {task} '
                             f'compares with the ResNet-50 counterpart on its own')
        sizes = parse_sizes(img_size) if img_size else [] if task else [(224, 224)]
        batch = batch_size or (1 if task else 16)
        cfg = BenchConfig(mode=mode, batch_size=batch, device=device, amp=amp_dtype or amp, compile=compile, channels_last=channels_last, threads=threads, warmup=warmup,
                          repeats=repeats, memory=memory, drop_path=drop_path, profile=profile)
        command.run(variant.value if task else variant_name(variant), parse_names(compare), cfg, sizes, json_out,
                    csv, plot, task)

def use_ema_option():
    return typer.Option('--use-ema/--no-use-ema', help='EMA or raw weights of a --model-ema run (default: the '
                                                     'ones its metrics came from).')


def pretrained_option():
    return typer.Option('--pretrained', help='The released ImageNet-1k weights of --variant instead of --checkpoint '
                                             '(downloaded once into the torch hub cache; see lit weights).')


# ---- Train ----
HYPER = 'Hyperparameters (default: the recipe of --variant)'


@app.command(rich_help_panel='Train')
def train(
    variant: Annotated[Optional[Variant], typer.Option(
        '--variant', '-v',
        help='LIT variant; its official recipe is the default config (none: the small built-in demo config on '
             'built-in data, else ti). With --task: ti or s.')] = None,
    task: Annotated[Optional[DenseTask], typer.Option(
        '--task',
        help='Train a detector or segmenter with a LIT backbone and the paper\'s COCO / ADE20K recipe instead of a '
             'classifier (--data coco:ROOT, ade20k:ROOT, fashion-mnist-det or fashion-mnist-seg).')] = None,
    data: Annotated[Optional[str], typer.Option(
        help='ImageFolder root (train/ and val/ class subfolders), a tar of one, wds:PATTERN shards, or a built-in '
             'set (fashion-mnist, fashion-mnist-mini). Default: the full Fashion-MNIST where it is found, else the '
             'mini set. With --task: coco:ROOT, ade20k:ROOT, fashion-mnist-det or fashion-mnist-seg.')] = None,
    img_scale: Annotated[Optional[str], typer.Option(
        '--img-scale',
        help='--task only: resize keeping the aspect ratio to fit LONGxSHORT (recipe: 1333x800 detection, '
             '2048x512 segmentation, scaled 0.5-2x in training).')] = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        '--data-dir',
        help='Folder holding a built-in set\'s files.')] = None,
    num_classes: Annotated[Optional[int], typer.Option(
        '--num-classes', min=1,
        help='Must match the data (checked).')] = None,
    img_size: Annotated[Optional[int], typer.Option('--img-size', min=32, help='Input size, a multiple of 32.')] = None,
    config: Annotated[Optional[Path], typer.Option(
        '--config',
        help='YAML config (e.g. litcli/recipes/lit_s.yaml); recipe < file < flags.', dir_okay=False)] = None,
    resume: Annotated[Optional[str], typer.Option(
        help='Continue a run: PATH to a checkpoint of it, or auto (the newest valid checkpoint of the newest run '
             'under --output, of --name if given).')] = None,
    initial_checkpoint: Annotated[Optional[Path], typer.Option(
        '--initial-checkpoint',
        help='Start from these weights only (official .pth too); the classifier is dropped when the class count '
             'differs.', dir_okay=False)] = None,
    pretrained: Annotated[bool, typer.Option(
        '--pretrained',
        help='Start from the released ImageNet-1k weights of --variant (fine-tuning; downloaded once into the torch '
             'hub cache, see lit weights); the classifier is re-initialised for another class count. With --task: '
             'the backbone\'s (neck and heads random; a released dense model: --initial-checkpoint NAME).')] = False,
    name: Annotated[Optional[str], typer.Option(help='Run name (default VARIANT-DATA; -2, -3... if taken).')] = None,
    output: Annotated[Path, typer.Option(help='Parent folder of run directories.')] = Path('runs/train'),
    exist_ok: Annotated[bool, typer.Option(
        '--exist-ok',
        help='Write into an existing run directory of that name.')] = False,
    strict_data: Annotated[Optional[bool], typer.Option(
        '--strict-data',
        help='Stop at the first unreadable image instead of skipping it.')] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, rich_help_panel=HYPER, help='Epochs (300).')] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        '--batch-size', '-b', min=1, rich_help_panel=HYPER,
        help='Per-device batch (128).')] = None,
    grad_accum_steps: Annotated[Optional[int], typer.Option(
        '--grad-accum-steps', min=1, rich_help_panel=HYPER,
        help='Batches per optimizer update (1).')] = None,
    lr: Annotated[Optional[float], typer.Option(
        min=0.0, rich_help_panel=HYPER,
        help='Absolute peak LR. Default: --lr-base x global batch / 512 (global = batch x processes x accum): 1e-3'
             ' at 1024.')] = None,
    lr_base: Annotated[Optional[float], typer.Option(
        '--lr-base', min=0.0, rich_help_panel=HYPER,
        help='LR at global batch 512, scaled linearly (5e-4).')] = None,
    warmup_epochs: Annotated[Optional[int], typer.Option(
        '--warmup-epochs', min=0, rich_help_panel=HYPER,
        help='Linear warmup epochs (Ti 5, S/M/B 20).')] = None,
    warmup_lr: Annotated[Optional[float], typer.Option(
        '--warmup-lr', min=0.0, rich_help_panel=HYPER,
        help='Warmup start LR. Ti: absolute 1e-6; S/M/B: 5e-7 scaled by global batch/512 (1e-6 at 1024).')] = None,
    min_lr: Annotated[Optional[float], typer.Option(
        '--min-lr', min=0.0, rich_help_panel=HYPER,
        help='Cosine floor, shared by all groups (so the offset group stays at it). Ti: absolute 1e-5; S/M/B: 5e-6'
             ' scaled by global batch/512 (1e-5 at 1024).')] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        '--weight-decay', min=0.0, rich_help_panel=HYPER,
        help='AdamW weight decay (0.05; none on 1-D params, biases, cls token, rel-pos tables).')] = None,
    drop_path: Annotated[Optional[float], typer.Option(
        '--drop-path', min=0.0, max=1.0, rich_help_panel=HYPER,
        help='Stochastic depth (Ti .1, S .2, M .3, B .5).')] = None,
    clip_grad: Annotated[Optional[float], typer.Option(
        '--clip-grad', min=0.0, rich_help_panel=HYPER,
        help='Global grad-norm clip (S/M/B 5.0, Ti none; 0 = off).')] = None,
    aa: Annotated[Optional[str], typer.Option(
        rich_help_panel=HYPER,
        help="timm auto-augment policy (rand-m9-mstd0.5-inc1; 'none' = off).")] = None,
    reprob: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, rich_help_panel=HYPER,
        help='Random-erasing probability (0.25).')] = None,
    mixup: Annotated[Optional[float], typer.Option(
        min=0.0, rich_help_panel=HYPER,
        help='Mixup alpha (0.8; 0 = off).')] = None,
    cutmix: Annotated[Optional[float], typer.Option(
        min=0.0, rich_help_panel=HYPER,
        help='CutMix alpha (1.0; 0 = off).')] = None,
    smoothing: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, rich_help_panel=HYPER,
        help='Label smoothing (0.1).')] = None,
    amp: Annotated[Optional[bool], typer.Option(
        '--amp/--no-amp', rich_help_panel=HYPER,
        help='Autocast (default: on for CUDA, off on CPU; the demo: also on CPUs with native bf16).')] = None,
    amp_dtype: Annotated[Optional[str], typer.Option(
        '--amp-dtype', rich_help_panel=HYPER,
        help='bfloat16 (default where supported) or float16 (with a grad scaler).')] = None,
    model_ema: Annotated[Optional[bool], typer.Option(
        '--model-ema', rich_help_panel=HYPER,
        help='Keep an EMA of the weights (timm ModelEmaV3), evaluate it and pick best.pt by it.')] = None,
    model_ema_decay: Annotated[Optional[float], typer.Option(
        '--model-ema-decay', min=0.0, max=1.0, rich_help_panel=HYPER,
        help='EMA decay per optimizer step (0.9998).')] = None,
    model_ema_warmup: Annotated[Optional[bool], typer.Option(
        '--model-ema-warmup', rich_help_panel=HYPER,
        help='Ramp the EMA decay up over the first steps (timm\'s use_warmup).')] = None,
    channels_last: Annotated[Optional[bool], typer.Option(
        '--channels-last', rich_help_panel=HYPER,
        help='channels_last memory format.')] = None,
    torchcompile: Annotated[Optional[bool], typer.Option(
        '--torchcompile', rich_help_panel=HYPER,
        help='torch.compile the model.')] = None,
    grad_checkpointing: Annotated[Optional[bool], typer.Option(
        '--grad-checkpointing', rich_help_panel=HYPER,
        help='Activation checkpointing (on for B).')] = None,
    seed: Annotated[Optional[int], typer.Option(rich_help_panel=HYPER, help='Random seed (0).')] = None,
    workers: Annotated[Optional[int], typer.Option(
        '--workers', '-j', min=0,
        help='DataLoader worker processes (4).')] = None,
    threads: Annotated[Optional[int], typer.Option(
        '--threads', min=1,
        help='CPU runs: torch threads per process (default: torch\'s, one per core).')] = None,
    device: Annotated[Optional[str], typer.Option(help='cpu, cuda or cuda:N (default: cuda if available).')] = None,
    log_interval: Annotated[Optional[int], typer.Option(
        '--log-interval', min=1,
        help='Updates between log lines when not on a terminal (50).')] = None,
    save_interval: Annotated[Optional[int], typer.Option(
        '--save-interval', min=0, rich_help_panel='Distributed and fault tolerance',
        help='Also checkpoint every N optimizer steps (checkpoints/step-N.pt; 0 = epoch ends only, the default).'
             )] = None,
    keep_last: Annotated[Optional[int], typer.Option(
        '--keep-last', min=1, rich_help_panel='Distributed and fault tolerance',
        help='Step checkpoints kept besides last.pt/best.pt (3).')] = None,
    keep_best: Annotated[Optional[int], typer.Option(
        '--keep-best', min=0, rich_help_panel='Distributed and fault tolerance',
        help='Also keep the checkpoints of the K best epochs by eval top-1 (checkpoints/top-epochNNNN.pt, for lit '
             'avg-checkpoints; 0 = off, the default).')] = None,
    log: Annotated[Optional[List[str]], typer.Option(
        '--log', help='Experiment tracker, repeatable: tensorboard (events in RUN/tensorboard) or wandb (offline '
                      'unless WANDB_MODE is set; RUN/wandb). Optional extras: pip install \'litcli\\[track]\' / '
                      '\'litcli\\[wandb]\'.')] = None,
    sync_bn: Annotated[Optional[bool], typer.Option(
        '--sync-bn/--no-sync-bn', rich_help_panel='Distributed and fault tolerance',
        help='SyncBatchNorm for the DTM BatchNorms across processes (CUDA only; default: off, or as the resumed '
             'run).')] = None,
    nproc_per_node: Annotated[Optional[int], typer.Option(
        '--nproc-per-node', min=1, rich_help_panel='Distributed and fault tolerance',
        help='Re-launch under torchrun --standalone with N processes on this machine.')] = None,
):
    """Train LIT with the paper's recipe (or the fast built-in demo): config, metrics, curves, checkpoints."""
    if nproc_per_node is not None:
        import sys

        from litcli.core.runtime import relaunch_with_torchrun
        with user_errors():
            relaunch_with_torchrun(nproc_per_node, sys.argv)
    from litcli.commands import train as command
    from litcli.core.runtime import TrainingStopped
    overrides = dict(
        data=data, data_dir=str(data_dir) if data_dir else None, num_classes=num_classes, img_size=img_size,
        strict_data=strict_data, epochs=epochs, batch_size=batch_size, grad_accum_steps=grad_accum_steps, lr=lr,
        lr_base=lr_base, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr, min_lr=min_lr, weight_decay=weight_decay,
        drop_path=drop_path, aa=aa, reprob=reprob, mixup=mixup, cutmix=cutmix, smoothing=smoothing, amp=amp,
        amp_dtype=amp_dtype, model_ema=model_ema, model_ema_decay=model_ema_decay, model_ema_warmup=model_ema_warmup,
        channels_last=channels_last, torchcompile=torchcompile, threads=threads,
        grad_checkpointing=grad_checkpointing, seed=seed, workers=workers, device=device, log_interval=log_interval)
    overrides['clip_grad'] = clip_grad  # 0 turns clipping off
    with user_errors():
        overrides['img_scale'] = list(parse_img_scale(img_scale)) if img_scale else None
        try:
            command.run(variant_name(variant), config, overrides, resume=resume, initial_checkpoint=initial_checkpoint,
                        pretrained=pretrained, name=name, output=output, exist_ok=exist_ok, save_interval=save_interval,
                        keep_last=keep_last, sync_bn=sync_bn, keep_best=keep_best, log=log,
                        task=task.value if task is not None else None)
        except TrainingStopped as e:  # SIGTERM/SIGINT: checkpoint saved, resume command already printed
            raise typer.Exit(e.exit_code)


@app.command('eval', rich_help_panel='Train')
def eval_(
    model: Annotated[Optional[str], typer.Argument(
        metavar='[NAME]', show_default=False,
        help='With --pretrained: the released model to evaluate, a variant (lit_s) or a detection / segmentation '
             'model (retinanet_lit_ti ... semantic_fpn_lit_s; see lit weights).')] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        help='lit train checkpoint (classification or --task) or official .pth (or --pretrained).',
        dir_okay=False)] = None,
    variant: Annotated[Optional[Variant], typer.Option(
        '--variant', '-v',
        help='Needed for official files (lit train checkpoints carry it).')] = None,
    data: Annotated[Optional[str], typer.Option(
        help='Folder of class subfolders (or a root with val/), or a built-in set name; for a detection / '
             'segmentation model coco:ROOT, ade20k:ROOT, fashion-mnist-det or -seg (their validation split). '
             'Default: the checkpoint\'s training data.')] = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        '--data-dir',
        help='Folder holding a built-in set\'s files.')] = None,
    img_size: Annotated[Optional[int], typer.Option(
        '--img-size', min=32,
        help='Input size (default: the checkpoint\'s, 224 for official files).')] = None,
    crop_pct: Annotated[Optional[float], typer.Option(
        '--crop-pct', min=0.1, max=1.0,
        help='Resize to size/crop_pct, then center crop (0.875).')] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        '--batch-size', '-b', min=1,
        help='Images per forward (64; detection / segmentation: 1, the official test).')] = None,
    workers: Annotated[Optional[int], typer.Option(
        '--workers', '-j', min=0,
        help='DataLoader workers (default: min(4, CPU cores)).')] = None,
    device: Annotated[Optional[str], typer.Option(help='cpu, cuda or cuda:N (default: cuda if available).')] = None,
    out: Annotated[Optional[Path], typer.Option(
        help='Folder for eval.json (default runs/eval/VARIANT-DATA[-N]).')] = None,
    strict_data: Annotated[bool, typer.Option('--strict-data', help='Stop at the first unreadable image.')] = False,
    use_ema: Annotated[Optional[bool], use_ema_option()] = None,
    pretrained: Annotated[bool, pretrained_option()] = False,
    per_class: Annotated[bool, typer.Option(
        '--per-class', help='Also accuracy (top-1, top-5), precision, recall and F1 of every class, with its name '
                            '(per_class.csv); detection: AP per class, segmentation: IoU and accuracy.')] = False,
    confusion_matrix: Annotated[bool, typer.Option(
        '--confusion-matrix', help='Also confusion_matrix.png (normalised per true class) and .csv (counts).')] = False,
    results_file: Annotated[Optional[Path], typer.Option(
        '--results-file', dir_okay=False,
        help='Per image: path, true label, top-k labels and probabilities (FILE.csv or FILE.json, timm '
             'inference.py layout). Not for WebDataset shards, which keep no file paths: evaluate the image '
             'folder they were packed from. Detection: every detection in COCO\'s results format (FILE.json).'
    )] = None,
    topk: Annotated[int, typer.Option('--topk', '-k', min=1, help='Classes per image in --results-file.')] = 5,
    force: Annotated[bool, typer.Option('--force', help='Overwrite files already in --out and the '
                                                        '--results-file.')] = False,
    json_out: Annotated[bool, typer.Option('--json', help='Print the result as JSON instead of tables.')] = False,
):
    """Top-1/top-5, loss and images/s of a checkpoint on a dataset, per class and per image on request; eval.json."""
    from litcli.commands import eval as command
    with user_errors():
        result = command.run(checkpoint, variant_name(variant), data, str(data_dir) if data_dir else None, img_size,
                             crop_pct, batch_size, workers, device, out, strict_data, use_ema, pretrained=pretrained,
                             per_class=per_class, confusion_matrix=confusion_matrix, results_file=results_file,
                             topk=topk, force=force, name=model)
    if result is not None:  # None on torchrun ranks other than 0
        command.print_result(result, as_json=json_out)


# ---- Deploy ----
class ExportFormat(str, Enum):
    onnx = 'onnx'
    safetensors = 'safetensors'
    torchscript = 'torchscript'


@app.command(rich_help_panel='Deploy')
def predict(
    images: Annotated[list[str], typer.Argument(help='Image files, folders (searched recursively) or glob patterns.',
                                                show_default=False)],
    checkpoint: Annotated[Optional[Path], typer.Option(
        help='Trained weights: official .pth, lit train checkpoint, or lit export .safetensors.',
        dir_okay=False)] = None,
    variant: Annotated[Optional[Variant], typer.Option(
        '--variant', '-v',
        help='Model variant (default: recorded in the checkpoint or recognised from its keys).')] = None,
    topk: Annotated[int, typer.Option('--topk', '-k', min=1, help='Classes to show per image.')] = 5,
    json_out: Annotated[bool, typer.Option('--json', help='Print JSON instead of tables.')] = False,
    batch_size: Annotated[int, typer.Option('--batch-size', '-b', min=1)] = 16,
    img_size: Annotated[Optional[int], typer.Option(
        '--img-size', min=32,
        help='Input size, a multiple of 32 (of 16 for a 2x2-patch checkpoint; default: the checkpoint\'s, 224 for '
             'official files).')] = None,
    device: Annotated[Optional[str], typer.Option(help='cpu, cuda or cuda:N (default: cuda if available).')] = None,
    use_ema: Annotated[Optional[bool], use_ema_option()] = None,
    pretrained: Annotated[bool, pretrained_option()] = False,
):
    """Top-k classes of images (ImageNet names for 1000-class weights, the run's classes for lit train)."""
    from litcli.commands import predict as command
    with user_errors():
        result = command.run(images, checkpoint, variant_name(variant), topk, batch_size, img_size, device, use_ema,
                             pretrained=pretrained)
    command.print_result(result, as_json=json_out)


def dense_weights_options(models: str):
    checkpoint = typer.Option(
        help='Trained weights: an official release file as it is (mmdet/mmseg), a lit dense checkpoint or its '
             '.safetensors export.', dir_okay=False)
    pretrained = typer.Option(
        '--pretrained', help=f'The released weights of a model ({models}), downloaded once into the torch hub '
                             f'cache (see lit weights).', show_default=False)
    return checkpoint, pretrained


DETECT_CHECKPOINT, DETECT_PRETRAINED = dense_weights_options('retinanet_lit_ti, retinanet_lit_s, mask_rcnn_lit_ti, '
                                                             'mask_rcnn_lit_s')
SEGMENT_CHECKPOINT, SEGMENT_PRETRAINED = dense_weights_options('semantic_fpn_lit_ti, semantic_fpn_lit_s')
DEVICE_OPTION = typer.Option(help='cpu, cuda or cuda:N (default: cuda if available).')


def img_scale_option(official: str):
    return typer.Option('--img-scale', help=f'Test resize: keep the aspect ratio, fit into LONGxSHORT (default: the '
                                            f'official {official}; smaller is faster, less accurate).')


def parse_img_scale(text: Optional[str]) -> Optional[Tuple[int, int]]:
    if text is None:
        return None
    (long, short), *rest = parse_sizes(text, '--img-scale')
    if rest or min(long, short) < 32:
        raise UsageError(f'--img-scale {text!r}: give one LONGxSHORT of at least 32 px, e.g. 1333x800')
    return long, short


@app.command(rich_help_panel='Deploy')
def detect(
    images: Annotated[list[str], typer.Argument(help='Image files, folders (searched recursively) or glob patterns.',
                                                show_default=False)],
    checkpoint: Annotated[Optional[Path], DETECT_CHECKPOINT] = None,
    pretrained: Annotated[Optional[str], DETECT_PRETRAINED] = None,
    score_thr: Annotated[float, typer.Option('--score-thr', help='Keep detections scoring at least this (0-1).')] = 0.3,
    out: Annotated[Optional[Path], typer.Option(
        help='Output folder (default: a new runs/detect/MODEL[-N]); existing files there need --force.',
        file_okay=False)] = None,
    force: Annotated[bool, typer.Option('--force', help='Overwrite existing files in --out.')] = False,
    json_out: Annotated[bool, typer.Option('--json', help='Print the detections as JSON.')] = False,
    device: Annotated[Optional[str], DEVICE_OPTION] = None,
    img_scale: Annotated[Optional[str], img_scale_option('1333x800')] = None,
):
    """Objects in photos (RetinaNet / Mask R-CNN LIT, COCO): a PNG per image with boxes, masks, names and scores,
    and detections.json in COCO results format."""
    from litcli.commands import detect as command
    with user_errors():
        result = command.run(images, checkpoint, pretrained, score_thr, out, force, device,
                             parse_img_scale(img_scale))
    command.print_result(result, as_json=json_out)


@app.command(rich_help_panel='Deploy')
def segment(
    images: Annotated[list[str], typer.Argument(help='Image files, folders (searched recursively) or glob patterns.',
                                                show_default=False)],
    checkpoint: Annotated[Optional[Path], SEGMENT_CHECKPOINT] = None,
    pretrained: Annotated[Optional[str], SEGMENT_PRETRAINED] = None,
    out: Annotated[Optional[Path], typer.Option(
        help='Output folder (default: a new runs/segment/MODEL[-N]); existing files there need --force.',
        file_okay=False)] = None,
    force: Annotated[bool, typer.Option('--force', help='Overwrite existing files in --out.')] = False,
    json_out: Annotated[bool, typer.Option('--json', help='Print the classes found as JSON.')] = False,
    device: Annotated[Optional[str], DEVICE_OPTION] = None,
    img_scale: Annotated[Optional[str], img_scale_option('2048x512, short side 512')] = None,
):
    """Semantic segmentation of photos (Semantic FPN LIT, ADE20K): a colour overlay with a legend of the classes
    present and the label map (palette PNG) per image."""
    from litcli.commands import segment as command
    with user_errors():
        result = command.run(images, checkpoint, pretrained, out, force, device, parse_img_scale(img_scale))
    command.print_result(result, as_json=json_out)


@app.command(rich_help_panel='Deploy')
def export(
    fmt: Annotated[ExportFormat, typer.Option('--format', '-f', help='Output format.')],
    checkpoint: Annotated[Optional[Path], typer.Option(
        help='Official .pth, lit train checkpoint or .safetensors export (or --pretrained).', dir_okay=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        help='Output file (default: next to the checkpoint, e.g. lit_s.safetensors; --pretrained: in the current '
             'folder); its JSON config is written beside it with .json added (lit_s.safetensors.json).')] = None,
    variant: Annotated[Optional[Variant], typer.Option(
        '--variant', '-v',
        help='Model variant (default: recorded in the checkpoint or recognised from its keys).')] = None,
    force: Annotated[bool, typer.Option('--force', help='Overwrite an existing output.')] = False,
    img_size: Annotated[Optional[int], typer.Option(
        '--img-size', min=32,
        help='Input size of the exported model, a multiple of 32 (of 16 for a 2x2-patch checkpoint; default: the '
             'checkpoint\'s).')] = None,
    opset: Annotated[int, typer.Option(min=1, help='ONNX opset (18+, the oldest torch\'s exporter writes).')] = 18,
    use_ema: Annotated[Optional[bool], use_ema_option()] = None,
    pretrained: Annotated[bool, pretrained_option()] = False,
):
    """Deployable model files: safetensors + JSON config, ONNX (checked with onnxruntime) or TorchScript."""
    from litcli.commands import export as command
    with user_errors():
        result = command.run(checkpoint, fmt.value, out, variant_name(variant), force, img_size, opset, use_ema,
                             pretrained=pretrained)
    command.print_result(result)


@app.command('viz-offsets', rich_help_panel='Figures')
def viz_offsets(
    images: Annotated[Optional[list[Path]], typer.Argument(
        help='Images PIL reads (fed as the checkpoint was trained: resized, or padded for the built-in sets). '
             'None: --num-images images of different classes from --data.', exists=True, dir_okay=False,
        show_default=False)] = None,
    variant: Annotated[Optional[Variant], typer.Option('--variant', '-v',
                                                       help='LIT variant (default: from the checkpoint, else ti).')] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help='Official .pth or lit checkpoint.', exists=True,
                                                       dir_okay=False)] = None,
    data: Annotated[Optional[str], typer.Option(
        help='Take the images from a built-in set (fashion-mnist, fashion-mnist-mini: the test split) or a folder '
             '(its val/ split). Default: the checkpoint\'s own validation data.')] = None,
    data_dir: Annotated[Optional[Path], typer.Option('--data-dir', help='Folder holding a built-in set\'s files.')] = None,
    num_images: Annotated[int, typer.Option('--num-images', min=1,
                                            help='Images from --data, one per class in turn.')] = 4,
    img_size: Annotated[Optional[int], typer.Option('--img-size', min=32, help='Input size, a multiple of 32 '
                                                    '(16 for a 2x2-patch checkpoint; default: the checkpoint\'s, '
                                                    'else 224).')] = None,
    tokens: Annotated[str, typer.Option(help="Per-token figures: 'all', 'center' or 'ROW,COL;ROW,COL'.")] = 'all',
    step: Annotated[Optional[int], typer.Option(min=1, help='Overview shows every STEP-th token row/col.')] = None,
    output: Annotated[Path, typer.Option(help='Parent folder of the output folder.')] = Path('runs/viz-offsets'),
    name: Annotated[Optional[str], typer.Option(help='Output folder name (default IMAGE-VARIANT; -2, -3... if taken).')] = None,
    exist_ok: Annotated[bool, typer.Option('--exist-ok', help='Write into an existing folder of that name.')] = False,
    normalize: Annotated[bool, typer.Option(help='Normalise with the checkpoint\'s mean/std (the official script '
                                                 'had none).')] = True,
    json_out: Annotated[bool, typer.Option('--json', help='Also write points.json (sampling points, stats).')] = False,
    save_npy: Annotated[bool, typer.Option('--save-npy', help='Also write offsets.npz (raw offsets, points).')] = False,
    summary: Annotated[bool, typer.Option(help='Print per-DTM offset statistics.')] = False,
    device: Annotated[Optional[str], typer.Option(help='cpu, cuda or cuda:N (default: cuda if available).')] = None,
    use_ema: Annotated[Optional[bool], use_ema_option()] = None,
    pretrained: Annotated[bool, pretrained_option()] = False,
):
    """Where Deformable Token Merging looks: sampling points traced back onto the image (paper Fig. 2)."""
    from litcli.commands import viz_offsets as command
    with user_errors():
        command.run(images or (), variant_name(variant), checkpoint, output, name, exist_ok, summary=summary,
                    pretrained=pretrained,
                    data=data, data_dir=str(data_dir) if data_dir else None, num_images=num_images, use_ema=use_ema,
                    img_size=img_size, device=device, tokens=parse_tokens(tokens), normalize=normalize, step=step,
                    save_json=json_out, save_npy=save_npy)


@app.command('attn-maps', rich_help_panel='Figures')
def attn_maps(
    stage: Annotated[str, typer.Option(help='Stage with attention (LIT: 3 or 4), or all.')] = 'all',
    variant: Annotated[Optional[Variant], typer.Option('--variant', '-v',
                                                       help='LIT variant (default: from the checkpoint, else s).')] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help='Official .pth or lit checkpoint.', exists=True,
                                                       dir_okay=False)] = None,
    data: Annotated[Optional[str], typer.Option(help='A built-in set (fashion-mnist, fashion-mnist-mini: the test '
                                                     'split), an ImageFolder tree (its val/ split) or a flat folder '
                                                     'of images. Default: the checkpoint\'s own validation data, '
                                                     'else the photos in assets/.')] = None,
    data_dir: Annotated[Optional[Path], typer.Option('--data-dir', help='Folder holding a built-in set\'s files.')] = None,
    num_images: Annotated[int, typer.Option('--num-images', help='Images to average over.')] = 100,
    batch_size: Annotated[int, typer.Option('--batch-size', '-b', min=1)] = 25,
    img_size: Annotated[Optional[int], typer.Option('--img-size', min=32, help='Input size, a multiple of 32 '
                                                    '(16 for a 2x2-patch checkpoint; default: the checkpoint\'s, '
                                                    'else 224).')] = None,
    query: Annotated[Optional[str], typer.Option(help='Query token ROW,COL (default: the centre of each stage).')] = None,
    per_head: Annotated[bool, typer.Option('--per-head', help='Also one PNG per block and head.')] = False,
    save_npy: Annotated[bool, typer.Option('--save-npy', help='Save the mean maps [block, head, N, N] per stage.')] = False,
    json_out: Annotated[bool, typer.Option('--json', help='Print the statistics as JSON.')] = False,
    msa_stages: Annotated[Optional[str], typer.Option('--msa-stages', help='Build the model with attention in these '
                                                      'stages, e.g. 1,2,3,4 (ablation models).')] = None,
    output: Annotated[Path, typer.Option(help='Parent folder of the output folder.')] = Path('runs/attn-maps'),
    name: Annotated[Optional[str], typer.Option(help='Output folder name (-2, -3... if taken).')] = None,
    exist_ok: Annotated[bool, typer.Option('--exist-ok', help='Write into an existing folder of that name.')] = False,
    device: Annotated[Optional[str], typer.Option(help='cpu, cuda or cuda:N (default: cuda if available).')] = None,
    use_ema: Annotated[Optional[bool], use_ema_option()] = None,
    pretrained: Annotated[bool, pretrained_option()] = False,
):
    """Attention of a query token averaged over images per block and head (paper Fig. 3), distance, entropy."""
    from litcli.commands import attn_maps as command
    with user_errors():
        stage_numbers = None if stage.strip().lower() == 'all' else parse_ints(stage, '--stage', '3')
        if stage_numbers is not None and len(stage_numbers) != 1:
            raise UsageError(f"bad --stage {stage!r}: use 1, 2, 3, 4 or all")
        stages = parse_ints(msa_stages, '--msa-stages', '1,2,3,4') if msa_stages else None
        command.run(stage_numbers[0] if stage_numbers else None, variant_name(variant), checkpoint, data, num_images,
                    batch_size, img_size,
                    parse_token(query, '--query') if query else None, per_head, save_npy, json_out, output, name,
                    exist_ok, device, stages, data_dir=str(data_dir) if data_dir else None, use_ema=use_ema,
                    pretrained=pretrained)


# ---- Around a run: checkpoint averaging, run comparison, class-activation maps (issue 20) ----
class CamMethod(str, Enum):
    gradcam = 'gradcam'
    gradcam_pp = 'gradcam++'
    eigencam = 'eigencam'


@app.command('avg-checkpoints', rich_help_panel='Train')
def avg_checkpoints(
    inputs: Annotated[List[Path], typer.Argument(
        help='A run folder (its --keep-best checkpoints, best first) or checkpoint files.', show_default=False)],
    out: Annotated[Path, typer.Option(help='The averaged checkpoint to write (.pt).', dir_okay=False)],
    top: Annotated[Optional[int], typer.Option(
        '--top', min=1, help='Average only the K best (by each checkpoint\'s own eval top-1).')] = None,
    force: Annotated[bool, typer.Option('--force', help='Overwrite --out if it exists.')] = False,
    use_ema: Annotated[Optional[bool], use_ema_option()] = None,
    json_out: Annotated[bool, typer.Option('--json', help='Print the result as JSON.')] = False,
):
    """The mean of several checkpoints' weights (BatchNorm statistics too), as a checkpoint every command takes."""
    from litcli.commands import avg_checkpoints as command
    with user_errors():
        result = command.run(inputs, out, top=top, use_ema=use_ema, force=force)
    command.print_result(result, as_json=json_out)


@app.command(rich_help_panel='Train')
def compare(
    runs: Annotated[List[Path], typer.Argument(help='lit train run folders (runs/train/NAME).', show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        help='The curves PNG (default runs/compare/A-vs-B.png, a new name).', dir_okay=False)] = None,
    metric: Annotated[Optional[str], typer.Option(
        help='Metric of the "best" column and the second panel: val_top1 (default), val_top5, val_loss or '
             'train_loss; detection / segmentation runs: bbox_AP (their default), bbox_AP50, segm_AP, mIoU (theirs), '
             'mAcc, aAcc.', show_default=False)] = None,
    gmacs: Annotated[bool, typer.Option('--gmacs', help='Also count each model\'s GMACs at its input size '
                                                        '(slower).')] = False,
    force: Annotated[bool, typer.Option('--force', help='Overwrite --out if it exists.')] = False,
    json_out: Annotated[bool, typer.Option('--json', help='Print the result as JSON.')] = False,
):
    """Runs side by side: curves on shared axes (loss, top-1, lr, img/s) and best/final metrics, time, size."""
    from litcli.commands import compare as command
    with user_errors():
        result = command.run(runs, out, metric=metric, gmacs=gmacs, force=force)
    command.print_result(result, as_json=json_out)


@app.command(rich_help_panel='Figures')
def cam(
    images: Annotated[List[str], typer.Argument(help='Image files, folders or glob patterns.', show_default=False)],
    checkpoint: Annotated[Path, typer.Option(help='lit train checkpoint, official .pth or .safetensors export.',
                                             dir_okay=False)],
    method: Annotated[CamMethod, typer.Option(help='Class-activation method (grad-cam package).')] =
        CamMethod.gradcam,
    stage: Annotated[int, typer.Option(help='LIT stage whose tokens are mapped (1-4).')] = 4,
    classes: Annotated[Optional[List[str]], typer.Option(
        '--class', '-c', help='Class name or index to explain, repeatable (default: the top-1 prediction).')] = None,
    out: Annotated[Optional[Path], typer.Option(
        help='Output folder (default runs/cam/IMAGE-VARIANT, a new one).', file_okay=False)] = None,
    force: Annotated[bool, typer.Option('--force', help='Overwrite PNGs already in --out.')] = False,
    variant: Annotated[Optional[Variant], typer.Option(
        '--variant', '-v',
        help='Model variant (default: recorded in the checkpoint or recognised from its keys).')] = None,
    device: Annotated[Optional[str], typer.Option(help='cpu, cuda or cuda:N (default: cuda if available).')] = None,
    use_ema: Annotated[Optional[bool], use_ema_option()] = None,
    json_out: Annotated[bool, typer.Option('--json', help='Print the result as JSON.')] = False,
):
    """Class-activation maps (Grad-CAM, Grad-CAM++, EigenCAM) of a stage, overlaid on each image."""
    from litcli.commands import cam as command
    with user_errors():
        result = command.run(images, checkpoint, method.value, stage, classes or (), out, force,
                             variant_name(variant), use_ema, device)
    command.print_result(result, as_json=json_out)


# ---- Data ----
data_app = typer.Typer(help='Prepare and measure training data: WebDataset shards, input-pipeline speed.',
                       no_args_is_help=True)
app.add_typer(data_app, name='data', rich_help_panel='Train')


def parse_bytes(text: str, what: str = '--shard-size') -> int:
    """'500MB' | '1.5GB' | '200kB' | '1000000' -> bytes (decimal units, as disk sizes are quoted)."""
    units = {'': 1, 'b': 1, 'kb': 10 ** 3, 'k': 10 ** 3, 'mb': 10 ** 6, 'm': 10 ** 6, 'gb': 10 ** 9, 'g': 10 ** 9,
             'kib': 2 ** 10, 'mib': 2 ** 20, 'gib': 2 ** 30}
    raw = str(text).strip().lower().replace(' ', '')
    number = raw.rstrip('kmgibt')
    try:
        value = float(number) * units[raw[len(number):]]
    except (ValueError, KeyError):
        raise UsageError(f'{what} {text!r} is not a size: use e.g. 500MB, 1GB or a number of bytes') from None
    if not value >= 1 or value == float('inf'):  # also NaN and sizes beyond a float (1e400)
        raise UsageError(f'{what} must be a finite size of at least 1 byte, not {text!r}; use e.g. 500MB')
    return int(value)


@data_app.command('pack')
def data_pack(
    src: Annotated[Path, typer.Argument(help='Image folder: SRC/train/<class>/*.jpg and SRC/val/<class>/*.jpg.',
                                        show_default=False)],
    out: Annotated[Path, typer.Argument(help='New (or empty) folder for the shards and index.json.',
                                        show_default=False)],
    shard_size: Annotated[str, typer.Option('--shard-size', help='Bytes per shard (e.g. 500MB, 1GB).')] = '500MB',
    split: Annotated[str, typer.Option('--split', help='Splits to pack, comma-separated (val also reads '
                                                       'validation/).')] = 'train,val',
    seed: Annotated[int, typer.Option(help='Seed of the one-time shuffle of the training images across shards.')] = 0,
    strict_data: Annotated[bool, typer.Option('--strict-data', help='Stop at the first file that is not a readable '
                                                                    'image (default: leave it out, counted).')] = False,
    json_out: Annotated[bool, typer.Option('--json', help='Print the summary as JSON.')] = False,
):
    """Image folder -> WebDataset shards + index.json for lit train --data wds:... (never overwrites)."""
    from litcli.commands import data_pack as command
    with user_errors():
        result = command.run(src, out, parse_bytes(shard_size), parse_names(split), seed=seed, strict=strict_data)
    command.print_result(result, as_json=json_out)


@data_app.command('bench')
def data_bench(
    data: Annotated[str, typer.Option(help='Image folder, tar, wds:PATTERN or built-in set (its training split).')],
    workers: Annotated[str, typer.Option('--workers', '-j', help='Worker counts to time, comma-separated.')] = '0,1,2',
    variant: Annotated[Variant, typer.Option('--variant', '-v', help='Whose recipe\'s training transforms to run '
                                                                     '(ti, s, m, b).')] = Variant.s,
    img_size: Annotated[Optional[int], typer.Option('--img-size', min=32, help='Input size (default: the '
                                                                               'recipe\'s, 224).')] = None,
    batch_size: Annotated[int, typer.Option('--batch-size', '-b', min=1)] = 64,
    batches: Annotated[int, typer.Option(min=1, help='Timed batches per worker count.')] = 10,
    warmup: Annotated[int, typer.Option(min=0, help='Untimed batches first (worker start-up).')] = 2,
    data_dir: Annotated[Optional[Path], typer.Option('--data-dir', help='Folder holding a built-in set\'s '
                                                                        'files.')] = None,
    json_out: Annotated[bool, typer.Option('--json', help='Print JSON instead of a table.')] = False,
):
    """Images/s of the input pipeline alone (read, decode, the recipe's augmentation) for 0, 1, ... N workers."""
    from litcli.commands import data_bench as command
    with user_errors():
        result = command.run(data, parse_ints(workers, '--workers', '0,1,2,4'), variant=variant_name(variant), img_size=img_size, batch_size=batch_size,
                             batches=batches, warmup=warmup, data_dir=str(data_dir) if data_dir else None,
                             quiet=json_out)
    command.print_result(result, as_json=json_out)
