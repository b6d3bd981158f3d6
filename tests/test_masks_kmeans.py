import pytest
import torch

from labelless.masks.kmeans import kmeans


def _blobs(B=4, k=5, per=40, C=8, spread=0.05, seed=0):
    """B items, each k well separated Gaussian blobs (different centres per item), shuffled."""
    g = torch.Generator().manual_seed(seed)
    xs, labels = [], []
    for _ in range(B):
        centres = torch.randn(k, C, generator=g) * 10
        lab = torch.arange(k).repeat_interleave(per)
        pts = centres[lab] + spread * torch.randn(k * per, C, generator=g)
        perm = torch.randperm(k * per, generator=g)
        xs.append(pts[perm])
        labels.append(lab[perm])
    return torch.stack(xs), torch.stack(labels)


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to a permutation of cluster ids: the pairs (a_i, b_i) form a bijection."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_recovers_blobs_every_batch_item():
    x, labels = _blobs()
    assign, centers = kmeans(x, 5, seed=1)
    assert assign.shape == (4, 200) and assign.dtype == torch.long
    assert centers.shape == (4, 5, 8)
    for b in range(4):
        assert _same_partition(assign[b], labels[b]), b
        # every centre sits on the mean of its cluster
        for c in range(5):
            assert torch.allclose(centers[b, c], x[b][assign[b] == c].mean(0), atol=1e-4)


def test_random_init_reaches_a_fixed_point():
    # random init may merge two blobs (a local optimum), but the result is consistent
    x, _ = _blobs(B=2)
    assign, centers = kmeans(x, 5, seed=0, init="random", iters=50)
    for b in range(2):
        assert len(assign[b].unique()) == 5
        for c in range(5):
            assert torch.allclose(centers[b, c], x[b][assign[b] == c].mean(0), atol=1e-4)


def test_seeded_and_deterministic():
    x = torch.randn(3, 100, 4)
    a1, c1 = kmeans(x, 6, seed=3)
    a2, c2 = kmeans(x, 6, seed=3)
    assert torch.equal(a1, a2) and torch.equal(c1, c2)


def test_cosine_groups_by_direction_not_length():
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(3, 6, generator=g), dim=-1)
    lab = torch.arange(3).repeat_interleave(30)
    scale = torch.rand(90, 1, generator=g) * 20 + 0.1  # lengths vary 200×
    x = (dirs[lab] + 0.01 * torch.randn(90, 6, generator=g)) * scale
    assign, centers = kmeans(x, 3, cosine=True, seed=0)  # N×C input: no batch dim
    assert assign.shape == (90,) and centers.shape == (3, 6)
    assert _same_partition(assign, lab)
    assert torch.allclose(centers.norm(dim=-1), torch.ones(3), atol=1e-5)
    # Euclidean k-means splits by length instead
    assert not _same_partition(kmeans(x, 3, seed=0)[0], lab)


def test_empty_clusters_are_reseeded():
    # 3 tight blobs but a bad init: all starting centres inside blob 0 (random init on a
    # set where blob 0 dominates), several clusters would go empty without re-seeding.
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 2, generator=g) * 0.01
    b = torch.randn(3, 2, generator=g) * 0.01 + torch.tensor([100.0, 0.0])
    c = torch.randn(3, 2, generator=g) * 0.01 + torch.tensor([0.0, 100.0])
    x = torch.cat([a, b, c])[None]
    for seed in range(5):
        assign, centers = kmeans(x, 4, seed=seed, init="random", iters=30)
        assert torch.isfinite(centers).all()
        assert len(assign.unique()) == 4  # no cluster left empty
        # the two far blobs are never merged with blob 0
        assert set(assign[0, 200:203].tolist()).isdisjoint(assign[0, :200].tolist())
        assert set(assign[0, 203:].tolist()).isdisjoint(assign[0, :200].tolist())


def test_duplicate_points_and_k_equals_n():
    x = torch.zeros(2, 10, 3)  # all points identical: clusters beyond the first stay empty
    assign, centers = kmeans(x, 3)
    assert torch.isfinite(centers).all() and assign.shape == (2, 10)
    x = torch.randn(1, 5, 3)
    assign, _ = kmeans(x, 5)
    assert sorted(assign[0].tolist()) == [0, 1, 2, 3, 4]


def test_bad_arguments():
    with pytest.raises(ValueError, match="k=11"):
        kmeans(torch.randn(1, 10, 2), 11)
    with pytest.raises(ValueError, match="B×N×C"):
        kmeans(torch.randn(10), 2)
    with pytest.raises(ValueError, match="init"):
        kmeans(torch.randn(1, 10, 2), 2, init="bogus")


def test_half_precision_input_keeps_dtype():
    x, labels = _blobs(B=2, k=3, per=20, C=4)
    assign, centers = kmeans(x.half(), 3)
    assert centers.dtype == torch.float16
    assert all(_same_partition(assign[b], labels[b]) for b in range(2))


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_an_item_clusters_the_same_in_any_batch(init):
    # each item draws what it would draw alone: its result does not depend on the batch's
    # size, its other items or its position (masks generate / eval at any batch size or rank count)
    x = torch.randn(5, 120, 6)
    assign, centers = kmeans(x, 7, seed=4, init=init)
    for b in range(5):
        a1, c1 = kmeans(x[b:b + 1], 7, seed=4, init=init)
        assert torch.equal(a1[0], assign[b]) and torch.allclose(c1[0], centers[b], atol=1e-6)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a2, _ = kmeans(x[perm], 7, seed=4, init=init)
    assert torch.equal(a2, assign[perm])
    assert not torch.equal(kmeans(x, 7, seed=5, init=init)[0], assign)  # the seed still matters


def test_plusplus_draws_follow_the_weights():
    from labelless.masks.kmeans import _pick

    w = torch.tensor([[0.0, 1.0, 0.0, 3.0, 0.0], [2.0, 0.0, 0.0, 0.0, 2.0]])
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    picks = torch.cat([_pick(w, ui) for ui in u[:4000]], 1)  # 2×4000
    assert set(picks[0].tolist()) == {1, 3} and set(picks[1].tolist()) == {0, 4}  # zero weights never
    assert abs((picks[0] == 3).float().mean().item() - 0.75) < 0.03
    assert abs((picks[1] == 4).float().mean().item() - 0.5) < 0.03
    # u·Σw rounding up to Σw still gives a point of positive weight, not the index past the end
    assert _pick(w, torch.tensor(1.0)).tolist() == [[3], [4]]
