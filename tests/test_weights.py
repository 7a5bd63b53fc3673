"""Released weights by name (`pretrained=True`, `--pretrained`, `lit weights`) without the internet: a state dict in
the official layout is served by a local HTTP server on 127.0.0.1 and ``LIT_WEIGHTS_URL`` points the download there;
``TORCH_HOME``/``HF_HOME`` point the cache into the test's folder."""
import contextlib
import http.server
import io
import json
import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import lit
from litcli.core.modelio import weights
from litcli.core.errors import LitError
from litcli.core.modelio.factory import create_model, load_model
from litcli.models.spec import release_url

PAPER = {'lit_ti': (81.1, 3.6), 'lit_s': (81.5, 4.1), 'lit_m': (83.0, 8.6), 'lit_b': (83.4, 15.0)}


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET of a served file: whole (mode 'ok'), a third of it under the full Content-Length and then the connection
    closed (mode 'cut'), or no answer at all (mode 'hang')."""

    def do_GET(self):
        server = self.server
        server.requests.append(self.path)
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if server.mode == 'hang':
            server.release.wait(30)
            return
        self.send_response(200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if server.mode == 'cut':
            self.wfile.write(body[:len(body) // 3])
            self.close_connection = True  # the server closes the socket: the body ends early
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(files, mode='ok'):
    """A server on an ephemeral port of 127.0.0.1 serving ``{name: bytes}`` under /v1.0/; yields it with ``.base``
    (the URL to put in LIT_WEIGHTS_URL) and ``.requests`` (the paths asked for)."""
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    server.daemon_threads = True
    server.files = {f'/v1.0/{name}': body for name, body in files.items()}
    server.mode, server.requests, server.release = mode, [], threading.Event()
    server.base = f'http://127.0.0.1:{server.server_address[1]}/v1.0'
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A port nobody listens on (bound once to find a free one, then released)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def release():
    """LIT-Ti weights in the official layout and wrapping ({'model': state_dict}, as the release files are): the
    state dict and the file's bytes."""
    torch.manual_seed(0)
    state_dict = {k: v.clone() for k, v in create_model('lit_ti').state_dict().items()}
    buffer = io.BytesIO()
    torch.save({'model': state_dict}, buffer)
    return state_dict, buffer.getvalue()


def use_cache(monkeypatch, folder: Path, base: str, timeout: float = 5):
    monkeypatch.setenv('TORCH_HOME', str(folder / 'torch'))
    monkeypatch.setenv('HF_HOME', str(folder / 'hf'))
    monkeypatch.setenv(weights.URL_ENV, base)
    monkeypatch.setenv(weights.TIMEOUT_ENV, str(timeout))


def cache_files(folder: Path):
    """Every file in the test's cache (hidden temporary ones too), but the download lock (an empty file that
    serialises concurrent downloads, kept on purpose: removing a lock file others may hold is a race)."""
    return sorted(p.name for p in (folder / 'torch').rglob('*') if p.is_file() and not p.name.endswith('.lock'))


@pytest.fixture(scope='module')
def warm_cache(release, tmp_path_factory):
    """A cache holding the served LIT-Ti release (downloaded once); later loads must not touch the network, so
    LIT_WEIGHTS_URL then points at a port nobody listens on."""
    folder = tmp_path_factory.mktemp('warm')
    with pytest.MonkeyPatch.context() as mp, serve({'lit_ti.pth': release[1]}) as server:
        use_cache(mp, folder, server.base)
        path = weights.fetch('lit_ti', lambda p, url: None, log=lambda m: None)
    assert path == folder / 'torch' / 'hub' / 'checkpoints' / 'lit_ti.pth'
    return folder


@pytest.fixture
def offline_warm(monkeypatch, warm_cache):
    use_cache(monkeypatch, warm_cache, f'http://127.0.0.1:{free_port()}/v1.0')
    return warm_cache


def assert_one_line_way_out(message: str, url: str, cache: Path):
    assert '\n' not in message.strip() and 'Traceback' not in message, message
    assert url in message and '--checkpoint' in message and str(cache) in message, message


