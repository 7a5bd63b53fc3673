"""The dense tasks' recipes (dense.md section 1), their merge, parameter groups and mmcv's LR schedules (issue 30)."""
import pytest
import torch
import yaml

from litcli.core.config import (DENSE_CONFIG_KEYS, DENSE_DATA_PRESETS, DENSE_RECIPES, DENSE_TASK_PRESETS, RECIPE_DIR,
                                check_dense_config, dense_model_name, dense_recipe, dense_task_name,
                                dense_variant_name, new_dense_run_config)
from litcli.core.errors import LitError, UsageError
from litcli.core.modelio.checkpoint import plain
from litcli.core.training.optim import create_dense_optimizer, create_dense_scheduler, dense_param_groups

TASKS = ('retinanet', 'mask_rcnn', 'semantic_fpn')


# ---------------------------------------------------------------------------------------------------------------
# The recipes as data

@pytest.mark.parametrize('variant', ['ti', 's'])
@pytest.mark.parametrize('task', ['retinanet', 'mask_rcnn'])
def test_detection_recipe_is_the_official_1x_schedule(task, variant):
    cfg = dense_recipe(task, variant)
    assert (cfg['task'], cfg['variant']) == (task, variant)
    assert cfg['lr'] == (2e-4 if task == 'mask_rcnn' else 1e-4) and cfg['weight_decay'] == 1e-4
    assert (cfg['opt'], cfg['opt_eps'], cfg['opt_betas']) == ('adamw', 1e-8, [0.9, 0.999])
    assert (cfg['epochs'], cfg['updates_per_epoch']) == (12, None)  # 12 passes over COCO train2017
    assert (cfg['sched'], cfg['decay_epochs'], cfg['decay_rate']) == ('multistep', [8, 11], 0.1)
    assert (cfg['warmup_iters'], cfg['warmup_ratio']) == (500, 0.001)
    assert cfg['img_scale'] == [1333, 800] and cfg['batch_size'] == 2 and cfg['hflip'] == 0.5  # 2 x 8 GPUs = 16
    assert cfg['drop_path'] == {'ti': 0.1, 's': 0.2}[variant]
    assert cfg['crop_size'] is None and cfg['photometric'] is False and cfg['clip_grad'] is None
    assert cfg['num_classes'] is None and cfg['pretrained'] is None and cfg['sched_on_epochs'] is False


@pytest.mark.parametrize('variant', ['ti', 's'])
def test_segmentation_recipe_is_the_official_80k_schedule(variant):
    cfg = dense_recipe('semantic-fpn', variant)
    assert cfg['task'] == 'semantic_fpn' and cfg['drop_path'] == {'ti': 0.1, 's': 0.2}[variant]
    assert cfg['epochs'] * cfg['updates_per_epoch'] == 80_000 and cfg['updates_per_epoch'] == 8000  # eval interval
    assert (cfg['lr'], cfg['weight_decay'], cfg['opt']) == (1e-4, 1e-4, 'adamw')
    assert (cfg['sched'], cfg['poly_power'], cfg['min_lr'], cfg['warmup_iters']) == ('poly', 0.9, 1e-6, 0)
    assert cfg['img_scale'] == [2048, 512] and cfg['crop_size'] == [512, 512]
    assert cfg['ratio_range'] == [0.5, 2.0] and cfg['cat_max_ratio'] == 0.75
    assert cfg['photometric'] is True and cfg['hflip'] == 0.5 and cfg['batch_size'] == 2


def test_recipes_share_one_key_set_of_plain_types_and_are_copies():
    for by_variant in DENSE_RECIPES.values():
        for cfg in by_variant.values():
            assert set(cfg) == DENSE_CONFIG_KEYS and yaml.safe_load(yaml.safe_dump(cfg)) == cfg
    cfg = dense_recipe('retinanet', 'ti')
    cfg['decay_epochs'].append(99)
    assert DENSE_RECIPES['retinanet']['ti']['decay_epochs'] == [8, 11]


@pytest.mark.parametrize('variant', ['ti', 's'])
@pytest.mark.parametrize('task', TASKS)
def test_shipped_dense_recipe_yaml_matches(task, variant):
    path = RECIPE_DIR / f'{task}_lit_{variant}.yaml'
    assert yaml.safe_load(path.read_text()) == DENSE_RECIPES[task][variant]
    data = 'ade20k:/a' if task == 'semantic_fpn' else 'coco:/c'  # real data: no preset under the file
    assert new_dense_run_config(config_file=path, overrides={'data': data}) == {**dense_recipe(task, variant),
                                                                                'data': data}


