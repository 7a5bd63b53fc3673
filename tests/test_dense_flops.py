"""``lit flops --task`` and ``lit bench --task``: the six parameter cells of Tables 6-8, MACs by part that add up
and agree with independent counts, the side-by-side bench against the ResNet-50 counterparts, one-line errors."""
import json

import pytest
import torch
from typer.testing import CliRunner

from litcli.cli import app
from litcli.core.analysis import dense_flops as D
from litcli.core.analysis.benchmark import BenchConfig, bench_models
from litcli.core.analysis.flops import count_macs
from litcli.models import create_dense_backbone

runner = CliRunner()
ENV = {'COLUMNS': '160'}
TINY = (64, 64)

# Tables 6-8: (task, variant) -> exact count measured on torchvision (dense.md section 6), M with two decimals,
# the paper's cell.
CELLS = [
    ('retinanet', 'ti', 29_621_708, '29.62', 30), ('retinanet', 's', 38_904_292, '38.90', 39),
    ('mask-rcnn', 'ti', 39_543_501, '39.54', 40), ('mask-rcnn', 's', 48_244_453, '48.24', 48),
    ('semantic-fpn', 'ti', 23_638_382, '23.64', 24), ('semantic-fpn', 's', 31_850_502, '31.85', 32),
]


def invoke(*args):
    return runner.invoke(app, list(args), prog_name='lit', env=ENV)


def slow_for_mask_rcnn(cells):
    """Mask R-CNN's count runs its heads on 1000 RoIs (~60 GMACs at any input size): several seconds."""
    return [pytest.param(*c, marks=pytest.mark.slow) if c[0] == 'mask-rcnn' else c for c in cells]


@pytest.mark.parametrize('task, variant, exact, in_m, paper', slow_for_mask_rcnn(CELLS))
def test_the_six_parameter_cells(task, variant, exact, in_m, paper):
    # Parameters do not depend on the input size (LIT-S's tables are built for the dense grid): count at a tiny one.
    result = invoke('flops', '--task', task, '--variant', variant, '--img-size', '64x64', '--json')
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    (row,) = report['results']
    assert row['model'] == f"{task.replace('-', '_')}_lit_{variant}"
    assert row['params']['total'] == exact
    assert row['params_m'] == in_m and row['params_m_rounded'] == str(paper) and row['paper_params_m'] == paper
    for counts in (row['params'], row['macs']):
        assert counts['backbone'] + counts['neck'] + counts['heads'] == counts['total']
        assert min(counts['backbone'], counts['neck'], counts['heads']) > 0
    assert report['paper_sizes'] == list(D.PAPER_SIZES[task.replace('-', '_')])


def test_the_table_prints_exact_counts_and_the_paper_cell():
    result = invoke('flops', '--task', 'semantic-fpn', '--variant', 's', '--img-size', '64')
    assert result.exit_code == 0, result.output
    assert '31,850,502 = 31.85 M, 32 M rounded; the paper (Table 8): 32 M' in result.output
    assert 'Counted: backbone + FPN + FPNHead' in result.output
    assert 'Counted as 0 in semantic_fpn_lit_s' in result.output  # uncounted ops are listed, as for classifiers


def test_backbone_macs_equal_the_backbone_counted_alone():
    """The by-part split of the whole model gives the dense backbone exactly what counting it alone gives."""
    for variant in ('ti', 's'):
        row = D.analyse_dense_model(f'semantic_fpn_lit_{variant}', TINY)
        alone = count_macs(create_dense_backbone(variant, 'segmentation').eval(), torch.randn(1, 3, *TINY))
        assert row['macs']['backbone'] == alone.total > 0
        assert row['dtm_sampling_macs'] == alone.sampling > 0


@pytest.mark.parametrize('lit, resnet', [('retinanet_lit_ti', 'retinanet_resnet50_fpn'),
                                         ('semantic_fpn_lit_s', 'semantic_fpn_resnet50')])
def test_heads_cost_the_same_behind_either_backbone(lit, resnet):
    """Same heads on FPN levels of the same sizes: equal head MACs and parameters, LIT or ResNet-50 body."""
    a, b = D.analyse_dense_model(lit, (96, 128)), D.analyse_dense_model(resnet, (96, 128))
    assert a['macs']['heads'] == b['macs']['heads'] > 0
    assert a['params']['heads'] == b['params']['heads']
    assert a['macs']['backbone'] != b['macs']['backbone']


