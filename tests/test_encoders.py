import collections
import errno
import fcntl
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import core.models.embedding_store as store_mod
import core.models.encoders as enc_mod
from core.models.embedding_store import CacheFullError, EmbeddingCache
from core.models.encoders import last_token_pool, mean_pool


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
    assert caches[0].encoded + caches[1].encoded == 40  # one waited for the other
    fresh = EmbeddingCache(tmp_path, minilm)
    assert np.allclose(fresh.get(texts), out[0], atol=2e-3) and fresh.encoded == 0
    assert not list(tmp_path.rglob("*.tmp"))


# ------------------------------------------------------------------ faults on the way to a big grid (issue 19)

class CountingEncoder:
    """Wraps the real encoder; fails once more than ``fail_after`` texts have been asked for."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.asked = inner, fail_after, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_plain(self, texts, batch_size=64, progress=None):  # what the cache stores
        if self.fail_after is not None and self.asked + len(texts) > self.fail_after:
            raise RuntimeError("encoder died midway")
        self.asked += len(texts)
        return self.inner.encode_plain(texts, batch_size=batch_size, progress=progress)


def _lock_is_free(cache) -> bool:
    fd = os.open(cache.dir / EmbeddingCache.LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_failure_midway_keeps_the_shards_written_and_a_rerun_encodes_only_the_rest(minilm, tmp_path):
    texts = [f"midway text {i}" for i in range(40)]
    dying = CountingEncoder(minilm, fail_after=20)
    first = EmbeddingCache(tmp_path, dying, shard_texts=8)
    with pytest.raises(RuntimeError, match="midway"):
        first.get(texts)
    assert first.encoded == 16  # two whole shards of 8 before the third failed
    assert len(list(first.dir.glob("shard-*.keys.json"))) == 2
    assert not list(tmp_path.rglob("*.tmp"))
    assert _lock_is_free(first)  # released on the exception
    again = EmbeddingCache(tmp_path, minilm, shard_texts=8)
    assert len(again) == 16
    out = again.get(texts)
    assert again.encoded == 24  # only the rest
    assert np.allclose(out, minilm.encode(texts), atol=2e-3)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (as root, where mount works), else a folder whose "disk" is faked: the same budget
    through shutil.disk_usage, and np.save failing like numpy's short write once it runs out."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    real = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    yield mnt, real
    if real:
        gc.collect()  # the cache memory-maps its shards: let go of them first
        subprocess.run(["umount", "--lazy", str(mnt)], check=False)  # --lazy: still busy, detach now


def _leave_free(mnt, real, free: int, monkeypatch):
    """Fill the disk so about ``free`` bytes stay free."""
    if real:
        now = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * (now - free))
        return
    budget = {"free": free}
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(store_mod.shutil, "disk_usage", lambda p: usage(1 << 20, (1 << 20) - budget["free"],
                                                                      budget["free"]))
    real_save = np.save

    def save(fh, arr):
        n = arr.nbytes + 128
        if n > budget["free"]:
            fh.write(b"\0" * budget["free"])
            raise OSError(f"{n} requested and {budget['free']} written")
        budget["free"] -= -(-n // 4096) * 4096 + 4096  # the .npy's blocks and its keys' block
        real_save(fh, arr)

    monkeypatch.setattr(store_mod.np, "save", save)


def test_a_full_disk_is_named_before_encoding(minilm, small_disk, monkeypatch):
    mnt, real = small_disk
    cache = EmbeddingCache(mnt, CountingEncoder(minilm), shard_texts=8)
    _leave_free(mnt, real, 16 * 1024, monkeypatch)
    texts = [f"full disk text {i}" for i in range(40)]  # 5 shards of 8: 5 x (8 kB + 4 kB)
    with pytest.raises(CacheFullError) as err:
        cache.get(texts)
    msg = str(err.value)
    assert str(cache.dir) in msg and "need about 61.4 kB" in msg and "free" in msg, msg
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert cache.encoder.asked == 0  # failed at once, not after encoding
    assert not list(mnt.rglob("*.tmp"))


def test_a_disk_that_fills_midway_keeps_what_was_stored_and_leaves_no_tmp(minilm, small_disk, monkeypatch):
    mnt, real = small_disk
    cache = EmbeddingCache(mnt, minilm, shard_texts=8)
    _leave_free(mnt, real, 30 * 1024, monkeypatch)  # room for two shards of 8 (8 kB + 4 kB each), not three
    monkeypatch.setattr(EmbeddingCache, "_check_room", lambda self, n: None)  # e.g. another process filled it
    texts = [f"filling disk text {i}" for i in range(40)]
    with pytest.raises(CacheFullError) as err:
        cache.get(texts)
    msg = str(err.value)
    assert str(cache.dir) in msg and "a shard of 8 texts needs 12.3 kB" in msg, msg
    kept = len(cache)
    assert kept == 16 and f"The {kept} texts stored before it are kept" in msg, msg
    assert not list(mnt.rglob("*.tmp")), "a temporary file was left behind"
    assert not [p for p in cache.dir.glob("shard-*.npy") if not p.with_suffix(".keys.json").exists()]
    monkeypatch.undo()  # space freed
    (mnt / "filler").unlink(missing_ok=True)
    again = EmbeddingCache(mnt, minilm, shard_texts=8)
    out = again.get(texts)
    assert again.encoded == 40 - kept
    assert np.allclose(out, minilm.encode(texts), atol=2e-3)


CHILD = """
import json, os, sys, time
from core.models.encoders import TextEncoder
from core.models.embedding_store import EmbeddingCache
root, me, other = sys.argv[1:4]
enc = TextEncoder.load()
enc.model  # load the weights before the start line, so both reach get() together
open(os.path.join(root, me), "w").close()
while not os.path.exists(os.path.join(root, other)):
    time.sleep(0.01)
