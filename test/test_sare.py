"""SARE: losses against numpy and the MATLAB gradients, NetVLAD, mining, Pittsburgh, toy run."""

import json
import math

from conftest import REPO_ROOT
import numpy as np
import pytest
import torch
from torch.nn import functional as F
from training_fixtures import finite_difference

from vpr_ros_training.config import load_config
from vpr_ros_training.gcl.networks import GemNet
from vpr_ros_training.gcl.retrieval import evaluate_recall
from vpr_ros_training.gcl.runner import load_weights
from vpr_ros_training.sare.losses import contrastive_tuple_loss, sare_loss, triplet_loss
from vpr_ros_training.sare.mining import MiningConfig, TupleMiner
from vpr_ros_training.sare.netvlad import NetVlad
from vpr_ros_training.sare.pittsburgh import read_pitts_split
from vpr_ros_training.sare.train import initialise_clusters, run_sare, SareConfig

TOY_CONFIG = REPO_ROOT / 'training' / 'vpr_ros_training' / 'configs' / 'sare_toy.yaml'


def unit_rows(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Return random L2-normalised rows of the given shape."""
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_kernel(d2: np.ndarray, kernel: str, temperature: float) -> np.ndarray:
    """Return the kernel values k(d) written out directly (no log-space tricks)."""
    if kernel == 'gaussian':
        return np.exp(-d2 / (2 * temperature))
    if kernel == 'cauchy':
        return 1.0 / (1.0 + d2 / (2 * temperature))
    return np.exp(-np.sqrt(d2) / (2 * temperature))


def numpy_sare(q, p, n, variant: str, kernel: str, temperature: float, norm: float) -> float:
    """Return -log of the positive's match-ability, summed and divided by ``norm``."""
    kp = numpy_kernel(((q - p) ** 2).sum(-1), kernel, temperature)
    kn = numpy_kernel(((q[:, None] - n) ** 2).sum(-1), kernel, temperature)
    if variant == 'joint':
        total = -np.log(kp / (kp + kn.sum(1))).sum()
    else:
        total = -np.log(kp[:, None] / (kp[:, None] + kn)).sum()
    return float(total / norm)


def autograd(loss_fn, *arrays: np.ndarray) -> tuple[float, list]:
    """Return the torch loss value and the gradients of every input (float64)."""
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    value = loss_fn(*tensors)
    value.backward()
    return value.item(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize('variant', ['ind', 'joint'])
@pytest.mark.parametrize('kernel', ['gaussian', 'cauchy', 'exponential'])
@pytest.mark.parametrize('temperature,reduction', [(0.5, 'triplets'), (0.07, 'queries')])
def test_sare_loss_and_gradients_match_numpy(variant: str, kernel: str, temperature: float,
                                             reduction: str) -> None:
    """Both variants, all kernels: value and q/p/n gradients equal the numpy definition."""
    rng = np.random.default_rng(0)
    q, p, n = unit_rows(rng, 3, 6), unit_rows(rng, 3, 6), unit_rows(rng, 3, 4, 6)
    norm = 12 if reduction == 'triplets' else 3
    value, grads = autograd(lambda a, b, c: sare_loss(a, b, c, variant, kernel, temperature,
                                                      reduction), q, p, n)
    assert value == pytest.approx(numpy_sare(q, p, n, variant, kernel, temperature, norm),
                                  rel=1e-9)
    references = [finite_difference(lambda v: numpy_sare(v, p, n, variant, kernel, temperature,
                                                         norm), q),
                  finite_difference(lambda v: numpy_sare(q, v, n, variant, kernel, temperature,
                                                         norm), p),
                  finite_difference(lambda v: numpy_sare(q, p, v, variant, kernel, temperature,
                                                         norm), n)]
    for grad, reference in zip(grads, references):
        np.testing.assert_allclose(grad, reference, atol=1e-6)


def test_sare_matches_the_matlab_code_and_openibl() -> None:
    """T = 0.5 gives MATLAB's forms and hand-written gradients; T = 0.07 is OpenIBL's softmax."""
    rng = np.random.default_rng(1)
    q, p, n = unit_rows(rng, 2, 5), unit_rows(rng, 2, 5), unit_rows(rng, 2, 3, 5)
    joint = sare_loss(torch.tensor(q), torch.tensor(p), torch.tensor(n), 'joint',
                      reduction='sum').item()
    matlab = np.log1p(np.exp(2 * np.einsum('bd,bjd->bj', q, n - p[:, None])).sum(1)).sum()
    assert joint == pytest.approx(matlab, rel=1e-10)
    value, (gq, gp, gn) = autograd(lambda a, b, c: sare_loss(a, b, c, 'ind', reduction='sum'),
                                   q[:1], p[:1], n[:1, :1])
    kp, kn = math.exp(-((q[0] - p[0]) ** 2).sum()), math.exp(-((q[0] - n[0, 0]) ** 2).sum())
    c_p = kp / (kp + kn)
    np.testing.assert_allclose(gp[0], -2 * (1 - c_p) * (q[0] - p[0]), atol=1e-10)
    np.testing.assert_allclose(gn[0, 0], 2 * (1 - c_p) * (q[0] - n[0, 0]), atol=1e-10)
    np.testing.assert_allclose(gq[0], 2 * (1 - c_p) * (n[0, 0] - p[0]), atol=1e-10)
    logits = torch.cat([torch.tensor(np.einsum('bd,bd->b', q, p))[:, None],
                        torch.tensor(np.einsum('bd,bjd->bj', q, n))], 1) / 0.07
    openibl = -F.log_softmax(logits, dim=1)[:, 0].mean().item()
    ours = sare_loss(torch.tensor(q), torch.tensor(p), torch.tensor(n), 'joint',
                     temperature=0.07, reduction='queries').item()
    assert ours == pytest.approx(openibl, rel=1e-10)


def numpy_triplet(q, p, n, margin: float) -> float:
    """Return the NetVLAD triplet loss averaged over (query, negative) pairs."""
    d2p, d2n = ((q - p) ** 2).sum(-1), ((q[:, None] - n) ** 2).sum(-1)
    return float(np.maximum(0.0, margin + d2p[:, None] - d2n).sum() / d2n.size)


def numpy_contrastive(q, p, n, margin: float) -> float:
    """Return the tuple contrastive loss averaged over (query, negative) pairs."""
    d2p, dn = ((q - p) ** 2).sum(-1), np.sqrt(((q[:, None] - n) ** 2).sum(-1))
    return float((0.5 * d2p.sum() + 0.5 * (np.maximum(margin - dn, 0) ** 2).sum()) / dn.size)


@pytest.mark.parametrize('name', ['triplet', 'contrastive'])
def test_baseline_losses_and_gradients_match_numpy(name: str) -> None:
    """Triplet (margin 0.1 on squared distances) and contrastive baselines with gradients."""
    rng = np.random.default_rng(2)
    q, p, n = unit_rows(rng, 4, 5), unit_rows(rng, 4, 5), unit_rows(rng, 4, 3, 5)
    n[0, 0] = q[0] + 0.01 * rng.normal(size=5)
    torch_fn, numpy_fn, margin = {'triplet': (triplet_loss, numpy_triplet, 1.5),
                                  'contrastive': (contrastive_tuple_loss, numpy_contrastive,
                                                  1.2)}[name]
    value, grads = autograd(lambda a, b, c: torch_fn(a, b, c, margin), q, p, n)
    assert value == pytest.approx(numpy_fn(q, p, n, margin), rel=1e-9)
    assert 0 < value
    for index, grad in enumerate(grads):
        def partial(v, index=index):
            args = [q, p, n]
            args[index] = v
            return numpy_fn(*args, margin)
        np.testing.assert_allclose(grad, finite_difference(partial, [q, p, n][index]),
                                   atol=1e-6)


def numpy_netvlad(features: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                  centroids: np.ndarray) -> np.ndarray:
    """Return NetVLAD of one ``[C, H, W]`` map with explicit loops over clusters."""
    x = features.reshape(features.shape[0], -1).T
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    logits = x @ weight.T + bias
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    blocks = []
    for k in range(len(centroids)):
        v = (soft[:, k:k + 1] * (x - centroids[k])).sum(0)
        blocks.append(v / np.linalg.norm(v))
    flat = np.concatenate(blocks)
    return flat / np.linalg.norm(flat)


def test_netvlad_shape_normalisation_and_numpy_reference() -> None:
    """[B, K*C] output, unit norm, every cluster block of norm 1/sqrt(K), equal to numpy."""
    torch.manual_seed(0)
    layer = NetVlad(dim=6, num_clusters=4).double()
    features = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        out = layer(features)
    assert out.shape == (3, 24)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(out.view(3, 4, 6).norm(dim=2).numpy(), 0.5, atol=1e-12)
    reference = numpy_netvlad(features[1].numpy(), layer.assignment.weight[:, :, 0, 0].detach()
                              .numpy(), layer.assignment.bias.detach().numpy(),
                              layer.centroids.detach().numpy())
    np.testing.assert_allclose(out[1].detach().numpy(), reference, atol=1e-10)


def test_netvlad_initialisation_from_kmeans() -> None:
    """Centroids are cluster centres; weights = alpha * unit centroids; bias 0."""
    rng = np.random.default_rng(3)
    centres = unit_rows(rng, 4, 8) * 3
    points = np.concatenate([c + 0.05 * rng.normal(size=(50, 8)) for c in centres])
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    layer = NetVlad(dim=8, num_clusters=4)
    layer.init_from_features(points)
    found = layer.centroids.detach().numpy()
    unit_centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    nearest = np.abs(found / np.linalg.norm(found, axis=1, keepdims=True) @ unit_centres.T)
    assert np.all(nearest.max(axis=1) > 0.99) and len(set(nearest.argmax(axis=1))) == 4
    weight = layer.assignment.weight[:, :, 0, 0].detach().numpy()
    alpha = np.linalg.norm(weight, axis=1)
    np.testing.assert_allclose(alpha, alpha[0], rtol=1e-5)
    np.testing.assert_allclose(weight / alpha[:, None],
                               found / np.linalg.norm(found, axis=1, keepdims=True), atol=1e-5)
    assert float(layer.assignment.bias.detach().abs().max()) == 0.0


def test_vgg16_netvlad_trains_from_conv5_1_and_whitens_to_4096() -> None:
    """VGG16 cropped at conv5_3 + NetVLAD-64: 32768-D pooled, 4096-D spec, conv5 trainable."""
    model = GemNet('vgg16_conv5_3', pool='netvlad', last_layer=1, input_size=(64, 64),
                   whitening_dim=4096, netvlad_clusters=64)
    trainable = {name.split('.')[1] for name, p in model.named_parameters()
                 if p.requires_grad and name.startswith('backbone.')}
    assert trainable == {'24', '26', '28'}
    assert isinstance(model.backbone[28], torch.nn.Conv2d) and len(model.backbone) == 29
    assert model.spec.descriptor_dim == 4096 and model.pool.out_dim == 32768
    with torch.no_grad():
        pooled = model.eval().describe(torch.randn(1, 3, 64, 64))[0]
    assert pooled.shape == (1, 32768)


def test_tuple_mining_follows_the_netvlad_rules() -> None:
    """Positive = feature-nearest within 10 m; negatives > 25 m, nearest of pool + cache."""
    rng = np.random.default_rng(4)
    db_xy = np.stack([np.arange(200) * 2.0, np.zeros(200)], 1)
    query_xy = db_xy[::20] + np.array([0.5, 1.0])
    db_desc, q_desc = unit_rows(rng, 200, 16), unit_rows(rng, 10, 16)
    config = MiningConfig(num_negatives=5, negative_pool=30, cache_size=10)
    miner = TupleMiner(query_xy, db_xy, config)
    queries = miner.trainable_queries()
    keys = miner.mine(queries, q_desc[queries], db_desc, np.random.default_rng(0))
    for key in keys:
        q, positive, negatives = key[0], key[1], np.array(key[2:])
        distance = np.linalg.norm(db_xy - query_xy[q], axis=1)
        candidates = np.flatnonzero(distance <= 10.0)
        assert positive == candidates[np.argmax(db_desc[candidates] @ q_desc[q])]
        assert len(negatives) == 5 and np.all(distance[negatives] > 25.0)
        scores = db_desc[negatives] @ q_desc[q]
        assert np.all(np.diff(scores) <= 0)
    again = miner.mine(queries, q_desc[queries], db_desc, np.random.default_rng(1))
    for first, second in zip(keys, again):
        q, kept = first[0], np.array(second[2:])
        dropped = np.array(sorted(set(first[2:]) - set(second[2:])), dtype=int)
        assert np.all(db_desc[dropped] @ q_desc[q] <= (db_desc[kept] @ q_desc[q]).min())


def test_pittsburgh_dbstruct_reader(tmp_path) -> None:
    """A NetVLAD dbStruct .mat (cells, 2 x N UTM) reads into paths, positions and positives."""
    from scipy.io import savemat
    db_files = np.array([f'000/db{i}.jpg' for i in range(4)], dtype=object)
    q_files = np.array(['q0.jpg', 'q1.jpg'], dtype=object)
    struct = {'whichSet': 'train', 'dbImageFns': db_files.reshape(-1, 1),
              'utmDb': np.array([[0.0, 10.0, 30.0, 60.0], [0.0, 0.0, 0.0, 0.0]]),
              'qImageFns': q_files.reshape(-1, 1), 'utmQ': np.array([[1.0, 58.0], [0.0, 0.0]]),
              'numImages': 4, 'numQueries': 2, 'posDistThr': 25, 'posDistSqThr': 625,
              'nonTrivPosDistSqThr': 100}
    savemat(tmp_path / 'pitts30k_train.mat', {'dbStruct': struct})
    split = read_pitts_split(str(tmp_path / 'pitts30k_train.mat'), '/data/pitts',
                             '/data/pitts/queries_real')
    assert split.db_paths[1] == '/data/pitts/000/db1.jpg'
    assert split.query_paths[0] == '/data/pitts/queries_real/q0.jpg'
    np.testing.assert_allclose(split.query_xy, [[1.0, 0.0], [58.0, 0.0]])
    assert split.pos_dist_thr == 25.0
    assert split.eval_set().positives == ((0, 1), (3,))


def test_sare_toy_run_improves_held_out_recall(tmp_path) -> None:
    """SARE on one route improves Recall@1 on a route the network never saw."""
    torch.set_num_threads(1)
    config = load_config(SareConfig, TOY_CONFIG, [f'run.output_root={tmp_path}'])
    run_dir = run_sare(config, progress=lambda items, total: items)
    export = json.loads((run_dir / 'export.json').read_text())
    initial, final = export['evaluation']['initial'], export['evaluation']['final']
    model = load_weights(run_dir / 'weights.safetensors', GemNet)
    assert model.spec.descriptor_dim == 32 and bool(model.whitening.fitted)
    eval_set = config.evaluation.load(config.data)
    torch.manual_seed(config.run.seed)
    untrained = config.model.build()
    initialise_clusters(untrained, config.data.load().database, config.model.cluster_images,
                        config.model.descriptors_per_image, config.run.seed, torch.device('cpu'))
    assert evaluate_recall(untrained, eval_set)['r@1'] == pytest.approx(initial['r@1'])
    assert evaluate_recall(model, eval_set)['r@1'] == pytest.approx(final['whitened_r@1'])
    model.whitening = None
    measured = evaluate_recall(model, eval_set)
    assert measured['r@1'] == pytest.approx(final['r@1'])
    assert measured['r@1'] >= initial['r@1'] + 10.0, (initial, measured)
    assert export['core_checkpoint'] is None and 'not registered' in export['core_gap']


def test_sare_toy_run_on_the_corridor_improves_held_out_recall(tmp_path, corridor_dir) -> None:
    """Frames 0-59 of the real corridor train, frames 60-110 (unseen places) evaluate.

    Measured with these settings over run seeds 0-4: untrained 45-55 % Recall@1, trained
    67-80 % (+17.7 to +25.5 points).
    """
    torch.set_num_threads(1)
    mining = ('data.mining={positive_radius_m: 2.0, negative_radius_m: 8.0, num_negatives: 5, '
              'negative_pool: 40, cache_size: 60}')
    overrides = [f'run.output_root={tmp_path}', 'data.kind=traversal', mining,
                 f'data.traversal_root={corridor_dir}', 'data.stop_frame=60',
                 'evaluation.kind=traversal', f'evaluation.traversal_root={corridor_dir}',
                 'evaluation.first_frame=60', 'optim.epochs=20']
    config = load_config(SareConfig, TOY_CONFIG, overrides)
    run_dir = run_sare(config, progress=lambda items, total: items)
    evaluation = json.loads((run_dir / 'export.json').read_text())['evaluation']
    eval_set = config.evaluation.load(config.data)
    assert len(eval_set.positives) == 51
    torch.manual_seed(config.run.seed)
    untrained = config.model.build()
    initialise_clusters(untrained, config.data.load().database, config.model.cluster_images,
                        config.model.descriptors_per_image, config.run.seed, torch.device('cpu'))
    before = evaluate_recall(untrained, eval_set)['r@1']
    assert before == pytest.approx(evaluation['initial']['r@1'])
    model = load_weights(run_dir / 'weights.safetensors', GemNet)
    model.whitening = None
    measured = evaluate_recall(model, eval_set)['r@1']
    assert measured == pytest.approx(evaluation['final']['r@1'])
    assert measured >= before + 10.0, (before, measured)


@pytest.mark.parametrize('name,variant,temperature,tuples', [
    ('ind', 'ind', 0.5, 4), ('joint', 'joint', 0.5, 4), ('openibl', 'ind', 0.07, 4)])
def test_pitts30k_recipes_parse(name: str, variant: str, temperature: float,
                                tuples: int) -> None:
    """The Pitts30k recipes: VGG16 conv5 + NetVLAD-64 + 4096 PCA-w, 10 mined negatives."""
    config = load_config(SareConfig, TOY_CONFIG.parent / f'sare_pitts30k_{name}.yaml')
    assert (config.optim.variant, config.optim.temperature) == (variant, temperature)
    assert config.run.batch_size_per_gpu * config.run.num_gpus == tuples
    assert (config.model.backbone, config.model.last_layer) == ('vgg16_conv5_3', 1)
    assert (config.model.netvlad_clusters, config.model.whitening_dim) == (64, 4096)
    mining = config.data.mining
    assert (mining.num_negatives, mining.negative_pool, mining.cache_size) == (10, 1000, 1000)
    assert (mining.positive_radius_m, mining.negative_radius_m) == (10.0, 25.0)
    assert (config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (1e-3, 0.9,
                                                                                   1e-3)


@pytest.mark.slow
@pytest.mark.parametrize('module,config,overrides', [
    ('sare', 'sare_toy.yaml', ['optim.epochs=2', 'run.batch_size_per_gpu=2']),
    ('gcl', 'gcl_toy.yaml', ['optim.steps=2', 'run.batch_size_per_gpu=8']),
    ('structvpr', 'structvpr_toy.yaml', ['teacher_optim.epochs=1', 'student_optim.epochs=1',
                                         'run.batch_size_per_gpu=2'])])
def test_runners_train_under_torchrun_with_two_ranks(tmp_path, module: str, config: str,
                                                     overrides: list) -> None:
    """Each runner trains and exports under DDP (2 CPU ranks, gloo); rank 0 mines for both."""
    import subprocess
    import sys
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
               '-m', f'vpr_ros_training.{module}.train', '--config',
               str(TOY_CONFIG.parent / config), '--set', f'run.output_root={tmp_path}',
               '--log-level', 'WARNING']
    for override in overrides:
        command += ['--set', override]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = list(tmp_path.iterdir())
    export = json.loads((run_dir / 'export.json').read_text())
    assert export['evaluation']['final']['r@1'] >= 0.0
    assert json.loads((run_dir / 'run.json').read_text())['world_size'] == 2
