"""extract_embeddings: backbone only, L2-normalised, no grad, eval mode restored, dataset order."""
import numpy as np
import pytest
import torch

from ibc_geo.evaluation import extract_embeddings


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torch.nn.Linear(6, 4)
        self.dropout = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(4, 3)
        self.seen = []

    def embed(self, images):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.dropout(self.backbone(images))

    def forward(self, images):  # the training path must not be used
        raise AssertionError("extract_embeddings must call embed, not forward")


def batches(x, y, order, size):
    for s in range(0, len(order), size):
        idx = torch.as_tensor(order[s:s + size])
        yield x[idx], y[idx], idx


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(23, 6, generator=g)
    y = torch.arange(23) % 5
    return x, y


def test_embeddings_in_dataset_order_normalised(data):
    x, y = data
    model = TinyModel()
    order = np.random.default_rng(0).permutation(23)
    emb, labels = extract_embeddings(model, list(batches(x, y, order, 4)), "cpu")
    assert emb.dtype == np.float32 and emb.shape == (23, 4)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, y.numpy())
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.backbone(x), dim=1).numpy()
    np.testing.assert_allclose(emb, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_no_grad_and_mode_restored(data, training):
    x, y = data
    model = TinyModel().train(training)
    extract_embeddings(model, list(batches(x, y, np.arange(23), 10)), torch.device("cpu"))
    assert model.seen == [(False, False)] * 3
    assert model.training is training


def test_mode_restored_after_an_error(data):
    x, y = data
    model = TinyModel().train()

    def broken():
        yield from batches(x, y, np.arange(10), 5)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        extract_embeddings(model, broken(), "cpu")
    assert model.training


def test_autocast_bfloat16(data):
    x, y = data
    emb, _ = extract_embeddings(TinyModel(), list(batches(x, y, np.arange(23), 8)), "cpu", amp_dtype="bfloat16")
    ref, _ = extract_embeddings(TinyModel(), list(batches(x, y, np.arange(23), 8)), "cpu")
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb, ref, atol=3e-2)


def test_duplicate_indices_rejected(data):
    x, y = data
    with pytest.raises(ValueError, match="twice"):
        extract_embeddings(TinyModel(), list(batches(x, y, np.array([0, 1, 2, 2]), 2)), "cpu")
