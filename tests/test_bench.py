"""`lit bench`: interleaving, medians, OOM fallback, the JSON report."""
import json

import pytest
import torch
from typer.testing import CliRunner

from litcli.core.analysis import benchmark as bench
from litcli.cli import app


def test_interleaved_order_and_warmup():
    calls = []
    steps = [lambda n=n: calls.append(n) for n in 'ABC']
    ticks = iter(range(100))
    times = bench.interleaved_times(steps, warmup=2, repeats=3, clock=lambda: next(ticks))
    assert ''.join(calls) == 'AABBCC' + 'ABC' * 3  # warm-up per model, then interleaved
    assert [len(t) for t in times] == [3, 3, 3] and all(v == 1 for t in times for v in t)


def test_summary_uses_median_and_gemm_share():
    entry = bench.ModelBench('m', batch_size=10, times=[1.0, 0.5, 2.0], gmacs=1.0, peak_mem_mb=5.0)
    row = entry.summary(gemm_gflops=40.0, mode='infer')
    assert row['img_per_s'] == 10.0 and row['ms_per_step'] == 1000.0  # the median step is 1.0 s
    assert row['img_per_s_min'] == 5.0 and row['img_per_s_max'] == 20.0
    assert row['achieved_gflops'] == pytest.approx(20.0) and row['share_of_gemm'] == pytest.approx(0.5)
    assert entry.summary(40.0, 'train')['achieved_gflops'] == pytest.approx(60.0)  # fwd + bwd ~ 3x


def test_oom_halves_batch_then_records(monkeypatch):
    real_make_step = bench.make_step

    def fake_make_step(model, cfg, batch_size, img_size):
        if batch_size > 2:
            raise RuntimeError('CUDA out of memory. Tried to allocate 1.00 GiB')
        return real_make_step(model, cfg, batch_size, img_size)
    monkeypatch.setattr(bench, 'make_step', fake_make_step)
    cfg = bench.BenchConfig(batch_size=8, img_size=64, warmup=0, repeats=1, memory=False)
    result = bench.bench_models(['lit_ti'], cfg, count_macs=False)
    assert result['entries'][0].batch_size == 2 and result['entries'][0].error is None

    def always_oom(*a, **k):
        raise RuntimeError('out of memory')
    monkeypatch.setattr(bench, 'make_step', always_oom)
    result = bench.bench_models(['lit_ti'], cfg, count_macs=False)
    assert result['entries'][0].error == 'OOM'


@pytest.mark.slow
def test_cli_json_every_field_positive(tmp_path):
    args = ['bench', '-v', 'ti', '--compare', 'resnet18', '-b', '2', '--img-size', '64', '--repeats', '2',
            '--warmup', '1', '--json', '--csv', str(tmp_path / 'b.csv'), '--profile']
    r = CliRunner().invoke(app, args, prog_name='lit')
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout[r.stdout.index('{'):])
    assert report['gemm_gflops'] > 0 and report['mode'] == 'infer'
    rows = report['results'][0]['rows']
    assert [row['model'] for row in rows] == ['lit_ti', 'resnet18']
    for row in rows:
        for key in ('img_per_s', 'ms_per_step', 'peak_mem_mb', 'gmacs_per_img', 'achieved_gflops', 'share_of_gemm',
                    'ratio_to_first'):
            assert row[key] > 0, key
    assert rows[0]['ratio_to_first'] == 1.0
    # --profile: the kinds of op add up to the profiled step; LIT's time is mostly matmuls, ResNet's convs.
    for row, main_kind in zip(rows, ('matmul', 'conv')):
        profile = row['profile']
        assert max(profile['kinds_share'], key=profile['kinds_share'].get) == main_kind
        assert profile['top_ops'] and all(op['ms'] > 0 for op in profile['top_ops'])
    assert (tmp_path / 'b.csv').read_text().count('\n') == 3


@pytest.mark.parametrize('args, msg', [(['--mode', 'fast'], 'infer or train'),
                                        (['--amp-dtype', 'int8'], "unknown --amp-dtype 'int8'"),
                                        (['--amp', 'int8'], "unknown --amp-dtype 'int8'"),
                                        (['--img-size', '64x96'], 'square inputs'),
                                        (['--img-size', '100'], 'divisible by 32'),
                                        (['--compare', 'swin_tinny'], 'did you mean'),
                                        (['--device', 'cuda'], 'no CUDA device')])
def test_cli_bad_inputs(args, msg):
    import torch
    if args[0] == '--device' and torch.cuda.is_available():
        pytest.skip('has a CUDA device')
    r = CliRunner().invoke(app, ['bench', '-v', 'ti', '--img-size', '64', *args][:-2] + args
                           if args[0] == '--img-size' else ['bench', '-v', 'ti', '--img-size', '64', *args],
                           prog_name='lit')
    assert r.exit_code != 0 and msg in r.output, r.output


def test_train_mode_gives_every_model_the_same_drop_path():
    from litcli.core.analysis import benchmark as bench
    cfg = bench.BenchConfig(mode='train', drop_path=0.2)
    for name in ('lit_ti', 'swin_tiny_patch4_window7_224', 'resnet18'):
        model = bench.build_model(name, cfg, 64 if name != 'swin_tiny_patch4_window7_224' else 224)
        rates = [m.drop_prob for m in model.modules() if type(m).__name__ == 'DropPath']
        assert rates and max(rates) == pytest.approx(0.2), name
    infer = bench.build_model('swin_tiny_patch4_window7_224', bench.BenchConfig(mode='infer'), 224)
    assert max(m.drop_prob for m in infer.modules() if type(m).__name__ == 'DropPath') == pytest.approx(0.1)


