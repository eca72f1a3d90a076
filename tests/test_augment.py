"""Tests for pipeline.augment: every effect, determinism, seeding and errors."""

import hashlib
import json
import math
import multiprocessing
import pickle
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from pipeline.augment import (
    AUGMENTATIONS,
    DEFAULT_EFFECTS,
    Augmenter,
    _draw_mask,
    augment_seed,
    build_augmenter,
    parse_effect_names,
)

SR = 22050


def _clip(n_samples: int = SR, seed: int = 0, peak: float = 0.5) -> np.ndarray:
    """A harmonic tone with note onsets plus a little noise, scaled to ``peak``."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SR
    y = np.exp(-5 * (t % 0.25)) * sum(np.sin(2 * np.pi * 196 * k * t) / k for k in range(1, 5))
    y = y + 0.01 * rng.standard_normal(n_samples)
    return (peak * y / np.abs(y).max()).astype(np.float32)


# Range of the parameter each effect records, from the augmenter's settings.
PARAMETER_RANGES = {
    "pitch": lambda s: {"num_semitones": (-s["pitch_semitones"], s["pitch_semitones"])},
    "stretch": lambda s: {"rate": (s["stretch_min"], s["stretch_max"])},
    "gain": lambda s: {"amplitude_ratio": (10 ** (-s["gain_db"] / 20), 10 ** (s["gain_db"] / 20))},
    "noise": lambda s: {},
    "eq": lambda s: {},
}


def test_registry_and_defaults_agree():
    assert set(PARAMETER_RANGES) == set(AUGMENTATIONS)
    assert set(DEFAULT_EFFECTS) == set(AUGMENTATIONS)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_effect(name, seed):
    augmenter = Augmenter((name,), p=0.5)
    y = _clip()
    out, applied = augmenter(y, seed=seed)
    assert out.shape == y.shape and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
    assert not np.array_equal(out, y)
    assert list(applied) == [name] and applied[name]
    json.dumps(applied)  # JSON-serialisable
    for param, (low, high) in PARAMETER_RANGES[name](augmenter.settings).items():
        assert low <= applied[name][param] <= high


def test_eq_records_seven_bands():
    _, applied = Augmenter(("eq",))(_clip(), seed=0)
    bands = applied["eq"]["bands"]
    assert len(bands) == 7 and all(-6.0 <= b["gain_db"] <= 6.0 for b in bands)


def test_noise_follows_snr_range():
    y = _clip()
    for seed in range(4):
        out, applied = Augmenter(("noise",), snr_min_db=15.0, snr_max_db=40.0)(y, seed=seed)
        snr = 10 * np.log10(np.mean(y.astype(np.float64) ** 2) / np.mean((out - y).astype(np.float64) ** 2))
        assert 14.0 < snr < 41.0


def test_stretch_keeps_length_and_changes_timing():
    y = _clip()
    out, applied = Augmenter(("stretch",), stretch_min=1.2, stretch_max=1.25)(y, seed=0)
    assert out.shape == y.shape
    # Sped up by >= 1.2x: the last ~1/6 of the clip is zero padding.
    assert np.all(out[-SR // 8:] == 0) and not np.all(y[-SR // 8:] == 0)


def test_same_seed_same_output_and_params():
    augmenter = Augmenter(p=0.5)
    y = _clip()
    out1, applied1 = augmenter(y, seed=123)
    out2, applied2 = Augmenter(p=0.5)(y.copy(), seed=123)
    np.testing.assert_array_equal(out1, out2)
    assert applied1 == applied2


def test_different_seeds_differ():
    augmenter, y = Augmenter(p=0.5), _clip()
    outputs = [augmenter(y, seed=s)[0] for s in range(5)]
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not np.array_equal(outputs[i], outputs[j])


def test_independent_of_and_restores_global_random_state():
    augmenter, y = Augmenter(p=1.0), _clip(SR // 2)
    random.seed(1)
    np.random.seed(1)
    out1, _ = augmenter(y, seed=7)
    random.seed(2)
    np.random.seed(2)
    before = (random.getstate(), np.random.get_state()[1].copy())
    out2, _ = augmenter(y, seed=7)
    np.testing.assert_array_equal(out1, out2)
    assert random.getstate() == before[0]
    np.testing.assert_array_equal(np.random.get_state()[1], before[1])


def test_bit_identical_in_a_fresh_spawned_process():
    augmenter, y = Augmenter(p=1.0), _clip(SR // 2)
    seed = augment_seed(5, "rock/rock.00042.wav", 2)
    local, applied = augmenter(y, seed=seed)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote_seed = pool.submit(augment_seed, 5, "rock/rock.00042.wav", 2).result()
        remote, remote_applied = pool.submit(augmenter, y, seed=seed).result()
    assert remote_seed == seed
    np.testing.assert_array_equal(remote, local)
    assert remote_applied == applied


def test_p_zero_applies_exactly_one_effect_each_time():
    augmenter, y = Augmenter(p=0.0), _clip(SR // 4)
    seen = Counter()
    for seed in range(40):
        out, applied = augmenter(y, seed=seed)
        assert len(applied) == 1 and not np.array_equal(out, y)
        seen.update(list(applied))
    assert set(seen) == set(AUGMENTATIONS)


def test_p_one_applies_every_effect_in_chain_order():
    _, applied = Augmenter(p=1.0)(_clip(SR // 2), seed=0)
    assert list(applied) == list(AUGMENTATIONS)


def test_mask_is_bernoulli_conditioned_on_at_least_one():
    rng, n, p, draws = np.random.default_rng(0), 5, 0.3, 20000
    masks = np.array([_draw_mask(rng, n, p) for _ in range(draws)])
    assert masks.any(axis=1).all()
    counts = np.bincount(masks.sum(axis=1), minlength=n + 1)[1:] / draws
    k = np.arange(1, n + 1)
    binomial = np.array([math.comb(n, i) for i in k]) * p**k * (1 - p) ** (n - k)
    np.testing.assert_allclose(counts, binomial / binomial.sum(), atol=0.015)
    # Every effect is equally likely to be the only one when p -> 0.
    firsts = Counter(int(np.flatnonzero(_draw_mask(rng, n, 0.0))[0]) for _ in range(5000))
    assert all(abs(firsts[i] / 5000 - 1 / n) < 0.03 for i in range(n))


def test_peak_is_scaled_not_clipped():
    y = _clip(peak=0.95)
    augmenter = Augmenter(("gain",), gain_db=12.0)
    scaled = 0
    for seed in range(8):
        out, applied = augmenter(y, seed=seed)
        assert np.abs(out).max() <= 1.0
        if "headroom" in applied:
            scaled += 1
            ratio = applied["gain"]["amplitude_ratio"] * applied["headroom"]["scale"]
            np.testing.assert_allclose(out, y * ratio, rtol=1e-5, atol=1e-7)  # a pure gain: shape kept
    assert scaled > 0


def test_input_above_full_scale_is_not_squeezed_to_one():
    y = _clip(peak=1.5)
    for seed in range(4):
        out, _ = Augmenter(("pitch",))(y, seed=seed)
        assert 1.0 < np.abs(out).max() <= 1.5 + 1e-6


def test_picklable_and_settings_round_trip():
    augmenter = build_augmenter("pitch,noise", p=0.3, pitch_semitones=1.5)
    clone = pickle.loads(pickle.dumps(augmenter))
    assert clone.settings == augmenter.settings
    settings = json.loads(json.dumps(augmenter.settings))
    assert Augmenter(**settings).settings == augmenter.settings
    y = _clip(SR // 2)
    np.testing.assert_array_equal(clone(y, seed=3)[0], augmenter(y, seed=3)[0])


def test_effects_recorded_in_chain_order():
    assert Augmenter(("gain", "pitch")).settings["effects"] == ["pitch", "gain"]
    assert Augmenter().settings["effects"] == list(AUGMENTATIONS)


def test_augment_seed_formula_and_stability():
    expected = int.from_bytes(hashlib.sha256(b'[0, "blues/blues.00000.wav", 1]').digest()[:8], "little")
    assert augment_seed(0, "blues/blues.00000.wav", 1) == expected
    seeds = {augment_seed(b, k, v) for b in (0, 1) for k in ("a.wav", "b.wav", "a.wav ") for v in range(4)}
    assert len(seeds) == 2 * 3 * 4


@pytest.mark.parametrize(
    "args", [(-1, "a.wav", 0), (0, "a.wav", -1), (0, 7, 0), (0.5, "a.wav", 0), (True, "a.wav", 0)]
)
def test_augment_seed_refuses(args):
    with pytest.raises(ValueError):
        augment_seed(*args)


def test_parse_effect_names():
    assert parse_effect_names("pitch,noise") == ("pitch", "noise")
    assert parse_effect_names(" gain , eq ") == ("gain", "eq")


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no effect names"), ("pitch,,gain", "empty effect name"),
     ("pitch,reverb", "unknown effect 'reverb'.*pitch, stretch, eq, noise, gain"), ("gain,gain", "more than once")],
)
def test_parse_effect_names_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_effect_names(text)


def test_unknown_effect_in_augmenter():
    with pytest.raises(ValueError, match="unknown effect 'reverb'"):
        Augmenter(("pitch", "reverb"))
    with pytest.raises(ValueError, match="unknown effect 'reverb'"):
        build_augmenter("reverb")
    with pytest.raises(ValueError, match="effects is empty"):
        Augmenter(())


@pytest.mark.parametrize(
    ("settings", "culprit"),
    [
        ({"p": 1.5}, "p"), ({"p": -0.1}, "p"), ({"sr": 0}, "sr"), ({"pitch_semitones": 0.0}, "pitch_semitones"),
        ({"pitch_semitones": 30.0}, "pitch_semitones"), ({"stretch_min": 1.3}, "stretch_min"),
        ({"stretch_min": 0.01}, "stretch_min"), ({"snr_min_db": 50.0}, "snr_min_db"),
        ({"eq_gain_db": -1.0}, "eq_gain_db"), ({"gain_db": float("nan")}, "gain_db"), ({"gain_db": "6"}, "gain_db"),
        ({"reverb_mix": 0.5}, "reverb_mix"),
    ],
)
def test_bad_settings_are_named(settings, culprit):
    with pytest.raises(ValueError, match=culprit):
        build_augmenter(**settings)


@pytest.mark.parametrize(
    ("samples", "seed", "message"),
    [
        (np.zeros((2, 100), np.float32), 0, "mono"),
        (np.zeros(100, np.int16), 0, "floating"),
        (np.array([0.1, np.inf], np.float32), 0, "NaN or infinity"),
        (np.zeros(100, np.float32), -3, "seed"),
        (np.zeros(100, np.float32), True, "seed"),
    ],
)
def test_bad_call_arguments(samples, seed, message):
    with pytest.raises(ValueError, match=message):
        Augmenter()(samples, seed=seed)