def test_detection_inputs_are_counted_padded():
    assert D.counted_size('retinanet_lit_ti', (800, 1333)) == (800, 1344)
    assert D.counted_size('semantic_fpn_lit_ti', (512, 683)) == (512, 683)
    row = D.analyse_dense_model('retinanet_lit_ti', (60, 70))
    assert row['img_size'] == [60, 70] and row['input_size'] == [64, 96]
    assert row['macs']['total'] == D.analyse_dense_model('retinanet_lit_ti', (64, 96))['macs']['total']


@pytest.mark.slow
def test_mask_rcnn_counts_the_documented_rois():
    """The RPN head plus the box head on 1000 RoIs and the mask head on 100: the same with either backbone; the
    box head's MACs are exactly 1000 RoIs' worth."""
    lit, resnet = (D.analyse_dense_model(name, TINY) for name in ('mask_rcnn_lit_ti', 'maskrcnn_resnet50_fpn'))
    assert 'box head on 1000 RoIs, mask head on 100 RoIs' in lit['counted']
    assert 'torchvision::roi_align' in lit['unsupported_ops']  # listed, not silently dropped
    assert lit['macs']['heads'] == resnet['macs']['heads']
    # The ResNet-50 body has no linear layer: its model's linears are the box head's 2 FC + predictor, per RoI.
    per_roi = 256 * 7 * 7 * 1024 + 1024 * 1024 + 1024 * (81 + 81 * 4)
    assert resnet['by_operator']['linear'] == D.MASK_RCNN_BOX_ROIS * per_roi


@pytest.mark.slow
def test_bench_runs_both_models_side_by_side():
    result = invoke('bench', '--task', 'retinanet', '--variant', 'ti', '--img-size', '64x96', '--warmup', '0',
                    '--repeats', '1', '--no-memory', '--threads', '2', '--device', 'cpu', '--json')
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (block,) = report['results']
    assert block['img_size'] == [64, 96] and report['task'] == 'retinanet' and report['batch_size'] == 1
    lit, resnet = block['rows']
    assert (lit['model'], resnet['model']) == ('retinanet_lit_ti', 'retinanet_resnet50_fpn')
    assert lit['ratio_to_first'] == 1.0 and resnet['ratio_to_first'] > 0
    assert lit['gmacs_per_img'] == pytest.approx(D.analyse_dense_model('retinanet_lit_ti', (64, 96))['macs']['total']
                                                 / 1e9)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['mask_rcnn_lit_ti', 'maskrcnn_resnet50_fpn', 'semantic_fpn_lit_ti',
                                  'retinanet_resnet50_fpn'])
def test_bench_train_step_of_each_family(name):
    cfg = BenchConfig(mode='train', batch_size=1, device='cpu', warmup=0, repeats=1, memory=False)
    (entry,) = bench_models([name], cfg, (64, 64), count_macs=False)['entries']
    assert entry.error is None and len(entry.times) == 1


@pytest.mark.slow
def test_bench_table_names_both_models_and_the_ratio():
    result = invoke('bench', '--task', 'semantic-fpn', '--variant', 'ti', '--img-size', '64', '--warmup', '0',
                    '--repeats', '1', '--no-memory', '--threads', '2', '--device', 'cpu')
    assert result.exit_code == 0, result.output
    assert 'semantic_fpn_lit_ti' in result.output and 'semantic_fpn_resnet50' in result.output
    assert '1.00x' in result.output and 'infer @ 64x64' in result.output


@pytest.mark.parametrize('args, message', [
    (['flops', '--task', 'yolo'], "unknown --task 'yolo'; choose one of: retinanet, mask-rcnn, semantic-fpn"),
    (['flops', '--task', 'retinanet', '-v', 'm'], '--task retinanet takes --variant ti or s'),
    (['flops', '--task', 'retinanet', '--remove-msa', '1'], '--remove-msa count classification models'),
    (['flops', '--task', 'mask-rcnn', '--compare', 'resnet50', '--batch', '2'], '--compare, --batch count'),
    (['flops', '--task', 'semantic-fpn', '--img-size', '16'], 'at least 32 px a side'),
    (['bench', '--task', 'retinanet', '--compare', 'resnet50'], '--compare is for classification models'),
    (['bench', '--task', 'segformer', '--device', 'cpu'], "unknown --task 'segformer'"),
    (['bench', '--task', 'retinanet', '-v', 'b', '--device', 'cpu'], 'takes --variant ti or s'),
])
def test_bad_input_one_line_nonzero(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error:') and message in lines[0], result.output
