"""Test-time refinement (ibc_geo.evaluation.refine): each method against a per-item loop written
here, the k-reciprocal rule against a direct transcription of the official sampler, chunking,
label independence and the bad-input messages."""
import numpy as np
import pytest
import torch

from ibc_geo.evaluation import evaluate_embeddings
from ibc_geo.evaluation.refine import (Refinement, RefinementError, aqe, dba, mpn_refine, reciprocal_groups,
                                       refine_embeddings, refinement_groups)
from ibc_geo.evaluation.retrieval import retrieve_split
from ibc_geo.nn import MessagePassingNetwork


def clustered(n_classes=12, per=6, dim=16, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(n_classes * per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(n_classes), per)


def brute_neighbours(x, i, exclude=True):
    """Item i's others by decreasing cosine (ties by index), computed in float64."""
    sims = x.astype(np.float64) @ x[i].astype(np.float64)
    order = np.lexsort((np.arange(len(x)), -sims))
    return [int(j) for j in order if not (exclude and j == i)]


def official_reciprocal(x, bs, k1, k2):
    """combine_sampler.py KReciprocalSampler.__iter__, transcribed (squared L2 distances, argsort)."""
    xd = x.astype(np.float64)
    dist = (xd ** 2).sum(1)[:, None] + (xd ** 2).sum(1)[None, :] - 2 * xd @ xd.T
    sorted_dist = np.argsort(dist, axis=1, kind="stable")
    batches = []
    for i in range(len(x)):
        forward = sorted_dist[i, :k1 + 1]
        backward = sorted_dist[forward, :k1 + 1]
        rr = np.where(backward == i)[0]
        reciprocal = forward[rr]
        expansion = reciprocal
        for cand in reciprocal:
            cand_forward = sorted_dist[cand, :k2 + 1]
            cand_backward = sorted_dist[cand_forward, :k2 + 1]
            cand_reciprocal = cand_forward[np.where(cand_backward == cand)[0]]
            if len(np.intersect1d(cand_reciprocal, reciprocal)) > 2 / 3 * len(cand_reciprocal):
                expansion = np.append(expansion, cand_reciprocal)
        expansion = np.unique(expansion)
        batch = expansion[np.argsort(dist[i, expansion], kind="stable")[:bs]].tolist()
        k = 0
        while len(batch) < bs:
            if sorted_dist[i, k] not in batch:
                batch.append(sorted_dist[i, k])
            k += 1
        batches.append([int(b) for b in batch])
    return np.array(batches)


def test_reciprocal_sets_by_hand():
    # Two tight pairs far apart and a loner between: k1 = 1 (forward lists of 2), k2 = 1.
    # 0 <-> 1 and 2 <-> 3 are mutual nearest neighbours; 4's nearest is 3, whose nearest is 2.
    x = np.array([[1, 0], [0.99, 0.141], [0, 1], [0.141, 0.99], [0.5, 0.866]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    nbrs = np.array([brute_neighbours(x, i) for i in range(5)])
    groups = reciprocal_groups(x, nbrs, size=3, k1=1, k2=1)
    # item 0: R_0 = {0, 1}; candidate 1's R'_1 = {1, 0} shares 2 > 4/3: union {0, 1}; filled with
    # the next plain neighbour of 0 not taken, which is 4 (cosine 0.5) before 3 (0.141) and 2 (0).
    assert groups[0].tolist() == [0, 1, 4]
    # item 4: forward (4, 3); 4 is not in F_3 = (3, 2), so R_4 = {4}; fill with 3 then 2.
    assert groups[4].tolist() == [4, 3, 2]
    assert groups[2].tolist() == [2, 3, 4]
    np.testing.assert_array_equal(groups, official_reciprocal(x, 3, 1, 1))


@pytest.mark.parametrize("size,k1,k2,differs", [(4, 6, 3, True), (8, 10, 5, True), (6, 30, 15, False)])
def test_reciprocal_groups_equal_the_official_rule(size, k1, k2, differs):
    x, _ = clustered(n_classes=20, per=5, noise=1.2, seed=size)
    retrieval = retrieve_split(x, max(k1, size - 1))
    ours = reciprocal_groups(x, retrieval.neighbour_items(), size, k1, k2)
    official = official_reciprocal(x, size, k1, k2)
    np.testing.assert_array_equal(ours, official)
    assert (ours[:, 0] == np.arange(len(x))).all()
    assert all(len(set(row)) == size for row in ours.tolist())
    # with short forward lists some groups differ from the plain nearest neighbours (else the test
    # would not test the rule); with k1 = 30 >> size every near neighbour is reciprocal here
    plain = np.concatenate([np.arange(len(x))[:, None], retrieval.neighbour_items(size - 1)], axis=1)
    assert (ours != plain).any() == differs


def _groups_loop(x, k):
    return np.array([[i] + brute_neighbours(x, i)[:k - 1] for i in range(len(x))])


def test_dba_and_aqe_equal_a_per_item_loop():
    x, _ = clustered()
    k, alpha = 5, 3.0
    retrieval = retrieve_split(x, k - 1)
    for method in ("dba", "aqe"):
        out = refine_embeddings(x, retrieval, Refinement(method, k=k, alpha=alpha))
        for i in range(len(x)):
            group = [i] + brute_neighbours(x, i)[:k - 1]
            if method == "dba":
                v = x[group].astype(np.float64).mean(axis=0)
            else:
                w = [1.0] + [max(0.0, float(x[i] @ x[j])) ** alpha for j in group[1:]]
                v = sum(wj * x[j].astype(np.float64) for wj, j in zip(w, group))
            np.testing.assert_allclose(out[i], v / np.linalg.norm(v), atol=2e-6)


def test_refinement_is_chunk_independent(monkeypatch):
    import ibc_geo.evaluation.refine as refine

    x, _ = clustered(n_classes=20, per=5)
    retrieval = retrieve_split(x, 30)
    cases = [Refinement(m, k=6, neighbours=n) for m in ("dba", "aqe") for n in ("knn", "reciprocal")]
    whole = [refine_embeddings(x, retrieval, r) for r in cases]
    monkeypatch.setattr(refine, "_CHUNK", 7)
    for r, expected in zip(cases, whole):
        np.testing.assert_array_equal(refine_embeddings(x, retrieval, r), expected)


def tiny_mpn(dim=16, seed=0):
    torch.manual_seed(seed)
    mpn = MessagePassingNetwork(dim, num_classes=5, num_layers=2, heads=2, sink=True, input_norm=True)
    with torch.no_grad():
        for p in mpn.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mpn


def test_mpn_refinement_equals_one_graph_per_item():
    x, _ = clustered()
    features = (x * np.linspace(1, 3, len(x))[:, None]).astype(np.float32)   # the MPN normalises itself
    mpn = tiny_mpn()
    mpn.train()
    k = 5
    retrieval = retrieve_split(x, k - 1)
    groups = refinement_groups(x, retrieval, Refinement("mpn", k=k))[1]
    batched = mpn_refine(mpn, features, groups, batch_nodes=3 * k)     # 3 graphs a pass, 24 passes
    assert mpn.training  # mode restored
    mpn.eval()
    for i in range(len(x)):
        group = [i] + brute_neighbours(x, i)[:k - 1]
        src, dst = np.meshgrid(np.arange(k), np.arange(k))                  # every j -> i, self loops too
        edge_index = torch.tensor(np.stack([src.reshape(-1), dst.reshape(-1)]))
        with torch.no_grad():
            u, _ = mpn(torch.from_numpy(features[group]), edge_index)
        np.testing.assert_allclose(batched[i], u[0].numpy(), atol=1e-5)
    one_pass = mpn_refine(mpn, features, groups, batch_nodes=10 ** 6)
    np.testing.assert_allclose(one_pass, batched, atol=1e-5)


def test_labels_cannot_change_a_refined_embedding():
    x, labels = clustered()
    mpn = tiny_mpn()
    out = {}
    for name, lab in (("true", labels), ("shuffled", np.random.default_rng(1).permutation(labels))):
        _, retrieval = evaluate_embeddings(x, lab, recall_k=(1,), nmi=False, min_k=30, return_retrieval=True)
        out[name] = [refine_embeddings(x, retrieval, Refinement(m, k=4, neighbours=n),
                                       run_mpn=lambda f, g: mpn_refine(mpn, f, g))
                     for m in ("dba", "aqe", "mpn") for n in ("knn", "reciprocal")]
    for a, b in zip(out["true"], out["shuffled"]):
        np.testing.assert_array_equal(a, b)


def test_query_gallery_refinement_groups_queries_with_the_gallery_only():
    x, labels = clustered(n_classes=6, per=6)
    mask = np.zeros(len(x), bool)
    mask[::3] = True
    retrieval = retrieve_split(x, 3, query_mask=mask)
    items, groups = refinement_groups(x, retrieval, Refinement("dba", k=4), query_mask=mask)
    gallery = set(np.flatnonzero(~mask).tolist())
    assert sorted(items.tolist()) == list(range(len(x)))
    assert all(set(row[1:].tolist()) <= gallery for row in groups)
    items_q, _ = refinement_groups(x, retrieval, Refinement("aqe", k=4), query_mask=mask)
    assert items_q.tolist() == np.flatnonzero(mask).tolist()
    with pytest.raises(RefinementError, match="eval.refine_neighbours reciprocal"):
        refine_embeddings(x, retrieval, Refinement("dba", k=4, neighbours="reciprocal"), query_mask=mask)


@pytest.mark.parametrize("k,message", [(1, "eval.refine_k = 1"), (72, "eval.refine_k = 72 must be below the gallery "
                                                                        "size 72")])
def test_bad_refine_k_names_key_and_size(k, message):
    x, _ = clustered()
    with pytest.raises(RefinementError, match=message):
        refine_embeddings(x, retrieve_split(x, 5), Refinement("dba", k=k))


def test_refined_metrics_differ_from_plain_on_clustered_data():
    # DBA on noisy clusters: averaging with same-cluster neighbours must raise MAP@R
    x, labels = clustered(n_classes=15, per=8, noise=1.0, seed=3)
    plain, retrieval = evaluate_embeddings(x, labels, recall_k=(1,), nmi=False, min_k=7, return_retrieval=True)
    refined = evaluate_embeddings(refine_embeddings(x, retrieval, Refinement("dba", k=4)), labels,
                                  recall_k=(1,), nmi=False)
    assert refined["map@r"] > plain["map@r"] + 0.02