# ---------------------------------------------------------------------------------------------------------------
# Names

@pytest.mark.parametrize('value,expected', [('ti', 'ti'), ('lit_ti', 'ti'), ('LIT-Ti', 'ti'), (' S ', 's'),
                                            ('lit-s', 's'), ('LIT_S', 's')])
def test_variant_names(value, expected):
    assert dense_variant_name(value) == expected


@pytest.mark.parametrize('value', ['m', 'lit_b', 'LIT-M'])
def test_variants_without_dense_backbones_are_refused_in_one_line(value):
    with pytest.raises(UsageError) as e:
        dense_variant_name(value)
    assert '\n' not in str(e.value) and 'LIT-' in str(e.value) and 'choose ti or s' in str(e.value)


def test_unknown_variant_and_task_suggest_the_nearest():
    with pytest.raises(UsageError, match=r"unknown variant 'tii'.*did you mean 'ti'"):
        dense_variant_name('tii')
    with pytest.raises(UsageError, match=r"unknown task 'maskrcnn'.*mask-rcnn.*did you mean 'mask-rcnn'"):
        dense_task_name('maskrcnn')
    with pytest.raises(UsageError, match=r"did you mean 'semantic-fpn'"):
        dense_task_name('semantic_fnp')


@pytest.mark.parametrize('value,expected', [('retinanet', 'retinanet'), ('RetinaNet', 'retinanet'),
                                            ('mask-rcnn', 'mask_rcnn'), ('Mask_RCNN', 'mask_rcnn'),
                                            ('semantic-fpn', 'semantic_fpn'), ('semantic_fpn', 'semantic_fpn')])
def test_task_names(value, expected):
    assert dense_task_name(value) == expected


def test_model_name_is_the_zoo_name():
    from litcli.models.dense_zoo import DENSE_MODEL_NAMES

    names = {dense_model_name(t, v) for t in ('retinanet', 'mask-rcnn', 'semantic-fpn') for v in ('LIT-Ti', 's')}
    assert names == set(DENSE_MODEL_NAMES)


# ---------------------------------------------------------------------------------------------------------------
# The merge: recipe < data preset < YAML < flags

def test_merge_order(tmp_path):
    preset = DENSE_DATA_PRESETS['fashion-mnist-det']
    assert preset['lr'] != 1e-4 and preset['img_scale'] == [160, 128]  # the synthetic canvas, not resized
    cfg = new_dense_run_config('retinanet', 'ti')  # no data: the task's built-in scenes, with their preset
    assert cfg['data'] == 'fashion-mnist-det' and cfg['lr'] == preset['lr'] and cfg['img_scale'] == [160, 128]
    assert cfg['weight_decay'] == 1e-4 and cfg['drop_path'] == 0.1  # the recipe where the preset is silent
    (tmp_path / 'c.yaml').write_text('lr: 5.0e-4\nepochs: 3\nvariant: s\ntask: mask-rcnn\n')
    cfg = new_dense_run_config(config_file=tmp_path / 'c.yaml', overrides={'epochs': 2, 'batch_size': None})
    assert (cfg['task'], cfg['variant'], cfg['drop_path']) == ('mask_rcnn', 's', 0.2)  # the file's task/variant
    mask_preset = {**preset, **DENSE_TASK_PRESETS[('fashion-mnist-det', 'mask_rcnn')]}  # the task's layer on top
    assert cfg['lr'] == 5e-4 and cfg['epochs'] == 2 and cfg['batch_size'] == mask_preset['batch_size']  # flag > file
    assert cfg['model_kwargs'] == mask_preset['model_kwargs']  # fewer RoIs than COCO's
    cfg = new_dense_run_config('retinanet', 'ti', tmp_path / 'c.yaml', {'lr': 7e-4})
    assert (cfg['task'], cfg['variant'], cfg['lr'], cfg['epochs']) == ('retinanet', 'ti', 7e-4, 3)  # flags win
    cfg = new_dense_run_config('retinanet', 's', overrides={'data': 'coco:/data/coco'})  # no preset for real data
    assert cfg == {**dense_recipe('retinanet', 's'), 'data': 'coco:/data/coco'}
    seg = new_dense_run_config('semantic-fpn', 'ti')
    assert seg['data'] == 'fashion-mnist-seg' and seg['crop_size'] == [128, 128] and seg['img_scale'] == [640, 128]
    assert seg['sched'] == 'poly' and seg['cat_max_ratio'] == 0.75