def test_the_releases_as_data(monkeypatch, tmp_path):
    """The cfgs carry the GitHub release URLs (timm's pretrained route uses them); the table holds the paper's
    figures; the cache is torch hub's, under TORCH_HOME."""
    import timm

    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.delenv(weights.URL_ENV, raising=False)
    assert sorted(timm.list_pretrained('lit_*')) == ['lit_b.in1k', 'lit_m.in1k', 'lit_s.in1k', 'lit_ti.in1k']
    for variant, (top1, gmacs) in PAPER.items():
        url = f'https://github.com/ziplab/LIT/releases/download/v1.0/{variant}.pth'
        assert timm.models.get_pretrained_cfg(variant).url == url == weights.weights_url(variant)
        assert (weights.RELEASES[variant].top1, weights.RELEASES[variant].gmacs) == (top1, gmacs)
        assert weights.cache_path(variant) == tmp_path / 'hub' / 'checkpoints' / f'{variant}.pth'
    assert not timm.models.get_pretrained_cfg('lit_ti_star').url  # the ablations have no released weights
    with pytest.raises(LitError, match='no released weights'):
        load_model(variant='lit_ti_star', pretrained=True)
    result = lit('weights', '--json')
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [w['variant'] for w in listed['weights']] == [*PAPER, 'pvt_s_msa']  # + the Figure 3 model
    assert not any(w['cached'] for w in listed['weights'] + listed['dense'])
    assert listed['cache_dir'] == str(tmp_path / 'hub' / 'checkpoints')


@pytest.mark.slow
def test_processes_asking_at_once_download_once(monkeypatch, tmp_path, release):
    """Every rank of ``torchrun lit eval --pretrained`` asks for the file at once: one downloads (under a lock
    beside the cache file), the others wait and read the cache."""
    import subprocess
    import sys

    _, body = release
    with serve({'lit_ti.pth': body}) as server:
        use_cache(monkeypatch, tmp_path, server.base, timeout=60)
        code = ('from litcli.core.modelio.factory import pretrained_file; '
                'print(pretrained_file("lit_ti", log=lambda m: None))')
        procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(3)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        cached = str(tmp_path / 'torch' / 'hub' / 'checkpoints' / 'lit_ti.pth')
        assert [o[0].strip() for o in outs] == [cached] * 3
        assert server.requests == ['/v1.0/lit_ti.pth']
        assert cache_files(tmp_path) == ['lit_ti.pth']


def test_download_once_then_cache_hit_strict_load(monkeypatch, tmp_path, release):
    state_dict, body = release
    with serve({'lit_ti.pth': body}) as server:
        use_cache(monkeypatch, tmp_path, server.base)
        messages = []
        loaded = load_model(variant='lit_ti', pretrained=True, log=messages.append)
        assert server.requests == ['/v1.0/lit_ti.pth']
        cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / 'lit_ti.pth'
        assert cache_files(tmp_path) == ['lit_ti.pth'] and cached.stat().st_size == len(body)
        assert any('downloaded and verified' in m for m in messages), messages
        got = loaded.model.state_dict()
        assert set(got) == set(state_dict) and all(torch.equal(got[k], v) for k, v in state_dict.items())
        assert (loaded.variant, loaded.num_classes, loaded.img_size, loaded.weights) == ('lit_ti', 1000, 224, 'model')
        assert loaded.pretrained == f'{server.base}/lit_ti.pth' and 'released lit_ti' in loaded.describe()
        assert loaded.class_names[0] == 'tench, Tinca tinca'  # ImageNet names for the 1000 classes

        again = load_model(variant='lit_ti', pretrained=True)  # the second call: from the cache
        assert server.requests == ['/v1.0/lit_ti.pth']
        assert torch.equal(again.model.state_dict()['head.weight'], state_dict['head.weight'])

        result = lit('weights', '--json')
        assert result.exit_code == 0, result.output
        rows = {w['variant']: w for w in json.loads(result.output)['weights']}
        assert rows['lit_ti']['cached'] and rows['lit_ti']['path'] == str(cached)
        assert rows['lit_ti']['url'] == f'{server.base}/lit_ti.pth' and not rows['lit_s']['cached']
        result = lit('weights', '--download', 'ti')  # already cached: nothing fetched
        assert result.exit_code == 0 and 'lit_ti' in result.output and server.requests == ['/v1.0/lit_ti.pth']


