import threading

import numpy as np
import torch

from core.encoders import EmbeddingCache, last_token_pool, mean_pool


def test_pooling_by_hand():
    h = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)  # (B=2, T=3, D=2)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert mean_pool(h, right).tolist() == [[1.0, 2.0], [8.0, 9.0]]
    assert last_token_pool(h, right).tolist() == [[2.0, 3.0], [10.0, 11.0]]
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert last_token_pool(h, left).tolist() == [[4.0, 5.0], [10.0, 11.0]]


def test_bundled_minilm_embeds_meaningfully(minilm):
    x = minilm.encode(["The cat sat on the mat.", "A cat is sitting on a rug.", "Stock prices fell sharply."])
    assert x.shape == (3, 384) and minilm.pooling == "mean"
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    assert cos[0, 1] > cos[0, 2] + 0.3


def test_cache_encodes_each_unique_text_once_and_shares_across_instances(minilm, tmp_path):
    texts = ["alpha", "beta", "alpha", "gamma", "beta"]
    cache = EmbeddingCache(tmp_path, minilm)
    first = cache.get(texts)
    assert cache.encoded == 3
    again = cache.get(texts + ["delta"])
    assert cache.encoded == 4  # only "delta" was new
    assert np.allclose(first, again[:5]) and np.allclose(first[0], first[2])
    direct = minilm.encode(["gamma"])[0]
    assert np.allclose(first[3], direct, atol=2e-3)  # float16 storage
    other = EmbeddingCache(tmp_path, minilm)  # e.g. a second run
    other.get(["alpha", "delta"])
    assert other.encoded == 0
    stored = list(cache.dir.glob("*.npy"))
    assert stored and all(np.load(p).dtype == np.float16 for p in stored)


def test_two_writers_at_once_leave_a_consistent_cache(minilm, tmp_path):
    texts = [f"sentence number {i}" for i in range(40)]
    caches = [EmbeddingCache(tmp_path, minilm) for _ in range(2)]
    out = [None, None]

    def work(k):
        out[k] = caches[k].get(texts)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.allclose(out[0], out[1], atol=2e-3)
    fresh = EmbeddingCache(tmp_path, minilm)
    assert np.allclose(fresh.get(texts), out[0], atol=2e-3) and fresh.encoded == 0
    assert not list(tmp_path.rglob("*.tmp"))