def test_unknown_keys_are_one_line_errors_with_a_suggestion(tmp_path):
    (tmp_path / 'c.yaml').write_text('warmup_iter: 10\nlr: 1.0e-4\n')
    with pytest.raises(LitError) as e:
        new_dense_run_config('retinanet', 'ti', tmp_path / 'c.yaml')
    assert str(e.value).startswith(f'{tmp_path / "c.yaml"}: unknown setting(s) warmup_iter (did you mean '
                                   f'warmup_iters?)') and '\n' not in str(e.value)
    with pytest.raises(LitError, match=r'unknown setting\(s\) decay_epoch \(did you mean decay_epochs\?\)'):
        new_dense_run_config('retinanet', 'ti', overrides={'decay_epoch': [1]})
    (tmp_path / 'bad.yaml').write_text('- 1\n- 2\n')
    with pytest.raises(LitError, match='must hold a mapping'):
        new_dense_run_config('retinanet', 'ti', tmp_path / 'bad.yaml')
    with pytest.raises(LitError, match='config file not found'):
        new_dense_run_config('retinanet', 'ti', tmp_path / 'none.yaml')


def test_refusals():
    with pytest.raises(UsageError, match='no task given'):
        new_dense_run_config()
    with pytest.raises(UsageError, match='LIT-B'):
        new_dense_run_config('retinanet', 'b')
    with pytest.raises(LitError, match='fashion-mnist-det is a detection set and semantic-fpn is a segmentation'):
        new_dense_run_config('semantic-fpn', 's', overrides={'data': 'fashion-mnist-det'})
    with pytest.raises(LitError, match='use coco:ROOT or fashion-mnist-det'):
        new_dense_run_config('mask-rcnn', 's', overrides={'data': 'ade20k:/a'})
    with pytest.raises(LitError, match="not a dense schedule.*did you mean 'poly'"):
        new_dense_run_config('retinanet', 'ti', overrides={'sched': 'polyy'})
    with pytest.raises(LitError, match='poly needs poly_power'):
        new_dense_run_config('retinanet', 'ti', overrides={'sched': 'poly'})
    with pytest.raises(LitError, match=r'crop_size must be two positive numbers'):
        new_dense_run_config('semantic-fpn', 'ti', overrides={'crop_size': [512]})
    cfg = dense_recipe('retinanet', 'ti')
    check_dense_config(cfg)
    with pytest.raises(LitError, match='epochs must be a positive whole number'):
        check_dense_config({**cfg, 'epochs': 0})


def test_classification_config_is_untouched():
    from litcli.core.config import CONFIG_KEYS, RECIPES, resolve_config

    assert 'task' not in CONFIG_KEYS and set(RECIPES) >= {'lit_ti', 'lit_s', 'lit_m', 'lit_b'}
    assert resolve_config('s')['lr_base'] == 5e-4


# ---------------------------------------------------------------------------------------------------------------
# Parameter groups (mmcv's DefaultOptimizerConstructor with the official paramwise_cfg)

def _group_names(model, groups):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {g['group']: {by_id[id(p)] for p in g['params']} for g in groups}


@pytest.mark.parametrize('name', ['retinanet_lit_ti', 'semantic_fpn_lit_s', 'semantic_fpn_lit_ti'])
def test_everything_decays_where_the_official_config_sets_no_paramwise_cfg(name):
    from litcli.models.dense_zoo import create_dense_model

    model = create_dense_model(name, num_classes=3)
    groups = dense_param_groups(model, weight_decay=1e-4)
    assert [g['group'] for g in groups] == ['decay'] and groups[0]['weight_decay'] == 1e-4
    assert len(groups[0]['params']) == len(list(model.parameters()))  # biases and norms included


