"""The TensorBoard retrieval picture reads the evaluation's own retrieval result: on a many-class
split its queries come from the whole split and its green frames are the metrics' matches."""
import numpy as np

from ibc_geo.engine.evaluator import Evaluation
from ibc_geo.engine.visualize import picture_queries, retrieval_picture
from ibc_geo.evaluation import evaluate_embeddings


def many_class_evaluation(classes=1000, per=3, dim=32, seed=0, dropped=()):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per)
    x = (centres[labels] + 0.9 * rng.normal(size=(len(labels), dim))).astype(np.float32)
    items = np.setdiff1d(np.arange(len(labels)), dropped)  # dataset index of each evaluated item
    metrics, retrieval = evaluate_embeddings(x[items], labels[items], recall_k=(1,), nmi=False, min_k=8,
                                             return_retrieval=True)
    return Evaluation(metrics, retrieval, labels[items], items), x, labels


def test_picture_neighbours_and_frames_are_the_evaluations_matches():
    evaluation, x, labels = many_class_evaluation()
    queries = picture_queries(evaluation, 8, seed=0)
    assert len(queries) == 8 and len(set(labels[queries])) == 8       # one query per class
    q_ids, n_ids, correct, captions = retrieval_picture(evaluation, queries, 8, class_names=[f"c{i}" for i in range(1000)])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for r, q in enumerate(q_ids):
        sims = xn @ xn[q]
        sims[q] = -np.inf
        brute = np.argsort(-sims, kind="stable")[:8]                    # the whole split of 3,000 items
        np.testing.assert_array_equal(n_ids[r], brute)
        np.testing.assert_array_equal(correct[r], labels[brute] == labels[q])
        assert captions[r][0] == f"query\nc{labels[q]}"
        assert captions[r][1] == f"#1 {sims[brute[0]]:.3f}\nc{labels[brute[0]]}"
    # R@1 of the whole split is high on these clusters: the picture shows it (a 512-item subset of
    # 1,000 classes would hold almost no same-class neighbour)
    assert evaluation.metrics["recall@1"] > 0.5
    assert correct[:, 0].mean() >= 0.5
    # the frames are exactly the matches the metrics counted: first-neighbour matches = precision@1 rows
    rows = np.searchsorted(evaluation.retrieval.query_items, q_ids)
    np.testing.assert_array_equal(correct, evaluation.retrieval.matches(evaluation.labels, rows, 8))


def test_picture_queries_are_fixed_and_follow_dataset_indices_after_drops():
    evaluation, _, labels = many_class_evaluation(classes=50, seed=1)
    queries = picture_queries(evaluation, 8, seed=3)
    np.testing.assert_array_equal(queries, picture_queries(evaluation, 8, seed=3))
    dropped_eval, _, _ = many_class_evaluation(classes=50, seed=1, dropped=[int(queries[0]), 7])
    q_ids, n_ids, correct, _ = retrieval_picture(dropped_eval, queries, 8)
    assert int(queries[0]) not in q_ids.tolist() and len(q_ids) == 7   # the dropped query is left out
    assert 7 not in n_ids.reshape(-1).tolist()
    np.testing.assert_array_equal(correct, labels[n_ids] == labels[q_ids][:, None])