lines, calls = [], []
cache = EmbeddingCache(os.path.join(root, "cache"), enc, shard_texts=8, poll_s=0.05, log=lines.append)
texts = [f"cold cache text number {i}" for i in range(48)]
x = cache.get(texts, progress=lambda d, t: calls.append([d, t]))
print(json.dumps({"encoded": cache.encoded, "last": calls[-1] if calls else None, "log": lines,
                  "sum": float(x.sum())}))
"""


def test_two_processes_on_a_cold_cache_encode_each_text_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    kids = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), f"ready{k}", f"ready{1 - k}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for k in range(2)]
    outs = []
    for p in kids:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(o["encoded"] for o in outs) == 48, outs  # not 96
    assert all(o["last"] == [48, 48] for o in outs), outs  # both progress bars end full
    waiter = min(outs, key=lambda o: o["encoded"])
    assert any("waiting for another process encoding into" in ln for ln in waiter["log"]), outs
    assert abs(outs[0]["sum"] - outs[1]["sum"]) < 1e-3


def test_without_a_lock_file_it_says_so_and_still_encodes(minilm, tmp_path):
    lines = []
    cache = EmbeddingCache(tmp_path, minilm, log=lines.append)
    # a lock file that cannot be created, not even by root (a read-only cache, for whoever is not root)
    (cache.dir / EmbeddingCache.LOCK_NAME).symlink_to(tmp_path / "no-such-folder" / "lock")
    cache.get(["one", "two"])
    cache.get(["three"])
    assert cache.encoded == 3
    assert len([ln for ln in lines if "encoding without it" in ln]) == 1, lines


def test_a_get_within_a_get_on_the_same_folder_does_not_wait_for_itself(minilm, tmp_path):
    other = EmbeddingCache(tmp_path, minilm)
    cache = EmbeddingCache(tmp_path, minilm)
    inner = []

    def progress(done, total):
        if not inner:
            inner.append(other.get(["inner text"]))

    t = threading.Thread(target=lambda: cache.get(["outer one", "outer two"], progress=progress), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "deadlocked on its own lock"
    assert inner and cache.encoded == 2 and other.encoded == 1


def test_segments_are_lines_split_at_sentence_ends():
    from core.models.encoders import text_segments

    assert text_segments("Question: a b. c d?\nAnswer: x!!! y.\n\n- one. two") == [
        "Question: a b.", "c d?", "Answer: x!!!", "y.", "- one.", "two"]
    assert text_segments("no end mark") == ["no end mark"]
    assert text_segments("  \n ") == ["  \n "]  # nothing to split: the text is its own segment


def test_segment_features_are_the_whole_text_beside_the_mean_of_its_segments(minilm, tmp_path):
    from core.models.encoders import TextEncoder

    seg = TextEncoder.load(segments=True)
    texts = ["Hello there. How are you?\nFine!", "One line only", "Hello there. Bye."]
    x = seg.encode(texts)
    assert x.shape == (3, 768) and (seg.dim, seg.base_dim) == (768, 384)
    np.testing.assert_allclose(x[:, :384], minilm.encode(texts), atol=1e-5)
    parts = minilm.encode(["Hello there.", "How are you?", "Fine!", "Bye."])
    np.testing.assert_allclose(x[0, 384:], parts[:3].mean(0), atol=1e-5)
    np.testing.assert_allclose(x[1, 384:], x[1, :384], atol=1e-5)  # one segment: the text itself
    np.testing.assert_allclose(x[2, 384:], parts[[0, 3]].mean(0), atol=1e-5)
    # the trained-encoder path (LoRA, full) computes the same features, with gradients into the model
    y = seg.forward(seg.tokenize(texts))
    np.testing.assert_allclose(y.detach().numpy(), x, atol=1e-5)
    y[:, 384:].sum().backward()
    assert seg.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    # in blocks (a grid's runs, core.models.stacked_lora): each block's segments form an equal block of rows, the
    # shorter padded, and every text keeps its features
    two = texts + ["Fine!", "Hello there. How are you?", "Bye. Fine!"]
    tok = seg.tokenize(two, blocks=2)
    assert len(tok["seg_input_ids"]) == 2 * 5  # block 0: 5 distinct segments, block 1: 4, padded to 5
    with torch.no_grad():
        np.testing.assert_allclose(seg.forward(tok).numpy(), seg.encode(two), atol=1e-5)
    with pytest.raises(ValueError, match="equal blocks"):
        seg.tokenize(texts, blocks=2)

    # the cache holds plain embeddings, of texts and of distinct segments, in the plain encoder's folder
    cache = EmbeddingCache(tmp_path, seg)
    assert len(cache.missing(texts)) == 3 + 4  # "One line only" is a text and its own segment
    np.testing.assert_allclose(cache.get(texts), x, atol=2e-3)  # stored as float16
    assert cache.encoded == 7
    plain = EmbeddingCache(tmp_path, minilm)
    assert plain.dir == cache.dir
    np.testing.assert_allclose(plain.get(texts + ["Bye."]), np.r_[x[:, :384], parts[3:]], atol=2e-3)
    assert plain.encoded == 0


@pytest.mark.slow
def test_segment_features_let_a_linear_probe_read_honesty_far_better(small_corpus, small_corpus_embeddings, cache_root):
    """Why segment_pool exists: a response's honesty is a confidence marker on each of four sentences, which
    the pooled embedding of the whole answer blurs. A linear BTL probe on 300 questions, scored on every
    strict honesty pair of the other 100."""
    from sklearn.linear_model import LogisticRegression

    from core.data.probes import all_texts
    from core.models.encoders import TextEncoder
    from core.users.people import _strict_pairs

    seg = EmbeddingCache(cache_root, TextEncoder.load(segments=True)).get(all_texts(small_corpus))
    np.testing.assert_allclose(seg[:, :384], small_corpus_embeddings, atol=1e-6)  # the same cached rows
    C, honesty = small_corpus.n_completions, np.eye(4)[1]
    tr = _strict_pairs(small_corpus.ratings, honesty, np.arange(300))
    te = _strict_pairs(small_corpus.ratings, honesty, np.arange(300, 400))
    acc = {}
    for name, X in (("whole", small_corpus_embeddings), ("segments", seg)):
        d = X[tr[:, 0] * C + tr[:, 1]] - X[tr[:, 0] * C + tr[:, 2]]
        clf = LogisticRegression(C=1.0, fit_intercept=False, max_iter=2000).fit(
            np.concatenate([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))])
        s = X @ clf.coef_[0]
        acc[name] = float(np.mean(s[te[:, 0] * C + te[:, 1]] > s[te[:, 0] * C + te[:, 2]]))
    assert acc["segments"] > acc["whole"] + 0.05, acc
    assert acc["segments"] > 0.9, acc


def test_the_cache_key_follows_the_weights_content_so_a_reinstall_keeps_the_cache(minilm, tmp_path, monkeypatch):
    """A fresh venv, clone or CI run installs the same weights with new timestamps: the cache folder must be the
    same one (setup's warm cache is then the suite's and the class's); other weights must get another."""
    import core.common.bundled
    from core.models.encoders import TextEncoder

    installed = minilm.identity()  # (identity() resolves the bundled folder when called)
    src = core.common.bundled.bundled_minilm_path()
    copy = tmp_path / "reinstalled"
    shutil.copytree(src, copy)
    os.utime(copy / "model.safetensors", (1_000_000_000, 1_000_000_000))  # a different mtime, same bytes
    monkeypatch.setitem(enc_mod.BUNDLED, enc_mod.BUNDLED_MINILM, lambda: copy)
    assert TextEncoder.load().identity() == installed
    with open(copy / "model.safetensors", "r+b") as fh:  # other weights: one byte of a tensor changed
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    assert TextEncoder.load().identity() != installed