@pytest.mark.parametrize('name', ['retinanet_lit_s', 'mask_rcnn_lit_s'])
def test_lit_s_detectors_exempt_exactly_the_tables_and_norms_of_the_backbone(name):
    from litcli.models.dense_zoo import create_dense_model

    model = create_dense_model(name, num_classes=3)
    groups = dense_param_groups(model, weight_decay=1e-4)
    names = _group_names(model, groups)
    assert [g['weight_decay'] for g in groups] == [1e-4, 0.0]
    # mmcv matches custom_keys as substrings of every parameter name of the detector: the same set, all in the body
    mmcv_exempt = {n for n, _ in model.named_parameters() if 'relative_position_bias_table' in n or 'norm' in n}
    assert names['no_decay'] == mmcv_exempt and all(n.startswith('backbone.body.') for n in mmcv_exempt)
    # LIT-S (depths 2, 2, 6, 2): 4 MLP blocks x norm2 (w, b) + 8 attention blocks x (norm1, norm2, table)
    # + the stem's norm + 3 DTM BatchNorms + the output norms norm1..norm3 = 8 + 40 + 2 + 6 + 6
    assert len(names['no_decay']) == 62
    assert names['decay'] | names['no_decay'] == {n for n, _ in model.named_parameters()}


def test_dense_optimizer_uses_the_recipe():
    from litcli.models.dense_zoo import create_dense_model

    model = create_dense_model('retinanet_lit_s', num_classes=3)
    cfg = dense_recipe('mask-rcnn', 's')
    opt = create_dense_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g['group'], g['lr'], g['weight_decay']) for g in opt.param_groups] == \
        [('decay', 2e-4, 1e-4), ('no_decay', 2e-4, 0.0)]
    assert opt.defaults['betas'] == (0.9, 0.999) and opt.defaults['eps'] == 1e-8


# ---------------------------------------------------------------------------------------------------------------
# Schedules: mmcv 1.x's LrUpdaterHook, written out here as mmcv's code computes it

def mmcv_step_lr(base_lr, it, epoch_len, step=(8, 11), gamma=0.1, warmup_iters=500, warmup_ratio=0.001):
    """StepLrUpdaterHook(by_epoch=True) with linear warmup: the lr of iteration ``it`` (runner.iter)."""
    epoch = it // epoch_len
    exp = len(step)
    for i, s in enumerate(step):
        if epoch < s:
            exp = i
            break
    regular = base_lr * gamma ** exp
    if it < warmup_iters:
        k = (1 - it / warmup_iters) * (1 - warmup_ratio)
        return regular * (1 - k)
    return regular


def mmcv_poly_lr(base_lr, it, max_iters, power=0.9, min_lr=1e-6, warmup_iters=0, warmup_ratio=0.001):
    """PolyLrUpdaterHook(by_epoch=False), with linear warmup when warmup_iters > 0."""
    regular = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
    if it < warmup_iters:
        return regular * (1 - (1 - it / warmup_iters) * (1 - warmup_ratio))
    return regular


def _optimizer(lrs=(1e-4,)):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in lrs]
    return torch.optim.AdamW([dict(params=[p], lr=lr) for p, lr in zip(params, lrs)], lr=lrs[0])


def _lr_before_update(opt, sched, t):
    """The lr the update numbered ``t`` (0-based) uses: the engine calls step_update(num_updates) after each one
    (the schedule is a function of t: stepping to 0 gives the lr the scheduler set when it was made)."""
    sched.step_update(num_updates=t)
    return [g['lr'] for g in opt.param_groups]


def test_multistep_is_mmcv_at_the_turning_points():
    upe = 1000
    opt = _optimizer((1e-4, 2e-4))
    sched = create_dense_scheduler(opt, dense_recipe('retinanet', 'ti'), updates_per_epoch=upe)
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([1e-7, 2e-7], rel=1e-12)  # update 0
    for t in (0, 1, 250, 499, 500, 8 * upe - 1, 8 * upe, 11 * upe - 1, 11 * upe, 12 * upe - 1):
        assert _lr_before_update(opt, sched, t) == pytest.approx(
            [mmcv_step_lr(base, t, upe) for base in (1e-4, 2e-4)], rel=1e-12, abs=0), t
    hand = {250: 1e-4 * (0.001 + 0.999 * 0.5), 500: 1e-4, 8 * upe: 1e-5, 11 * upe: 1e-6}
    for t, lr in hand.items():
        assert _lr_before_update(opt, sched, t)[0] == pytest.approx(lr, rel=1e-12)


