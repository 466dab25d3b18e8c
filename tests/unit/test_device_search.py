"""Device-side decoding on CPU (numpy as the array module): the device trie's masks and steps
equal the trie's own, and the device beam search returns what the host search returns."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import InvalidInputError
from services.retrieval.beam_search import BeamSearch, SearchOptions
from services.retrieval.device_masks import DeviceTrie, array_module
from services.retrieval.device_search import DeviceBeamSearch, masked_log_softmax
from services.retrieval.encoding import TokenLayout
from services.retrieval.trie import SidTrie, TrieLayout
from tests.unit.test_beam_search import FakeStepModel, batch_of, make_catalog


class FakeDeviceModel(FakeStepModel):
    """The numpy fake with the device face ``DeviceBeamSearch`` calls."""

    def encode_device(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> list:
        return self.encode(input_ids, attention_mask)

    def empty_cache_device(self, rows: int) -> list:
        return self.empty_cache(rows)

    def step_device(self, tokens, beam_rows, cache, cross, xp):  # type: ignore[no-untyped-def]
        logits, cache = self.step(np.asarray(tokens), np.asarray(beam_rows), cache, cross)
        return logits.reshape(-1, logits.shape[-1]), cache


LAYOUTS = {
    "packed bits + child tables": TrieLayout(),
    "csr + sorted keys": TrieLayout(dense_max_bytes=0, walk_max_fill=0, bits_max_bytes_per_edge=0),
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("sizes", [(6, 5, 4), (13, 256, 9), (64, 3)])
def test_device_masks_and_steps_equal_the_tries(sizes: tuple[int, ...], layout: TrieLayout) -> None:
    codes = make_catalog(300, sizes, seed=3)
    trie = SidTrie.build(codes, sizes, layout=layout)
    dev = DeviceTrie(trie, np)
    rng = np.random.default_rng(0)
    nodes = trie.root(1)
    for level in range(trie.depth):
        lo, hi = dev.offsets[level], dev.offsets[level + 1]
        sample = np.concatenate([rng.integers(lo, hi, 50), [-1, lo, hi - 1]]).astype(np.int64)
        local = dev.to_local(level, sample)
        assert np.array_equal(dev.mask(level, local), trie.next_mask(level, sample))
        tokens = rng.integers(0, sizes[level], len(sample)).astype(np.int64)
        want = trie.advance(level, sample, tokens)
        got = dev.advance(level, local, tokens)
        # local -> global (the dead node -> -1), as the trie names them
        got_global = np.where(got == dev.dead(level + 1), -1, got + dev.offsets[level + 1])
        assert np.array_equal(got_global, want)
        nodes = trie.advance(level, nodes, codes[:1, level])
    # the last level's children are leaves holding the items
    leaf = int(nodes[0]) - dev.offsets[trie.depth]
    assert 0 in dev.leaf_rows(leaf).tolist()


def test_a_trie_with_a_cold_start_delta_is_refused() -> None:
    sizes = (6, 5, 4)
    trie = SidTrie.build(make_catalog(40, sizes), sizes)
    trie.add_items(np.array([[5, 4, 3]]))
    with pytest.raises(InvalidInputError, match="cold-start delta"):
        DeviceTrie(trie, np)


def test_masked_log_softmax_renormalises_over_allowed_tokens() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], np.float32)
    mask = np.array([[True, False, True], [False, False, False]])
    out = masked_log_softmax(np, logits, mask, np.array([-1.0, 0.0], np.float32))
    expect = np.log(np.exp([1.0, 3.0]) / np.exp([1.0, 3.0]).sum()) - 1.0
    assert np.allclose(out[0, [0, 2]], expect)
    assert out[0, 1] == -np.inf and np.all(out[1] == -np.inf)


@pytest.mark.parametrize("beam", [1, 3, 8, 40])
def test_device_search_returns_the_host_search_results(beam: int) -> None:
    sizes = (6, 5, 4)
    layout = TokenLayout(sizes, n_words=10)
    codes = make_catalog(60, sizes, seed=1)
    trie = SidTrie.build(codes, sizes)
    model = FakeDeviceModel(layout)
    host = BeamSearch(model, layout, trie, codes)
    device = DeviceBeamSearch(model, layout, DeviceTrie(trie, np))
    queries = [[5, 9, 11], [7], [3, 4, 5, 6, 7], [1, 2]]
    options = [SearchOptions(beam_width=beam, k=10)] * len(queries)
    assert device.supports(options)
    want = host.search(batch_of(queries), options)
    got = device.search(batch_of(queries), options)
    for w, g in zip(want, got, strict=True):
        assert g.items.tolist() == w.items.tolist()
        assert np.allclose(g.scores, w.scores, atol=1e-5)
        assert len(g.items) == min(10, beam, len(codes))


def test_device_search_keeps_duplicate_sids_and_short_beams() -> None:
    """Several items under one leaf all come out; a trie with fewer leaves than the beam
    leaves dead slots that never produce items."""
    sizes = (3, 2)
    layout = TokenLayout(sizes, n_words=4)
    codes = np.array([[0, 0], [0, 0], [1, 1], [2, 0], [2, 1]], np.int64)
    trie = SidTrie.build(codes, sizes)
    model = FakeDeviceModel(layout)
    host = BeamSearch(model, layout, trie, codes)
    device = DeviceBeamSearch(model, layout, DeviceTrie(trie, np))
    options = [SearchOptions(beam_width=16, k=10)]
    got = device.search(batch_of([[3]]), options)[0]
    assert sorted(got.items.tolist()) == [0, 1, 2, 3, 4]
    assert got.items.tolist() == host.search(batch_of([[3]]), options)[0].items.tolist()


def test_batches_the_device_search_does_not_serve() -> None:
    sizes = (6, 5, 4)
    layout = TokenLayout(sizes, n_words=10)
    codes = make_catalog(40, sizes)
    trie = SidTrie.build(codes, sizes)
    device = DeviceBeamSearch(FakeDeviceModel(layout), layout, DeviceTrie(trie, np))
    ok = SearchOptions(beam_width=4)
    assert device.supports([ok, ok])
    assert not device.supports([])
    assert not device.supports([ok, SearchOptions(beam_width=5)])
    assert not device.supports([SearchOptions(exclude=np.array([1]))])
    assert not device.supports([SearchOptions(trie=trie.subset(np.arange(10)))])
    assert not device.supports([SearchOptions(node_bonus=np.zeros(trie.num_nodes, np.float32))])
    with pytest.raises(InvalidInputError):
        device.search(batch_of([[1]]), [SearchOptions(exclude=np.array([1]))])
    trie.add_items(np.array([[5, 4, 3]]))  # the device copy is now stale
    assert not device.supports([ok])


def test_without_cupy_or_a_device_the_array_module_is_numpy() -> None:
    assert array_module(prefer_device=False) is np
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert array_module() is np
