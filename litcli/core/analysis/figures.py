"""The figures lit draws: DTM sampling points and offset magnitudes (Figure 2), attention maps (Figure 3) and a
run's curves. matplotlib with the Agg backend; every figure is written atomically (``core.io.save_figure``) and
closed after saving."""
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from litcli.core.analysis.offsets import OffsetTrace, offset_stats
from litcli.core.io import ELSEWHERE, save_figure

MIN_PANEL_PX = 448  # figures of small inputs (32 px) are scaled up to stay readable


def _figure(image: np.ndarray, scale: float = 2.0):
    """A figure showing ``image`` at ``scale`` screen pixels per image pixel (more for small images, so a panel
    is at least MIN_PANEL_PX), and that scale, which marker sizes follow."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    h, w = image.shape[:2]
    scale = max(scale, MIN_PANEL_PX / min(h, w))
    fig = plt.figure(figsize=(w * scale / 100, h * scale / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(image, interpolation='nearest')
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis('off')
    return fig, ax, scale


def _marker_size(scale: float, base: float) -> float:
    """Scatter marker area (points^2): ``base`` at the usual 2x scale, a pixel-and-a-half square on upscaled images."""
    return max(base, (0.9 * scale) ** 2)


def _box(ax, row, col, colour, cell=32, lw=1.5):
    from matplotlib.patches import Rectangle
    ax.add_patch(Rectangle((col * cell - 0.5, row * cell - 0.5), cell, cell, fill=False, edgecolor=colour, lw=lw))


def draw_token(trace: OffsetTrace, index: int, path: Path, elsewhere: str = ELSEWHERE):
    """The paper's per-token figure: the sampling points in red, the regular field (32x32 px for the 4x4 stem) in
    lime."""
    fig, ax, scale = _figure(trace.image)
    pts = trace.pixels[index]
    ax.scatter(pts[:, 1], pts[:, 0], s=_marker_size(scale, 6), marker='s', c='red', linewidths=0)
    _box(ax, *trace.tokens[index], colour='lime', cell=trace.field_px, lw=max(1.5, scale / 4))
    save_figure(fig, path, elsewhere)


def draw_overview(trace: OffsetTrace, path: Path, step: int = 1, elsewhere: str = ELSEWHERE):
    """All (or every ``step``-th) tokens' points in distinct colours, each with its regular field outlined."""
    import matplotlib.pyplot as plt
    fig, ax, scale = _figure(trace.image)
    keep = [i for i, (r, c) in enumerate(trace.tokens) if r % step == 0 and c % step == 0]
    colours = plt.get_cmap('hsv')(np.linspace(0, 1, len(keep), endpoint=False))
    for colour, i in zip(colours, keep):
        pts = trace.pixels[i]
        ax.scatter(pts[:, 1], pts[:, 0], s=_marker_size(scale, 4), marker='s', color=colour, linewidths=0)
        _box(ax, *trace.tokens[i], colour=colour, cell=trace.field_px, lw=max(0.8, scale / 5))
    save_figure(fig, path, elsewhere)


