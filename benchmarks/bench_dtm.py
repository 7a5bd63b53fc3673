"""DTM forward+backward: the pure (bilinear gather + matmul) path vs torchvision's deform_conv2d vs a plain 2x2/s2 conv.

Measured side by side in one run, interleaved (A B C A B C ...) after warm-up, median of --repeats.
    python benchmarks/bench_dtm.py                     # CPU, 2 threads, (32, 64, 56, 56) -> 128
    python benchmarks/bench_dtm.py --channels-last      # the layout LIT's token maps have inside the model
    python benchmarks/bench_dtm.py --device cuda
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

from litcli.bench import interleaved_times
from litcli.models.dtm import DeformableTokenMerging, deform_conv2x2, torchvision_ops_available


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--shape', default='32,64,56,56', help='B,C_in,H,W')
    ap.add_argument('--out-chs', type=int, default=128)
    ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--channels-last', action='store_true', help='channels-last input (as inside LIT) for all')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    B, C, H, W = map(int, args.shape.split(','))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g).to(dev)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    off = (torch.randn(B, 8, H // 2, W // 2, generator=g) * 2).to(dev).requires_grad_(True)
    w = (torch.randn(args.out_chs, C, 2, 2, generator=g) / (4 * C) ** 0.5).to(dev).requires_grad_(True)
    b = torch.zeros(args.out_chs, device=dev, requires_grad=True)

    # The whole DTM layer (offset conv + deformable conv + BN + GELU), offsets non-zero as after training.
    module = DeformableTokenMerging(C, args.out_chs, backend='pure').to(dev).train()
    torch.nn.init.normal_(module.dconv.conv_offset.weight, std=0.05)
    cases = {
        'plain conv2d 2x2/s2': lambda: F.conv2d(x, w, b, stride=2),
        'DTM pure (gather)': lambda: deform_conv2x2(x, off, w, b, backend='pure'),
        'DTM layer, pure': lambda: module(x),
    }
    if torchvision_ops_available():
        cases['DTM torchvision'] = lambda: deform_conv2x2(x, off, w, b, backend='torchvision')

    def step(fn):
        for t in (x, off, w, b, *module.parameters()):
            t.grad = None
        fn().sum().backward()
        if dev.type == 'cuda':
            torch.cuda.synchronize()

    runs = interleaved_times([lambda fn=fn: step(fn) for fn in cases.values()], args.warmup, args.repeats)
    times = dict(zip(cases, runs))

    base = statistics.median(times['plain conv2d 2x2/s2'])
    layout = 'channels-last' if args.channels_last else 'NCHW'
    print(f'DTM forward+backward, input {tuple(x.shape)} {layout} -> {args.out_chs} ch, {dev}, '
          f'{torch.get_num_threads()} threads, median of {args.repeats} (interleaved)')
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f'  {name:26s} {1000 * med:8.1f} ms  (min {1000 * min(ts):.1f}, max {1000 * max(ts):.1f})  '
              f'{med / base:5.2f}x plain conv')
    if 'DTM torchvision' in times:
        ratio = statistics.median(times['DTM torchvision']) / statistics.median(times['DTM pure (gather)'])
        print(f'  pure path is {ratio:.1f}x faster than torchvision.ops.deform_conv2d')


if __name__ == '__main__':
    main()