@pytest.mark.parametrize('op, kind', [('aten::addmm', 'matmul'), ('aten::_embedding_bag', 'gather'),
                                      ('torchvision::deform_conv2d', 'conv'), ('aten::gelu_backward', 'act+softmax'),
                                      ('aten::copy_', 'copy'), ('aten::_fused_adamw_', 'optim'),
                                      ('aten::native_layer_norm', 'norm'), ('aten::mul', 'other'),
                                      ('sm90_xmma_gemm_bf16bf16_bf16f32', 'matmul'),
                                      ('sm80_xmma_fprop_implicit_gemm_tf32', 'conv'), ('aten::scatter_add_', 'gather'),
                                      ('flash_bwd_convert_dq_kernel', 'matmul'),
                                      ('void at::native::(anonymous namespace)::CatArrayBatchedCopy', 'copy')])
def test_op_kinds(op, kind):
    from litcli.core.analysis.benchmark import op_kind
    assert op_kind(op) == kind


def test_build_model_keeps_the_size_without_drop_path_and_reports_real_errors(monkeypatch):
    """A model that takes img_size but not drop_path_rate is still built at the bench size (the factory drops the
    optional argument timm rejects); any other TypeError surfaces as it is."""
    import timm

    from litcli.core.analysis import benchmark as bench
    calls = []

    def fake_create(name, **kwargs):
        calls.append(kwargs)
        if 'drop_path_rate' in kwargs:
            raise TypeError("__init__() got an unexpected keyword argument 'drop_path_rate'")
        if name == 'broken':
            raise TypeError(f'unexpected keyword for {name}')
        return torch.nn.Linear(2, 2)
    monkeypatch.setattr(timm, 'create_model', fake_create)
    bench.build_model('no_drop_path', bench.BenchConfig(mode='train'), 96)
    assert calls[-1] == {'img_size': 96}
    with pytest.raises(TypeError, match='unexpected keyword for broken'):
        bench.build_model('broken', bench.BenchConfig(mode='train'), 96)


def test_profile_failure_keeps_the_timings(monkeypatch):
    from litcli.core.analysis import benchmark as bench

    def broken_profiler(step, device):
        raise RuntimeError('profiler unavailable')
    monkeypatch.setattr(bench, 'profile_step', broken_profiler)
    cfg = bench.BenchConfig(batch_size=1, img_size=64, repeats=1, warmup=0, memory=False, profile=True)
    entry = bench.bench_models(['lit_ti'], cfg, count_macs=False)['entries'][0]
    assert entry.times and entry.profile == {'error': 'profiler unavailable'}


def test_amp_and_device_resolve_as_in_every_command():
    """bench resolves through core.runtime: its default device, float16 refused on the CPU, one dtype name
    whichever spelling (bfloat16 / bf16)."""
    from litcli.core.errors import LitError
    from litcli.core.runtime import resolve_device

    assert bench.resolve_bench_config(bench.BenchConfig()).device == str(resolve_device(None))
    for spelling in ('bfloat16', 'bf16'):
        cfg = bench.resolve_bench_config(bench.BenchConfig(device='cpu', amp=spelling))
        assert cfg.amp == 'bfloat16' and bench.amp_dtype(cfg) is torch.bfloat16
    assert bench.resolve_bench_config(bench.BenchConfig(device='cpu')).amp is None
    with pytest.raises(LitError, match='float16 autocast needs a CUDA device'):
        bench.resolve_bench_config(bench.BenchConfig(device='cpu', amp='fp16'))
    assert not hasattr(bench, 'AMP_DTYPES')  # one table of dtypes: core.runtime's


@pytest.mark.parametrize('flags', [['--amp-dtype', 'bfloat16'], ['--amp', 'bf16'], ['--amp-dtype', 'bf16']])
def test_amp_flag_and_its_old_spelling_reach_the_same_config(flags, monkeypatch):
    """--amp-dtype (lit train's spelling) and the old --amp bf16 give one config; sizes parse as in lit flops."""
    from litcli.commands import bench as command
    seen = {}
    monkeypatch.setattr(command, 'run_bench', lambda variant, compare, cfg, sizes, log: seen.update(
        variant=variant, cfg=cfg, sizes=sizes) or {'results': []})
    monkeypatch.setattr(command, 'print_bench', lambda report: None)
    r = CliRunner().invoke(app, ['bench', '-v', 'ti', '--device', 'cpu', '--img-size', '64,96x96', *flags],
                           prog_name='lit')
    assert r.exit_code == 0, r.output
    assert seen['variant'] == 'lit_ti' and seen['sizes'] == [64, 96]
    assert (seen['cfg'].amp, seen['cfg'].device, seen['cfg'].img_size) == ('bfloat16', 'cpu', 64)


def test_amp_flag_given_twice_is_refused():
    r = CliRunner().invoke(app, ['bench', '--amp', 'bf16', '--amp-dtype', 'bfloat16'], prog_name='lit')
    assert r.exit_code == 2 and 'give one' in r.output