def draw_magnitude(trace: OffsetTrace, path: Path, elsewhere: str = ELSEWHERE):
    """One panel per DTM: mean offset magnitude (pixels) as a heat map, with the mean (dx, dy) as arrows."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    stats = offset_stats(trace)
    n = len(trace.offsets)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.8), squeeze=False)  # >= 448 px a panel
    for ax, (name, off), st in zip(axes[0], trace.offsets.items(), stats):
        mag = trace.lengths_px[name].mean(axis=0)  # h, w, pixels
        im = ax.imshow(mag, cmap='magma')
        mean_d = off.reshape(4, 2, *off.shape[-2:]).mean(axis=0)  # 2 (dy, dx), h, w; quiver scales the arrows
        ys, xs = np.mgrid[0:mag.shape[0], 0:mag.shape[1]]
        if np.abs(mean_d).max() > 0:  # all-zero arrows (untrained model) cannot be scaled
            ax.quiver(xs, ys, mean_d[1], -mean_d[0], color='cyan', angles='xy')
        ax.set_title(f"{name.replace('.dconv.conv_offset', '')}\nmean |offset| {st['mean_abs_offset_px']:.2f} px",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='px')
    fig.tight_layout()
    save_figure(fig, path, elsewhere, dpi=110)


def draw_stage_grid(mean: np.ndarray, grid: Tuple[int, int], query: Tuple[int, int], blocks: Sequence[int],
                    stage: int, path: Path, max_cols: int = 13, elsewhere: str = ELSEWHERE):
    """Rows = blocks, columns = heads plus a head-mean panel; each panel is the query's attention map.
    Blocks with many heads wrap onto several rows of at most ``max_cols`` panels."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    n_blocks, heads = mean.shape[:2]
    q = query[0] * grid[1] + query[1]
    cols = min(heads + 1, max_cols)
    rows_per_block = -(-(heads + 1) // cols)
    # Small token grids (a 32 px demo model's 4x4 stage) get panels of >= 448 px, large ones stay compact.
    size = MIN_PANEL_PX / 100 + 0.5 if max(grid) <= 8 else 1.6
    fig, axes = plt.subplots(n_blocks * rows_per_block, cols, squeeze=False,
                             figsize=(size * cols, size * n_blocks * rows_per_block * grid[0] / grid[1] + 0.6))
    for ax in axes.flat:
        ax.axis('off')
    lw = 1 if stage <= 2 else 2
    for b in range(n_blocks):
        maps = list(mean[b, :, q].reshape(heads, *grid)) + [mean[b, :, q].mean(0).reshape(grid)]
        for k, amap in enumerate(maps):
            ax = axes[b * rows_per_block + k // cols, k % cols]
            ax.axis('on')
            ax.imshow(amap, cmap='OrRd', interpolation='nearest')
            ax.add_patch(Rectangle((query[1] - 0.5, query[0] - 0.5), 1, 1, fill=False, edgecolor='lime', lw=lw))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f'b{blocks[b]} ' + ('mean' if k == heads else f'h{k}'), fontsize=7, pad=2)
    fig.suptitle(f'stage {stage}: attention of query ({query[0]},{query[1]}) on {grid[0]}x{grid[1]} tokens; '
                 f'rows: blocks, columns: heads, last: head mean', fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, elsewhere, dpi=100)


def draw_single(amap: np.ndarray, query: Tuple[int, int], stage: int, path: Path, elsewhere: str = ELSEWHERE):
    """One (stage, block, head) map, as the official per-head figures."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(amap, cmap='OrRd', interpolation='nearest')
    ax.add_patch(Rectangle((query[1] - 0.5, query[0] - 0.5), 1, 1, fill=False, edgecolor='lime',
                           lw=1 if stage <= 2 else 2))
    ax.axis('off')
    save_figure(fig, path, elsewhere, dpi=100, bbox_inches='tight', pad_inches=0, transparent=True)


def draw_confusion(confusion: np.ndarray, class_names: Sequence[str], path: Path, title: str = '',
                   elsewhere: str = ELSEWHERE):
    """The confusion matrix normalised per true class (each row sums to 1; a class without images stays 0), with
    the class names on both axes (up to 60 classes; beyond, the ticks are indices) and the share written in each
    cell up to 25 classes. Written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.float64)
    n = counts.shape[0]
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(6.0, 0.45 * n + 2.5), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap='Blues', vmin=0, vmax=1, interpolation='nearest')
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='share of the true class')
    if n <= 60:
        ax.set_xticks(range(n), [str(c) for c in class_names], rotation=60, ha='right', fontsize=8)
        ax.set_yticks(range(n), [str(c) for c in class_names], fontsize=8)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f'{norm[i, j]:.2f}', ha='center', va='center', fontsize=7,
                            color='white' if norm[i, j] > 0.5 else 'black')
    ax.set(xlabel='predicted class', ylabel='true class', title=title or 'confusion matrix (rows sum to 1)')
    fig.tight_layout()
    save_figure(fig, path, elsewhere, dpi=110)


# The panels of `lit compare`: (metrics.jsonl column, title, log scale when all positive)
COMPARE_PANELS = (('train_loss', 'train loss', False), (None, 'eval', False), ('lr', 'learning rate', True),
                  ('img_per_s', 'images/s (train)', False))


def draw_comparison(runs: Sequence[Tuple[str, Sequence[dict]]], metric: str, path: Path, notes: Sequence[str] = (),
                    elsewhere: str = ELSEWHERE):
    """Several runs' curves on shared axes, against epoch: train loss, ``metric`` (eval top-1 by default), learning
    rate and training images/s; one colour per run. ``notes`` (different lengths or datasets) go under the
    panels. Written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(12, 8 + 0.25 * len(notes)))
    for ax, (column, title, log) in zip(axes.flat, COMPARE_PANELS):
        column = column or metric
        values_all = []
        for label, rows in runs:
            points = [(r['epoch'], r[column]) for r in rows if r.get(column) is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            values_all += ys
            ax.plot(xs, ys, 'o-', ms=3, label=label)
        if column == metric and title == 'eval':
            title = {'eval_top1': 'eval top-1 (%)', 'eval_top5': 'eval top-5 (%)', 'eval_loss': 'eval loss',
                     'train_loss': 'train loss'}.get(metric, metric)
        ax.set(title=title, xlabel='epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log and values_all and all(v > 0 for v in values_all):
            ax.set_yscale('log')
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    if notes:
        fig.text(0.01, 0.005, '\n'.join(f'note: {n}' for n in notes), fontsize=8, va='bottom', ha='left')
    fig.tight_layout(rect=(0, 0.03 * len(notes), 1, 1))
    save_figure(fig, path, elsewhere, dpi=110)