def test_other_classes_and_size(offline_warm, release):
    """Any num_classes (the head starts fresh, and it is said) and any img_size (position tables resampled)."""
    state_dict, _ = release
    messages = []
    loaded = load_model(variant='lit_ti', pretrained=True, num_classes=10, img_size=64, log=messages.append)
    assert loaded.num_classes == 10 and loaded.img_size == 64
    assert any('classifier (1000 classes) is not loaded' in m and 'head of 10 classes' in m for m in messages), messages
    got = loaded.model.state_dict()
    assert torch.equal(got['patch_embed1.proj.weight'], state_dict['patch_embed1.proj.weight'])
    assert got['pos_embed1'].shape == (1, 16 * 16, 64) != state_dict['pos_embed1'].shape  # resampled from 56x56
    assert got['head.weight'].shape == (10, 512)
    with torch.no_grad():
        assert loaded.model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_partial_download_leaves_nothing(monkeypatch, tmp_path, release):
    """The server sends a third of the body under the full Content-Length, then closes: a one-line error, and
    neither the file nor a temporary one in the cache."""
    with serve({'lit_ti.pth': release[1]}, mode='cut') as server:
        use_cache(monkeypatch, tmp_path, server.base)
        with pytest.raises(LitError) as e:
            load_model(variant='lit_ti', pretrained=True, log=lambda m: None)
    assert 'stopped after' in str(e.value) and 'nothing was cached' in str(e.value)
    assert_one_line_way_out(str(e.value), f'{server.base}/lit_ti.pth', weights.cache_path('lit_ti'))
    assert cache_files(tmp_path) == []


def test_wrong_variant_refused(monkeypatch, tmp_path, release):
    """LIT-Ti weights at the LIT-S URL: refused after the download, not cached."""
    with serve({'lit_s.pth': release[1]}) as server:
        use_cache(monkeypatch, tmp_path, server.base)
        result = lit('eval', '--pretrained', '--variant', 's', '--data', tmp_path)
    assert result.exit_code == 1, result.output
    error = result.output[result.output.index('Error:'):]
    assert 'holds lit_ti weights, not the lit_s release' in error and 'nothing was cached' in error
    assert_one_line_way_out(error, f'{server.base}/lit_s.pth', weights.cache_path('lit_s'))
    assert cache_files(tmp_path) == []


def test_offline_one_line_error(monkeypatch, tmp_path):
    """Nobody listening: a one-line error naming the URL and both ways out, exit 1, no traceback."""
    base = f'http://127.0.0.1:{free_port()}/v1.0'
    use_cache(monkeypatch, tmp_path, base)
    result = lit('weights', '--download', 's')
    assert result.exit_code == 1, result.output
    error = result.output[result.output.index('Error:'):]
    assert 'cannot download the lit_s weights' in error and 'refused' in error
    assert_one_line_way_out(error, f'{base}/lit_s.pth', tmp_path / 'torch' / 'hub' / 'checkpoints' / 'lit_s.pth')
    assert cache_files(tmp_path) == []


def test_silent_server_times_out(monkeypatch, tmp_path, release):
    """A server that accepts the connection and never answers: the bounded timeout, not a hang."""
    with serve({'lit_ti.pth': release[1]}, mode='hang') as server:
        use_cache(monkeypatch, tmp_path, server.base, timeout=1)
        image = tmp_path / 'x.png'
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
        start = time.perf_counter()
        result = lit('predict', image, '--pretrained', '--variant', 'ti')
        took = time.perf_counter() - start
    assert result.exit_code == 1 and 'no answer in 1 s' in result.output, result.output
    assert took < 20, took
    assert cache_files(tmp_path) == []


def test_timm_route_shares_the_cache_and_stays_strict(monkeypatch, tmp_path, release, caplog):
    """timm.create_model(..., pretrained=True) downloads into the same cache file, loads strictly except a head
    of another size (and warns about it); a file with a key missing is refused even then."""
    import timm

    state_dict, body = release
    with serve({'lit_ti.pth': body}) as server:
        use_cache(monkeypatch, tmp_path, server.base)
        with caplog.at_level(logging.WARNING):
            model = timm.create_model('lit_ti', pretrained=True, num_classes=10,
                                      pretrained_cfg_overlay=dict(url=f'{server.base}/lit_ti.pth'))
        assert 'head of 10 classes starts freshly initialised' in caplog.text
        got = model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in state_dict.items() if not k.startswith('head.'))
        assert weights.cached('lit_ti') is not None and server.requests == ['/v1.0/lit_ti.pth']
        load_model(variant='lit_ti', pretrained=True)  # the lit route finds timm's download
        assert server.requests == ['/v1.0/lit_ti.pth']
    broken = {k: v for k, v in state_dict.items() if k != 'block1.0.mlp.fc1.weight'}
    with pytest.raises(RuntimeError, match='1 missing keys'):
        timm.create_model('lit_ti', pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(state_dict=broken))


