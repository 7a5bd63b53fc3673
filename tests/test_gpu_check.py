"""benchmarks/gpu_check.py (`make gpu-check`): its plumbing, proven on the CPU.

The no-CUDA path (one line, exit 1, nothing written), a CPU dry run (JSON and the table), a part that fails or
hangs is recorded and the next one still runs, a part whose package is missing or that is CUDA-only is skipped
with the reason, and (slow) the SIGKILL + resume part end to end under torchrun.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'benchmarks' / 'gpu_check.py'


def gpu_check(*args, env=None, timeout=300):
    full_env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=full_env, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA device is present')
@pytest.mark.slow
def test_no_cuda_prints_one_line_and_exits_1(tmp_path):
    out = gpu_check('--out', tmp_path / 'report.json')
    assert out.returncode == 1
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and 'no CUDA device found' in lines[0], out.stdout + out.stderr
    assert not (tmp_path / 'report.json').exists()


@pytest.mark.skipif(shutil.which('make') is None, reason='no make')
def test_make_with_py_installs_nothing():
    out = subprocess.run(['make', '-n', 'gpu-check', 'PY=python3', 'GPU_CHECK_ARGS=--quick'], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert 'pip' not in out.stdout and 'venv' not in out.stdout, out.stdout
    assert f'PYTHONPATH="{ROOT}' in out.stdout and 'python3 benchmarks/gpu_check.py --quick' in out.stdout


def test_unknown_part_is_one_line():
    out = gpu_check('--device', 'cpu', '--parts', 'dtm,nope')
    assert out.returncode == 2 and 'unknown part(s) nope' in out.stderr and 'Traceback' not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    """One CPU dry run: env fails (injected), tests hangs (injected) and is killed at its 3 s limit, dtm runs for
    real after them, figures lacks matplotlib (hidden), compile-train is CUDA-only."""
    tmp = tmp_path_factory.mktemp('gpu-check')
    out = gpu_check('--device', 'cpu', '--parts', 'compile-train,figures,dtm,tests,env', '--timeout', 'tests=3',
                    '--out', tmp / 'report.json', '--workdir', tmp / 'work',
                    env={'LIT_GPU_CHECK_INJECT': 'env=fail,tests=hang', 'LIT_GPU_CHECK_HIDE': 'matplotlib'})
    return out, json.loads((tmp / 'report.json').read_text())


@pytest.mark.slow
def test_dry_run_records_every_part_in_order(dry_run):
    out, report = dry_run
    assert out.returncode == 1, out.stdout + out.stderr  # a part failed
    assert 'Traceback' not in out.stdout + out.stderr
    parts = {p['name']: p for p in report['parts']}
    assert list(parts) == ['env', 'tests', 'dtm', 'figures', 'compile-train']  # the check's order, not --parts'
    assert parts['env']['status'] == 'fail' and 'injected failure' in parts['env']['reason']
    assert parts['tests']['status'] == 'timeout' and parts['tests']['timeout_s'] == 3
    assert parts['tests']['seconds'] < 30
    assert parts['figures'] == {**parts['figures'], 'status': 'skip', 'reason': 'matplotlib not installed'}
    assert parts['compile-train']['status'] == 'skip' and parts['compile-train']['reason'].startswith('CUDA only')
    assert report['counts'] == {'pass': 1, 'fail': 1, 'timeout': 1, 'skip': 2}
    assert report['device'] == 'cpu' and report['env']['torch'] and report['targets'] == []


@pytest.mark.slow
def test_dry_run_dtm_part_ran_after_the_failures(dry_run):
    _, report = dry_run
    dtm = next(p for p in report['parts'] if p['name'] == 'dtm')
    assert dtm['status'] == 'pass', dtm
    cases = dtm['figures']['speed']['cases']
    assert {'plain conv2d 2x2/s2', 'DTM pure (gather)', 'DTM layer, pure'} <= set(cases)
    assert all(c['ms'] > 0 for c in cases.values())
    from litcli.models.dtm import torchvision_ops_available
    if torchvision_ops_available():
        parity = dtm['figures']['parity_float64']
        assert max(parity.values()) < 1e-10


@pytest.mark.slow
def test_dry_run_prints_the_table(dry_run):
    out, _ = dry_run
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ['part', 'status', 'key', 'figures'])
    rows = [line.split()[:2] for line in lines[header + 2:header + 12] if line and not line.startswith((' ', '-'))]
    assert rows[:5] == [['env', 'FAIL'], ['tests', 'TIMEOUT'], ['dtm', 'pass'], ['figures', 'skip'],
                        ['compile-train', 'skip']], out.stdout
    assert '1 pass, 1 fail, 1 timeout, 2 skip' in out.stdout
    assert '--- env fail: injected failure' in out.stdout  # the failure's log tail comes before the table


@pytest.mark.slow
def test_budget_used_up_skips_the_rest(tmp_path):
    out = gpu_check('--device', 'cpu', '--parts', 'dtm,amp', '--budget', '1', '--out', tmp_path / 'r.json')
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / 'r.json').read_text())
    assert [p['status'] for p in report['parts']] == ['skip', 'skip']
    assert all('time budget' in p['reason'] for p in report['parts'])


@pytest.mark.slow
def test_resume_part_sigkill_then_resume_is_bit_identical_on_cpu(tmp_path):
    out = gpu_check('--device', 'cpu', '--parts', 'resume', '--out', tmp_path / 'r.json', timeout=600)
    report = json.loads((tmp_path / 'r.json').read_text())
    part = report['parts'][0]
    assert out.returncode == 0 and part['status'] == 'pass', out.stdout + out.stderr
    fig = part['figures']
    assert fig['killed_rc'] == -9 and fig['steps'] == 32
    assert 16 < fig['checkpoint_step'] <= fig['killed_after_step'] < 32  # killed mid second epoch, after a save
    assert fig['resumed_from'] == f"epoch 1, step {fig['checkpoint_step']}"
    assert fig['bit_identical'] and fig['max_abs_weight_diff'] == 0.0


@pytest.mark.slow
def test_dense_part_dry_run(tmp_path):
    """The dense part on the CPU: official parity of the three dense backbones (float64), the six models
    fwd+bwd, lit detect / lit segment through the CLI."""
    out = gpu_check('--device', 'cpu', '--parts', 'dense', '--out', tmp_path / 'r.json', '--workdir', tmp_path / 'w',
                    timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    dense = json.loads((tmp_path / 'r.json').read_text())['parts'][0]
    assert dense['status'] == 'pass'
    assert len(dense['figures']['parity_max_abs_diff_float64']) == 3
    assert max(dense['figures']['parity_max_abs_diff_float64'].values()) <= 1e-8
    assert all(row.get('finite') for row in dense['figures']['models'].values()), dense['figures']['models']
    assert len(dense['figures']['models']) == 6


@pytest.mark.slow
def test_dense_train_part_dry_run(tmp_path):
    """The dense-train part on the CPU: lit train --task semantic-fpn (and retinanet, pycocotools being installed)
    under bf16 autocast, two short epochs, then lit eval of the run within 2 points of its last epoch."""
    out = gpu_check('--device', 'cpu', '--parts', 'dense-train', '--out', tmp_path / 'r.json', '--workdir',
                    tmp_path / 'w', timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    part = json.loads((tmp_path / 'r.json').read_text())['parts'][0]
    assert part['status'] == 'pass', part
    assert set(part['figures']) == {'semantic-fpn', 'retinanet'}
    assert all(0 <= f['eval_metric'] <= 100 for f in part['figures'].values())
