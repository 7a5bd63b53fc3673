"""DTM forward+backward: the pure (bilinear gather + matmul) path vs torchvision's deform_conv2d vs a plain 2x2/s2 conv.

Measured side by side in one run, interleaved (A B C A B C ...) after warm-up, median of --repeats.
    python benchmarks/bench_dtm.py                     # CPU, 2 threads, (32, 64, 56, 56) -> 128
    python benchmarks/bench_dtm.py --channels-last      # the layout LIT's token maps have inside the model
    python benchmarks/bench_dtm.py --device cuda
    python benchmarks/bench_dtm.py --json               # the figures as JSON (what benchmarks/gpu_check.py reads)
"""
import argparse
import json
import statistics
from typing import Dict

import torch
import torch.nn.functional as F

from litcli.core.analysis.benchmark import interleaved_times
from litcli.models.dtm import DeformableTokenMerging, deform_conv2x2, torchvision_ops_available


def run(device: str = 'cpu', shape=(32, 64, 56, 56), out_chs: int = 128, repeats: int = 10, warmup: int = 2,
        channels_last: bool = False) -> Dict:
    """Time every case; returns the setup and, per case, median/min/max ms and the ratio to the plain conv."""
    dev = torch.device(device)
    B, C, H, W = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    off = (torch.randn(B, 8, H // 2, W // 2, generator=g) * 2).to(dev).requires_grad_(True)
    w = (torch.randn(out_chs, C, 2, 2, generator=g) / (4 * C) ** 0.5).to(dev).requires_grad_(True)
    b = torch.zeros(out_chs, device=dev, requires_grad=True)

    # The whole DTM layer (offset conv + deformable conv + BN + GELU), offsets non-zero as after training.
    module = DeformableTokenMerging(C, out_chs, backend='pure').to(dev).train()
    torch.nn.init.normal_(module.dconv.conv_offset.weight, std=0.05)
    cases = {
        'plain conv2d 2x2/s2': lambda: F.conv2d(x, w, b, stride=2),
        'DTM pure (gather)': lambda: deform_conv2x2(x, off, w, b, backend='pure'),
        'DTM layer, pure': lambda: module(x),
    }
    if torchvision_ops_available():
        cases['DTM torchvision'] = lambda: deform_conv2x2(x, off, w, b, backend='torchvision')
        module_tv = DeformableTokenMerging(C, out_chs, backend='torchvision').to(dev).train()
        module_tv.load_state_dict(module.state_dict())
        cases['DTM layer, torchvision'] = lambda: module_tv(x)
        params = (*module.parameters(), *module_tv.parameters())
    else:
        params = tuple(module.parameters())

    def step(fn):
        for t in (x, off, w, b, *params):
            t.grad = None
        fn().sum().backward()
        if dev.type == 'cuda':
            torch.cuda.synchronize()

    runs = interleaved_times([lambda fn=fn: step(fn) for fn in cases.values()], warmup, repeats)
    base = statistics.median(runs[0])
    result = {'device': str(dev), 'shape': [B, C, H, W], 'out_chs': out_chs, 'layout': 'channels-last' if
              channels_last else 'NCHW', 'threads': torch.get_num_threads(), 'repeats': repeats, 'cases': {}}
    for name, ts in zip(cases, runs):
        med = statistics.median(ts)
        result['cases'][name] = {'ms': 1000 * med, 'min_ms': 1000 * min(ts), 'max_ms': 1000 * max(ts),
                                 'x_plain_conv': med / base}
    if 'DTM torchvision' in result['cases']:
        result['torchvision_over_pure'] = (result['cases']['DTM torchvision']['ms'] /
                                           result['cases']['DTM pure (gather)']['ms'])
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--shape', default='32,64,56,56', help='B,C_in,H,W')
    ap.add_argument('--out-chs', type=int, default=128)
    ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--channels-last', action='store_true', help='channels-last input (as inside LIT) for all')
    ap.add_argument('--json', action='store_true', help='print the figures as JSON instead of a table')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.device, tuple(map(int, args.shape.split(','))), args.out_chs, args.repeats, args.warmup,
                 args.channels_last)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"DTM forward+backward, input {tuple(result['shape'])} {result['layout']} -> {args.out_chs} ch, "
          f"{result['device']}, {result['threads']} threads, median of {args.repeats} (interleaved)")
    for name, c in result['cases'].items():
        print(f"  {name:26s} {c['ms']:8.1f} ms  (min {c['min_ms']:.1f}, max {c['max_ms']:.1f})  "
              f"{c['x_plain_conv']:5.2f}x plain conv")
    if 'torchvision_over_pure' in result:
        ratio = result['torchvision_over_pure']
        print(f'  pure path is {ratio:.1f}x faster than torchvision.ops.deform_conv2d' if ratio >= 1 else
              f'  torchvision.ops.deform_conv2d is {1 / ratio:.1f}x faster than the pure path')


if __name__ == '__main__':
    main()