@pytest.mark.slow
def test_commands_take_pretrained(offline_warm, tmp_path, release):
    """--pretrained instead of --checkpoint in predict, export, viz-offsets and attn-maps (from the cache, no
    network); both or neither is a one-line usage error."""
    image = tmp_path / 'photo.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    result = lit('predict', image, '--pretrained', '--variant', 'ti', '--img-size', 64, '--json', '-k', 2)
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.output[result.output.index('{'):])
    assert predicted['model']['num_classes'] == 1000 and len(predicted['predictions'][0]['topk']) == 2
    assert predicted['model']['checkpoint'] == str(weights.cache_path('lit_ti'))

    out = tmp_path / 'lit_ti.safetensors'
    result = lit('export', '--pretrained', '--variant', 'ti', '--format', 'safetensors', '--out', out)
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file
    exported = load_file(out)
    assert all(torch.equal(exported[k], v) for k, v in release[0].items())
    assert json.loads(out.with_name(out.name + '.json').read_text())['source'].endswith('/lit_ti.pth')

    result = lit('viz-offsets', image, '--pretrained', '--variant', 'ti', '--img-size', 64, '--tokens', 'center',
                 '--output', tmp_path / 'viz')
    assert result.exit_code == 0 and 'randomly initialised' not in result.output, result.output
    assert (tmp_path / 'viz' / 'photo-lit_ti' / 'overview.png').is_file()
    result = lit('attn-maps', '--pretrained', '--variant', 'ti', '--img-size', 64, '--num-images', 2,
                 '--data', tmp_path, '--output', tmp_path / 'attn', '--stage', 4)
    assert result.exit_code == 0 and 'released lit_ti' in result.output, result.output

    for args in (('eval', '--pretrained', '--checkpoint', weights.cache_path('lit_ti'), '--data', tmp_path),
                 ('predict', image, '--pretrained', '--checkpoint', weights.cache_path('lit_ti'))):
        result = lit(*args)
        assert result.exit_code == 2 and '--checkpoint and --pretrained' in result.output, result.output
    for args in (('eval', '--data', tmp_path), ('predict', image), ('export', '--format', 'onnx')):
        result = lit(*args)
        assert result.exit_code == 2 and '--pretrained' in result.output, result.output
    for command in ('train', 'eval', 'predict', 'export', 'viz-offsets', 'attn-maps'):
        assert '--pretrained' in lit(command, '--help').output


@pytest.mark.slow
def test_train_pretrained_fine_tunes(offline_warm, tiny_data, tmp_path):
    """lit train --pretrained: the released weights as initial weights, the ImageNet head replaced (and said so);
    refused with --initial-checkpoint, for the demo model and for a model without released weights."""
    args = ('train', '--data', tiny_data, '--img-size', 32, '-b', 4, '-j', 0, '--epochs', 1, '--warmup-epochs', 0,
            '--aa', 'none', '--reprob', 0, '--mixup', 0, '--cutmix', 0, '--drop-path', 0, '--output', tmp_path,
            '--log-interval', 1)
    result = lit(*args, '--variant', 'ti', '--pretrained', '--name', 'ft')
    assert result.exit_code == 0, result.output
    assert f'initial weights from {weights.cache_path("lit_ti")} (classifier of 1000 classes dropped, new head of 2)' \
        in result.output.replace('\n', ''), result.output
    assert (tmp_path / 'ft' / 'checkpoints' / 'best.pt').is_file()

    result = lit(*args, '--variant', 'ti', '--pretrained', '--initial-checkpoint', weights.cache_path('lit_ti'))
    assert result.exit_code == 2 and 'pass one' in result.output, result.output
    result = lit('train', '--pretrained')
    assert result.exit_code == 2 and 'demo model' in result.output, result.output
    result = lit(*args, '--variant', 'lit_s_star', '--pretrained')
    assert result.exit_code == 2 and 'no released weights' in result.output, result.output


def test_download_command(monkeypatch, tmp_path, release):
    with serve({'lit_ti.pth': release[1]}) as server:
        use_cache(monkeypatch, tmp_path, server.base)
        result = lit('weights', '--download', 'ti')
        assert result.exit_code == 0, result.output
        assert 'downloaded: lit_ti' in result.output and server.requests == ['/v1.0/lit_ti.pth']
        assert weights.cached('lit_ti') == tmp_path / 'torch' / 'hub' / 'checkpoints' / 'lit_ti.pth'
        assert release_url('lit_ti', server.base) == f'{server.base}/lit_ti.pth'


