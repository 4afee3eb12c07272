"""Memory is real: evicting a model returns its RAM, and switching models does not grow the process."""

from __future__ import annotations

from webui.engine.cache import ComponentCache
from webui.engine.memory import release_memory, rss_bytes
from webui.engine.pipelines import ModelChoice, PipelineManager

MB = 2**20


def checkpoint(models, stem: str) -> ModelChoice:
    return ModelChoice(models / f"checkpoints/{stem}.safetensors")


def test_an_evicted_model_returns_its_memory(tiny_models_dir):
    manager = PipelineManager(tiny_models_dir, cache=ComponentCache({"cpu": 2**40}))
    small, big = checkpoint(tiny_models_dir, "tiny-sd1"), checkpoint(tiny_models_dir, "tiny-sdxl")
    manager.load(small)
    release_memory()
    before = rss_bytes()
    manager.load(big)
    big_bytes = manager.cache.total_bytes() - sum(s.nbytes for s in manager.cache.stats() if "tiny-sd1" in s.label)
    release_memory()
    loaded = rss_bytes()
    manager.load(small)  # the big model is no longer in use ...
    manager.cache.evict()  # ... so it can be evicted
    after = rss_bytes()
    print(f"model {big_bytes // MB} MB, RSS MB before {before // MB}, loaded {loaded // MB}, after {after // MB}")
    assert loaded - before > 0.8 * big_bytes  # the load really took memory
    assert after - before < 0.15 * big_bytes  # and eviction really gave it back
    assert all("tiny-sdxl" not in s.label for s in manager.cache.stats())


def test_twenty_switches_among_three_models_keep_rss_flat(tiny_models_dir):
    # Three distinct files (the .ckpt holds SD1's weights again, but it is another file to the cache).
    choices = [checkpoint(tiny_models_dir, "tiny-sd1"), checkpoint(tiny_models_dir, "tiny-sd2")]
    choices.append(ModelChoice(tiny_models_dir / "checkpoints/tiny-sd1.ckpt"))
    probe = PipelineManager(tiny_models_dir, cache=ComponentCache({"cpu": 2**40}))
    sizes = []
    for choice in choices:
        before = probe.cache.total_bytes()
        probe.load(choice)
        sizes.append(probe.cache.total_bytes() - before)
    probe.cache.clear()
    del probe
    # Room for the two largest but never all three: every round has to evict.
    budget = sum(sorted(sizes)[-2:]) + MB
    manager = PipelineManager(tiny_models_dir, cache=ComponentCache({"cpu": budget}))
    for choice in choices:
        manager.load(choice)
    release_memory()
    first_round = rss_bytes()
    for i in range(20):
        manager.load(choices[i % 3])
    release_memory()
    final = rss_bytes()
    evictions = manager.cache.evictions
    print(f"budget {budget / MB:.0f} MB, evictions {evictions}, RSS {first_round / MB:.0f} -> {final / MB:.0f} MB")
    assert manager.cache.evictions >= 10
    assert manager.cache.total_bytes() <= budget
    assert final <= first_round * 1.04
