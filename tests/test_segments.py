"""One segmentation: prediction on a feature array cuts the segments the evaluation dataset cuts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_reader import N_BINS, write_cache
from training.checkpoint import Member
from training.data import SegmentDataset, batch_loader, compute_normalization
from training.evaluation import predict_segments
from training.inference import segment_probabilities
from training.segments import cut_segments, inverse_std, segment_starts

SEGMENT, HOP = 12, 5


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "cache.h5"
    written = write_cache(path, versions=0)
    return path, written


def test_cut_segments_are_the_evaluation_datasets_items(cache):
    path, written = cache
    mean, std = compute_normalization(path, "mel")
    dataset = SegmentDataset(path, feature="mel", splits=("test",), segment_frames=SEGMENT, hop_frames=HOP,
                             train=False, mean=mean, std=std)
    row = written["test"]["mel"][0]
    starts = segment_starts(row.shape[-1], SEGMENT, HOP)
    cut = cut_segments(lambda _, a, b: row[..., a:b], [0] * len(starts), starts.tolist(), shape=row.shape[:-1],
                       segment_frames=SEGMENT, mean=mean, inv_std=inverse_std(std))
    items = np.stack([dataset[i][0].numpy() for i in range(len(starts))])  # clip 0's segments come first
    assert np.array_equal(cut, items)
    assert np.array_equal(dataset.segment_starts, starts)


class MeanLogits(torch.nn.Module):
    """Logits that depend on every value of the segment: a stand-in for a trained model."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(N_BINS, 3)

    def forward(self, x):
        return self.linear(x.mean(-1))


def test_prediction_of_an_array_equals_evaluation_of_its_cached_clip(cache):
    path, written = cache
    mean, std = compute_normalization(path, "mel")
    torch.manual_seed(0)
    model = MeanLogits().eval()
    ckpt = {"segment_frames": SEGMENT, "normalization": {"mean": mean.tolist(), "std": std.tolist()},
            "args": {"eval_hop_seconds": None}, "labels": ["a", "b", "c"], "feature": "mel"}
    member = Member(path=path, ckpt=ckpt, model=model)
    dataset = SegmentDataset(path, feature="mel", splits=("test",), segment_frames=SEGMENT, train=False,
                             mean=mean, std=std)
    loader = batch_loader(dataset, sampler=range(len(dataset)), batch_size=4)
    probs, clip_ids = predict_segments(model, loader, device=torch.device("cpu"), amp=False)
    starts, predicted = segment_probabilities(member, written["test"]["mel"][1], hop_frames=member.hop_frames(20.0),
                                              batch_size=3)
    np.testing.assert_array_equal(starts, dataset.segment_starts)
    np.testing.assert_allclose(predicted, probs[clip_ids == 1], rtol=0, atol=1e-6)