def test_an_html_page_at_the_url_is_called_an_html_page(monkeypatch, tmp_path):
    """A captive portal answers 200 with its sign-in page: the error says HTML page (it used to say a pickle with
    non-tensor objects), names the URL and caches nothing."""
    page = b'\n<!DOCTYPE html>\n<html><head><title>Sign in to Hotel Wi-Fi</title></head><body>...</body></html>\n'
    with serve({'lit_ti.pth': page}) as server:
        use_cache(monkeypatch, tmp_path, server.base)
        with pytest.raises(LitError) as e:
            load_model(variant='lit_ti', pretrained=True, log=lambda m: None)
    message = str(e.value)
    assert f'{server.base}/lit_ti.pth is an HTML page (a sign-in page of a captive portal' in message, message
    assert 'other than tensors' not in message and 'nothing was cached' in message
    assert_one_line_way_out(message, f'{server.base}/lit_ti.pth', weights.cache_path('lit_ti'))
    assert cache_files(tmp_path) == []


def test_text_and_html_files_given_as_checkpoints_say_what_they_are(tmp_path, release):
    from litcli.core.errors import CheckpointError
    from litcli.core.modelio.checkpoint import read_checkpoint

    (tmp_path / 'page.pth').write_bytes(b'<html><body>403 Forbidden</body></html>')
    (tmp_path / 'note.pth').write_text('Access denied: this link has expired.\nContact the admin.\n')
    (tmp_path / 'binary.pth').write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match=r'page\.pth is an HTML page'):
        read_checkpoint(tmp_path / 'page.pth')
    with pytest.raises(CheckpointError, match=r"note\.pth is a text file \(it starts 'Access denied: this link"):
        read_checkpoint(tmp_path / 'note.pth')
    with pytest.raises(CheckpointError) as e:  # binary junk is not called text
        read_checkpoint(tmp_path / 'binary.pth')
    assert 'HTML' not in str(e.value) and 'text file' not in str(e.value)
    (tmp_path / 'ti.pth').write_bytes(release[1])
    mapped = read_checkpoint(tmp_path / 'ti.pth', mmap=True)['model']  # keys and shapes, tensors mapped
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in release[0].items()}
    assert all(torch.equal(mapped[k], v) for k, v in release[0].items())


def lit_s_look_alike() -> dict:
    """A state dict with LIT-S's identifying keys and shapes (its stem width and stage-3 depth), small enough to save
    in a test: detect_variant calls it lit_s."""
    state = {'patch_embed.proj.weight': torch.zeros(96, 3, 4, 4)}
    state.update({f'layers.2.blocks.{i}.norm1.weight': torch.zeros(4) for i in range(6)})
    return {'model': state}


def test_a_cached_file_of_another_model_is_neither_listed_nor_used(monkeypatch, tmp_path):
    """A LIT-S file cached as lit_ti.pth used to be listed as cached and, loaded for --pretrained --variant ti,
    advised --variant s; an HTML page cached as lit_s.pth likewise. Both are now called what they are, in the
    listing and on use, with the way to the release."""
    use_cache(monkeypatch, tmp_path, f'http://127.0.0.1:{free_port()}/v1.0')
    folder = weights.cache_dir()
    folder.mkdir(parents=True)
    torch.save(lit_s_look_alike(), folder / 'lit_ti.pth')
    (folder / 'lit_s.pth').write_text('<!DOCTYPE html><html><body>Sign in</body></html>')
    assert weights.cache_problem('lit_ti') == f'{folder / "lit_ti.pth"} holds lit_s weights, not the lit_ti release'
    assert 'is an HTML page' in weights.cache_problem('lit_s') and weights.cache_problem('lit_m') is None
    result = lit('weights', '--json')
    assert result.exit_code == 0, result.output
    rows = {w['variant']: w for w in json.loads(result.stdout)['weights']}
    assert not rows['lit_ti']['cached'] and 'holds lit_s weights' in rows['lit_ti']['problem']
    assert not rows['lit_s']['cached'] and 'HTML page' in rows['lit_s']['problem']
    result = lit('weights')
    assert 'no (another file there)' in result.output and 'not the release: ' in result.output
    from litcli.paths import REPO_ASSETS
    photo = str(sorted((REPO_ASSETS / 'photos').glob('*.jpg'))[0])
    for command in (('weights', '--download', 'ti'), ('predict', photo, '--pretrained', '--variant', 'ti')):
        result = lit(*command)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert 'holds lit_s weights, not the lit_ti release' in lines[0] and 'delete it' in lines[0], lines[0]
        assert '--variant s' not in lines[0]
    assert (folder / 'lit_ti.pth').exists()  # the user's file is left where it is
