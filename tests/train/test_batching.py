"""Training batches: K expressions per image, mixing with a segmentation guarantee, a seeded
resumable order and sharding over ranks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from self1e.data.sample import Sample
from self1e.model.processing import IGNORE_INDEX
from self1e.train.batching import BatchPlan, Source, TrainBatches, subsample_images


@pytest.fixture(scope="module")
def processor():
    from self1e.model import Self1eModel
    from self1e.model.tiny import build_tiny_base

    base, tok = build_tiny_base("tiny", seed=0)
    return Self1eModel.from_base(base, tok).processor


def _image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def seg_samples(n_images: int, per_image: int, prefix: str = "s") -> list[Sample]:
    """In-memory samples; the samples of one image share one image callable (one image key)."""
    out = []
    for i in range(n_images):
        im = _image(i)
        draw = lambda im=im: im  # noqa: E731
        for j in range(per_image):
            def mask(j=j):
                return np.arange(40)[None, :].repeat(30, 0) < 5 * (j + 1)

            out.append(Sample(id=f"{prefix}{i}_{j}", image=draw, text=f"the red box {j}", mask=mask))
    return out


def vqa_samples(n: int) -> list[Sample]:
    return [Sample(id=f"q{i}", image=lambda i=i: _image(100 + i), question="What color is the star?",
                   answer="Red.") for i in range(n)]


def _rows_with_seg(batch, seg_id: int) -> int:
    return int((batch.input_ids == seg_id).any(1).sum())


def test_k_expressions_share_one_image(processor):
    batches = TrainBatches([Source("a", seg_samples(1, 5))], processor, batch_size=1, k=3, seed=0)
    it = iter(batches)
    sizes = []
    for _ in range(len(batches)):
        b = next(it)
        assert b.pixel_values.shape[0] == 1 and b.grids == [(1, 1)]  # one image entry, shared
        assert b.image_index.tolist() == [0] * b.input_ids.shape[0]
        assert all(t is not None and min(t.shape) == 128 for t in b.mask_targets)
        sizes.append(b.input_ids.shape[0])
    assert sorted(sizes) == [2, 3]  # 5 expressions of one image -> units of 3 and 2


def test_vqa_rows_have_no_mask_and_answer_labels(processor):
    batches = TrainBatches([Source("seg", seg_samples(2, 1)), Source("vqa", vqa_samples(6), ratio=3.0)],
                           processor, batch_size=3, k=3, seed=1)
    seg_id = processor.tokenizer.convert_tokens_to_ids("[SEG]")
    seen_vqa = False
    for _, b in zip(range(6), batches):
        for r in range(b.input_ids.shape[0]):
            has_seg = bool((b.input_ids[r] == seg_id).any())
            assert (b.mask_targets[r] is not None) == has_seg
            answer = b.input_ids[r][b.labels[r] != IGNORE_INDEX]
            assert len(answer) > 0
            if not has_seg:
                seen_vqa = True
                assert processor.tokenizer.decode(answer.tolist()).lower().startswith("red")
    assert seen_vqa


def test_every_micro_batch_has_a_segmentation_sample(processor):
    # 1 segmentation image against 200 VQA images weighted 50:1: without the guarantee most
    # micro-batches of 2 would be VQA only.
    sources = [Source("seg", seg_samples(1, 2)), Source("vqa", vqa_samples(200), ratio=50.0)]
    plan = BatchPlan(sources, batch_size=2, k=3, seed=0)
    for e in range(2):
        for mb in plan.epoch(e):
            assert any(not sources[s].samples[m[0]].is_vqa for s, m in mb)
    batches = TrainBatches(sources, processor, batch_size=2, k=3, seed=0)
    seg_id = processor.tokenizer.convert_tokens_to_ids("[SEG]")
    for _, b in zip(range(5), batches):
        assert _rows_with_seg(b, seg_id) >= 1


def test_ratios_set_the_mix():
    sources = [Source("big", seg_samples(300, 1, "b"), ratio=1.0), Source("small", seg_samples(30, 1, "s"), ratio=1.0)]
    plan = BatchPlan(sources, batch_size=4, k=1, seed=0)
    counts = np.bincount([s for mb in plan.epoch(0) for s, _ in mb], minlength=2)
    assert abs(counts[0] / counts.sum() - 0.5) < 0.06  # equal ratios, despite a 10x size difference
    assert plan.length == 330 // 4


def test_order_is_seeded_and_resumes_exactly(processor):
    def make(seed=0):
        return TrainBatches([Source("a", seg_samples(5, 2))], processor, batch_size=2, k=1, seed=seed)

    straight = make()
    it = iter(straight)
    ref = [next(it) for _ in range(9)]  # 5 micro-batches per epoch: crosses an epoch boundary
    first = make()
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 0 and state["position"] == 4
    resumed = make()
    resumed.load_state_dict(state)
    it = iter(resumed)
    for want in ref[4:]:
        got = next(it)
        assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.pixel_values, want.pixel_values)
        assert all(torch.equal(a, b) for a, b in zip(got.mask_targets, want.mask_targets))
    assert resumed.state_dict()["epoch"] == 1
    # the order is a function of the seed, and epochs differ
    plan = BatchPlan([Source("a", seg_samples(5, 2))], 2, 1, seed=0)
    assert plan.epoch(0) != plan.epoch(1)
    assert plan.epoch(0) == BatchPlan([Source("a", seg_samples(5, 2))], 2, 1, seed=0).epoch(0)
    assert plan.epoch(0) != BatchPlan([Source("a", seg_samples(5, 2))], 2, 1, seed=1).epoch(0)
    with pytest.raises(ValueError, match="seed"):
        make(seed=3).load_state_dict(state)


def test_ranks_get_disjoint_shards(processor):
    sources = [Source("a", seg_samples(9, 1))]
    plan = BatchPlan(sources, batch_size=2, k=3, seed=0, world_size=2)
    assert plan.length == 4  # 9 units -> 2 rounds of 2 ranks x 2 units
    per_rank = []
    for rank in range(2):
        tb = TrainBatches(sources, processor, batch_size=2, k=3, seed=0, rank=rank, world_size=2)
        assert len(tb) == 2
        it = iter(tb)
        per_rank.append([next(it) for _ in range(2)])
    ids = [{tuple(b.input_ids[0].tolist()) for b in batches} for batches in per_rank]
    px = [torch.cat([b.pixel_values for b in batches]) for batches in per_rank]
    assert not torch.equal(px[0], px[1])
    mb = plan.epoch(0)
    assert sorted(u for b in mb for u in b) == sorted(u for r in range(2) for i in range(r, 4, 2) for u in mb[i])
    assert ids[0] and ids[1]


def test_a_language_only_mix_trains_without_segmentation_rows(processor, caplog):
    plan = BatchPlan([Source("vqa", vqa_samples(4))], 1, 3, 0)  # the VQA-only baseline of vqa_preserved
    assert plan.vqa_only and "no segmentation sample" in caplog.text
    assert kind_of_units(plan) == {"vqa"}
    batch = TrainBatches([Source("vqa", vqa_samples(4))], processor, batch_size=1, k=3, seed=0).make_batch(0, 0)
    assert all(t is None for t in batch.mask_targets) and (batch.labels != IGNORE_INDEX).any()


def kind_of_units(plan: BatchPlan) -> set[str]:
    return {"vqa" if plan.sources[s].samples[m[0]].is_vqa else "seg" for b in plan.epoch(0) for s, m in b}


def test_errors_name_the_problem(processor):
    with pytest.raises(ValueError, match="fewer than one micro-batch"):
        TrainBatches([Source("a", seg_samples(1, 1))], processor, 2, 3, 0)
    assert BatchPlan([Source("a", seg_samples(1, 1))], 2, 3, 0).length == 0  # `data plan` reports it instead
    with pytest.raises(ValueError, match="ratio"):
        BatchPlan([Source("a", seg_samples(2, 1), ratio=0)], 1, 3, 0)


# ---- repeat mode (the SELF1E authors' mixing) --------------------------------------------------
def test_repeat_mode_shares_follow_the_repeat_factors_and_every_batch_has_segmentation():
    sources = [Source("sem", seg_samples(40, 1, "a"), group="sem_seg"),
               Source("ref", seg_samples(20, 1, "r"), group="refer_seg"),
               Source("vqa", vqa_samples(60), group="vqa")]
    plan = BatchPlan(sources, batch_size=4, k=1, seed=3, repeats={"sem_seg": 1, "refer_seg": 6, "vqa": 2})
    units = 40 * 1 + 20 * 6 + 60 * 2
    assert plan.length == units // 4
    batches = plan.epoch(0)
    for mb in batches:
        assert not sources[mb[0][0]].samples[mb[0][1][0]].is_vqa  # the first unit is a segmentation unit
    rest = np.bincount([s for mb in batches for s, _ in mb[1:]], minlength=3)  # the shuffled, unreplaced slots
    want = np.array([40, 120, 120]) / units
    assert np.abs(rest / rest.sum() - want).max() < 0.06
    ref_units = [m for mb in batches for s, m in mb[1:] if s == 1]
    assert len(set(ref_units)) == 20  # each repeat is a fresh pass over the same images
    assert plan.epoch(0) == BatchPlan(sources, 4, 1, 3, repeats={"sem_seg": 1, "refer_seg": 6, "vqa": 2}).epoch(0)
    assert plan.epoch(1) != batches


def test_repeat_mode_refuses_a_source_without_a_group_factor():
    with pytest.raises(ValueError, match="group 'vqa' has no repeat factor"):
        BatchPlan([Source("a", seg_samples(4, 1)), Source("q", vqa_samples(4), group="vqa")], 2, 1, 0,
                  repeats={None: 1})


def test_subsample_images_is_seeded_and_keeps_whole_images():
    samples = seg_samples(50, 3)
    a, b, c = (subsample_images(samples, 10, seed) for seed in (1, 1, 2))
    assert [s.id for s in a] == [s.id for s in b] and [s.id for s in a] != [s.id for s in c]
    images = {s.id.split("_")[0] for s in a}
    assert len(images) == 10 and len(a) == 30  # all three samples of each kept image
    assert subsample_images(samples, 60, 0) == samples