def test_multistep_warmup_over_a_decay_epoch_scales_the_decayed_lr_as_mmcv():
    """A small set: 8 epochs of 50 updates end inside the 500-update warmup (where timm's schedulers differ)."""
    upe = 50
    opt = _optimizer()
    sched = create_dense_scheduler(opt, dense_recipe('retinanet', 'ti'), updates_per_epoch=upe)
    lrs = []
    for t in range(12 * upe):
        lrs.append(_lr_before_update(opt, sched, t)[0])
    assert lrs == pytest.approx([mmcv_step_lr(1e-4, t, upe) for t in range(12 * upe)], rel=1e-12, abs=0)
    assert lrs[450] == pytest.approx(1e-5 * (1 - 0.1 * 0.999))  # decayed at 400, still warming up

    from timm.scheduler import MultiStepLRScheduler
    timm_opt = _optimizer()
    timm_sched = MultiStepLRScheduler(timm_opt, decay_t=[8 * upe, 11 * upe], decay_rate=0.1, warmup_t=500,
                                      warmup_lr_init=1e-7, t_in_epochs=False)
    timm_sched.step_update(450)
    assert timm_opt.param_groups[0]['lr'] != pytest.approx(lrs[450])  # why the schedule is written by hand


def test_poly_is_mmcv_at_the_start_middle_and_end():
    cfg = dense_recipe('semantic-fpn', 's')
    upe, total = cfg['updates_per_epoch'], cfg['epochs'] * cfg['updates_per_epoch']
    opt = _optimizer()
    sched = create_dense_scheduler(opt, cfg, updates_per_epoch=upe)
    assert opt.param_groups[0]['lr'] == 1e-4  # update 0: no warmup in mmseg's schedule_80k
    for t in (0, 1, 8000, total // 2, total - 2, total - 1):
        assert _lr_before_update(opt, sched, t)[0] == pytest.approx(mmcv_poly_lr(1e-4, t, total), rel=1e-12), t
    assert _lr_before_update(opt, sched, total // 2)[0] == pytest.approx((1e-4 - 1e-6) * 0.5 ** 0.9 + 1e-6)
    for t in (total, total + 1, 3 * total):  # no restart after the end (timm's cycles would)
        assert _lr_before_update(opt, sched, t)[0] == pytest.approx(1e-6, rel=1e-12)


def test_poly_with_warmup_scales_the_poly_lr_as_mmcv():
    cfg = {**dense_recipe('semantic-fpn', 'ti'), 'epochs': 4, 'updates_per_epoch': 100, 'warmup_iters': 50,
           'warmup_ratio': 0.01}
    opt = _optimizer()
    sched = create_dense_scheduler(opt, cfg, updates_per_epoch=100)
    lrs = [_lr_before_update(opt, sched, t)[0] for t in range(400)]
    assert lrs == pytest.approx([mmcv_poly_lr(1e-4, t, 400, warmup_iters=50, warmup_ratio=0.01)
                                 for t in range(400)], rel=1e-12, abs=0)


@pytest.mark.parametrize('task', ['retinanet', 'semantic_fpn'])
def test_schedule_state_saves_and_restores_mid_run(task):
    """As TrainState does: save plain(state_dict()) mid-run, load it into a fresh scheduler, step_update(step)."""
    cfg = {**dense_recipe(task, 's'), 'epochs': 6, 'warmup_iters': 120, 'warmup_ratio': 0.001,
           'decay_epochs': [2, 4] if task == 'retinanet' else None}
    upe, stop = 50, 130
    opt = _optimizer((1e-4, 3e-4))
    sched = create_dense_scheduler(opt, cfg, upe)
    straight = [_lr_before_update(opt, sched, t) for t in range(6 * upe)]

    opt = _optimizer((1e-4, 3e-4))
    sched = create_dense_scheduler(opt, cfg, upe)
    for t in range(stop + 1):
        _lr_before_update(opt, sched, t)
    saved = plain(sched.state_dict())
    yaml.safe_dump(saved)  # plain types only
    opt = _optimizer((1e-4, 3e-4))
    resumed = create_dense_scheduler(opt, {**cfg, 'warmup_iters': 0}, upe)  # the saved state is what counts
    resumed.load_state_dict(saved)
    resumed.step(3)  # TrainState.restore calls step(epoch) first: per-update schedules ignore it
    resumed.step_update(num_updates=stop)
    assert [g['lr'] for g in opt.param_groups] == straight[stop]
    assert [_lr_before_update(opt, resumed, t) for t in range(stop + 1, 6 * upe)] == straight[stop + 1:]
