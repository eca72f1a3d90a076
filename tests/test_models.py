"""Tests for models/: every registered network, its contract and the registry helpers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from models import MODELS, build_model, count_parameters, list_models, model_input_kind

N_BINS = 41       # odd, not a power of two: catches shapes tied to 128 mel bins
N_CLASSES = 7     # odd, != 10: catches a hard-coded GTZAN head
BATCH = 2
# A typical time length per input kind: 3 s at hop 512 (frames) / at 22050 Hz (samples).
TYPICAL_LENGTH = {"spectrogram": 130, "waveform": 66150}

# Registered defaults plus the non-default options, so each code path is exercised.
VARIANTS = [(name, {}) for name in MODELS] + [
    ("cnn1d", {"padding": "valid"}),
    ("cnn2d", {"pooling": "mean", "n_blocks": 3}),
    ("crnn", {"pooling": "last", "rnn_layers": 2}),
    ("samplecnn", {"pooling": "mean", "n_blocks": 5, "channels": 8}),
]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in VARIANTS]


def make_model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, n_bins=N_BINS, n_classes=N_CLASSES, **kwargs)


def make_input(model: nn.Module, length: int, *, batch: int = BATCH,
               seed: int = 1) -> torch.Tensor:
    """Seeded random batch shaped for ``model``: (batch, N_BINS, length) or (batch, length)."""
    gen = torch.Generator().manual_seed(seed)
    if model.INPUT_KIND == "waveform":
        return 0.1 * torch.randn(batch, length, generator=gen)
    return torch.randn(batch, N_BINS, length, generator=gen)


def typical_length(model: nn.Module) -> int:
    return max(model.min_frames, TYPICAL_LENGTH[model.INPUT_KIND])


# --- every model ------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=VARIANT_IDS)
def test_forward_backward_gives_finite_gradients_for_every_parameter(name, kwargs):
    model = make_model(name, **kwargs).train()
    x = make_input(model, typical_length(model))
    target = torch.tensor([0, N_CLASSES - 1])

    logits = model(x)
    assert logits.shape == (BATCH, N_CLASSES)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, target).backward()

    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: parameter {pname} got no gradient (unused?)"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient in {pname}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_two_time_lengths_give_logits_of_the_same_shape(name):
    model = make_model(name).eval()
    base = typical_length(model)
    with torch.no_grad():
        for length in (base, base + 37):
            out = model(make_input(model, length))
            assert out.shape == (BATCH, N_CLASSES), f"{name} failed at length {length}"
            assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=VARIANT_IDS)
def test_min_frames_is_accepted_and_one_less_raises(name, kwargs):
    model = make_model(name, **kwargs).eval()
    assert isinstance(model.min_frames, int) and model.min_frames >= 1
    with torch.no_grad():
        assert model(make_input(model, model.min_frames)).shape == (BATCH, N_CLASSES)
    with pytest.raises(ValueError, match="min_frames"):
        model(make_input(model, model.min_frames - 1))


def test_cnn1d_valid_padding_min_frames_matches_the_unpadded_baseline():
    # conv8 -> pool8 -> conv8 -> pool8 -> conv4 -> pool4 needs ((1*4+3)*8+7)*8+7 frames.
    assert make_model("cnn1d", padding="valid").min_frames == 511


@pytest.mark.parametrize("name", list(MODELS))
def test_config_rebuilds_an_identical_model(name):
    model = make_model(name, dropout=0.25).eval()
    config = json.loads(json.dumps(model.config))  # must survive a JSON checkpoint
    assert config["n_bins"] == N_BINS and config["n_classes"] == N_CLASSES
    assert config["dropout"] == 0.25

    rebuilt = build_model(name, **config).eval()
    assert type(rebuilt) is type(model)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = make_input(model, typical_length(model))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_mode_is_deterministic(name):
    model = make_model(name)
    x = make_input(model, typical_length(model))
    model.train()
    model(x)  # move BatchNorm running stats away from their initial values
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_dropout_kwarg_is_honoured(name):
    x = make_input(make_model(name), typical_length(make_model(name)))
    no_drop = make_model(name, dropout=0.0).train()
    assert torch.equal(no_drop(x), no_drop(x))  # train mode, yet nothing random

    drop = make_model(name, dropout=0.5).train()
    assert drop.config["dropout"] == 0.5
    assert not torch.equal(drop(x), drop(x))
    assert all(m.p == 0.5 for m in drop.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dropout", [-0.1, 1.0, "0.5"])
def test_bad_dropout_raises(name, dropout):
    with pytest.raises(ValueError, match="dropout"):
        make_model(name, dropout=dropout)


@pytest.mark.parametrize("name", list(MODELS))
def test_numpy_integer_sizes_are_accepted_and_stored_as_json_ints(name):
    # n_bins often comes from HDF5 attributes as a numpy integer.
    model = build_model(name, n_bins=np.int64(N_BINS), n_classes=np.int32(N_CLASSES))
    assert json.loads(json.dumps(model.config))["n_bins"] == N_BINS
    assert type(model.config["n_classes"]) is int


@pytest.mark.parametrize("name", list(MODELS))
def test_bad_n_classes_raises(name):
    with pytest.raises(ValueError, match="n_classes"):
        build_model(name, n_bins=N_BINS, n_classes=0)


@pytest.mark.parametrize("name", [n for n in MODELS if MODELS[n].INPUT_KIND == "spectrogram"])
def test_spectrogram_models_reject_wrong_bins_and_axes(name):
    model = make_model(name).eval()
    with pytest.raises(ValueError, match=f"n_bins={N_BINS}"):
        model(torch.randn(BATCH, N_BINS + 1, 130))
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(N_BINS, 130))


@pytest.mark.parametrize("name", [n for n in MODELS if MODELS[n].INPUT_KIND == "waveform"])
def test_waveform_models_accept_a_channel_axis_and_ignore_n_bins(name):
    model = make_model(name).eval()
    x = make_input(model, model.min_frames)
    with torch.no_grad():
        torch.testing.assert_close(model(x.unsqueeze(1)), model(x))
    with pytest.raises(ValueError, match="samples"):
        model(torch.randn(BATCH, 2, model.min_frames))
    other = build_model(name, n_bins=7, n_classes=N_CLASSES)
    assert count_parameters(other) == count_parameters(model)


@pytest.mark.parametrize(("name", "n_bins"), [("cnn2d", 15), ("crnn", 31)])
def test_too_few_bins_for_the_frequency_pooling_raises(name, n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        build_model(name, n_bins=n_bins, n_classes=N_CLASSES)


@pytest.mark.parametrize("name", list(MODELS))
def test_default_size_fits_cpu_training_on_gtzan(name):
    # Design budget for the default configuration (128 mel bins, 10 genres).
    n = count_parameters(build_model(name, n_bins=128, n_classes=10))
    assert 10_000 < n < 1_500_000


# --- registry -----------------------------------------------------------------------------

def test_list_models_matches_registry():
    assert list_models() == list(MODELS)
    assert set(list_models()) == {"cnn1d", "cnn2d", "resnet", "crnn", "samplecnn"}


def test_model_input_kind_values():
    assert {name: model_input_kind(name) for name in MODELS} == {
        "cnn1d": "spectrogram", "cnn2d": "spectrogram", "resnet": "spectrogram",
        "crnn": "spectrogram", "samplecnn": "waveform"}
    for name, cls in MODELS.items():
        assert make_model(name).INPUT_KIND == cls.INPUT_KIND == model_input_kind(name)


@pytest.mark.parametrize("bad", ["vgg", "", "CNN1D"])
def test_unknown_model_name_lists_all_choices(bad):
    for call in (lambda: build_model(bad, n_bins=N_BINS, n_classes=N_CLASSES),
                 lambda: model_input_kind(bad)):
        with pytest.raises(ValueError) as err:
            call()
        assert repr(bad) in str(err.value)
        for name in MODELS:
            assert name in str(err.value)


@pytest.mark.parametrize("name", list(MODELS))
def test_unknown_kwarg_is_named_and_accepted_ones_listed(name):
    with pytest.raises((TypeError, ValueError)) as err:
        build_model(name, n_bins=N_BINS, n_classes=N_CLASSES, dropuot=0.1)
    assert "dropuot" in str(err.value)
    assert "dropout" in str(err.value.args[0].split("accepted")[-1])


def test_count_parameters_counts_only_trainable_ones():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert count_parameters(model) == (3 * 4 + 4) + (4 * 2 + 2)
    model[0].requires_grad_(False)
    assert count_parameters(model) == 4 * 2 + 2
