"""Tests for pipeline.features: every registered feature against librosa itself."""

import json

import librosa
import numpy as np
import pytest

from pipeline.features import (
    FEATURES,
    Feature,
    build_feature,
    check_waveform,
    feature_settings_defaults,
    parse_feature_names,
)

SR = 22050

# Short downsampled CQT octaves warn about n_fft > signal length; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:n_fft=.*is too large:UserWarning")


def _clip(n_samples: int, sr: int = SR, seed: int = 0, silence: bool = True) -> np.ndarray:
    """Two tones, a click train and a little noise: energy in every band.

    With ``silence``, a stretch of digital silence in the middle reaches the
    dB floors, so a changed ``amin`` or a ``top_db`` clip shows up.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / sr
    clicks = (np.arange(n_samples) % (sr // 4) == 0).astype(float)
    y = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1760 * t) + 0.5 * clicks
    y = y + 0.02 * rng.standard_normal(n_samples)
    if silence:
        y[n_samples // 3: n_samples // 3 + sr // 2] = 0.0
    return y.astype(np.float32)


def _ref_log_mel(y, s):
    power = librosa.feature.melspectrogram(
        y=y, sr=s["sr"], n_fft=s["n_fft"], hop_length=s["hop_length"], n_mels=s["n_mels"],
        fmin=s["fmin"], fmax=s["fmax"],
    )
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)


def _ref_mfcc(y, s):
    mfcc = librosa.feature.mfcc(S=_ref_log_mel(y, s), n_mfcc=s["n_mfcc"])
    return np.concatenate([mfcc] + [librosa.feature.delta(mfcc, order=k) for k in range(1, s["deltas"] + 1)])


def _ref_chroma(y, s):
    return librosa.feature.chroma_stft(
        y=y, sr=s["sr"], n_fft=s["n_fft"], hop_length=s["hop_length"], n_chroma=s["n_chroma"], tuning=s["tuning"]
    )


def _ref_cqt(y, s):
    c = librosa.cqt(y, sr=s["sr"], hop_length=s["hop_length"], fmin=s["fmin"], n_bins=s["n_bins"],
                    bins_per_octave=s["bins_per_octave"])
    return librosa.amplitude_to_db(np.abs(c), ref=1.0, amin=1e-5, top_db=None)


# Direct librosa computation and a non-default configuration for each feature.
REFERENCE = {
    "mel": (_ref_log_mel, {"n_fft": 2048, "hop_length": 256, "n_mels": 64, "fmin": 30.0, "fmax": 8000.0}),
    "mfcc": (_ref_mfcc, {"n_mels": 64, "n_mfcc": 13, "deltas": 2}),
    "chroma": (_ref_chroma, {"n_fft": 2048, "hop_length": 256, "n_chroma": 24, "tuning": None}),
    "cqt": (_ref_cqt, {"hop_length": 256, "fmin": 55.0, "n_bins": 48, "bins_per_octave": 24}),
    "wave": (lambda y, s: y, {"sr": 16000}),
}


def test_every_feature_has_a_reference():
    assert set(REFERENCE) == set(FEATURES)


@pytest.mark.parametrize("name", list(FEATURES))
@pytest.mark.parametrize("custom", [False, True], ids=["defaults", "custom"])
def test_matches_librosa(name, custom):
    reference, overrides = REFERENCE[name]
    feature = build_feature(name, **(overrides if custom else {}))
    y = _clip(2 * feature.sr + 123, sr=feature.sr)
    out = feature(y)
    expected = reference(y, feature.settings)
    if feature.kind == "spectrogram":  # the silent stretch reaches the -100 dB floor
        assert expected.min() < -90 or name == "chroma"
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert out.shape == feature.output_shape(y.size)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", list(FEATURES))
@pytest.mark.parametrize("n_samples", [1, 511, 512, 5000, SR * 3 + 7])
def test_output_shape(name, n_samples):
    feature = build_feature(name, **({"deltas": 0} if name == "mfcc" else {}))
    out = feature(_clip(n_samples))
    assert out.shape == feature.output_shape(n_samples)
    assert out.dtype == np.float32 and out.flags.c_contiguous and np.isfinite(out).all()
    if feature.kind == "spectrogram":
        assert out.shape[1] == 1 + n_samples // feature.settings["hop_length"]
    else:
        assert feature.kind == "waveform" and out.shape == (n_samples,)


@pytest.mark.parametrize("name", list(FEATURES))
def test_settings_round_trip(name):
    feature = build_feature(name, sr=16000)
    text = json.dumps(feature.settings)
    rebuilt = build_feature(name, **json.loads(text))
    assert rebuilt.settings == feature.settings
    assert rebuilt.settings == {**feature_settings_defaults(name), "sr": 16000}
    assert isinstance(feature, Feature) and feature.name == name and feature.sr == 16000
    y = _clip(8000, sr=16000)
    np.testing.assert_array_equal(rebuilt(y), feature(y))


@pytest.mark.parametrize("name", list(FEATURES))
def test_frames_per_second(name):
    feature = build_feature(name)
    hop = feature.settings.get("hop_length", 1)
    assert feature.frames_per_second == pytest.approx(SR / hop)


def test_mfcc_deltas_stack():
    y = _clip(SR)
    base = build_feature("mfcc", deltas=0)(y)
    for deltas in (1, 2):
        out = build_feature("mfcc", deltas=deltas)(y)
        assert out.shape[0] == 20 * (1 + deltas)
        np.testing.assert_array_equal(out[:20], base)


def test_mfcc_deltas_refuse_too_short_clip():
    with pytest.raises(ValueError, match="deltas"):
        build_feature("mfcc", deltas=1)(_clip(512 * 4))


def test_mel_crop_equals_slice_of_full_feature():
    feature = build_feature("mel")
    hop, half_window = feature.settings["hop_length"], feature.settings["n_fft"] // 2
    y = _clip(SR * 4)
    start, stop = 40 * hop, 140 * hop  # a crop aligned to the frame grid
    full, crop = feature(y), feature(y[start:stop])
    edge = -(-half_window // hop)  # frames whose window reaches past the crop
    inner = slice(edge, crop.shape[1] - edge)
    np.testing.assert_allclose(crop[:, inner], full[:, 40 + edge:40 + crop.shape[1] - edge], atol=1e-3)
    # Sanity: the padded edge frames do differ, so the comparison above can fail.
    assert not np.allclose(crop[:, 0], full[:, 40], atol=1e-3)


def test_mel_is_not_relative_to_clip_max():
    feature = build_feature("mel")
    y = _clip(SR, silence=False)
    np.testing.assert_allclose(feature(0.5 * y), feature(y) - 20 * np.log10(2), atol=1e-3)


def test_unknown_feature_lists_choices():
    with pytest.raises(ValueError, match="unknown feature 'spectral'.*mel, mfcc, chroma, cqt, wave"):
        build_feature("spectral")
    with pytest.raises(ValueError, match="choose one of"):
        feature_settings_defaults("spectral")


@pytest.mark.parametrize("name", list(FEATURES))
def test_unknown_setting_is_named(name):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) n_fftt for feature") as info:
        build_feature(name, n_fftt=1024)
    for setting in feature_settings_defaults(name):
        assert setting in str(info.value)


@pytest.mark.parametrize(
    ("name", "settings", "culprit"),
    [
        ("mel", {"n_fft": 0}, "n_fft"),
        ("mel", {"n_fft": -1024}, "n_fft"),
        ("mel", {"hop_length": 0}, "hop_length"),
        ("mel", {"hop_length": 4096}, "hop_length"),
        ("mel", {"n_mels": 1100}, "n_mels"),
        ("mel", {"n_mels": 0}, "n_mels"),
        ("mel", {"fmax": 12000.0}, "fmax"),
        ("mel", {"fmin": 5000.0, "fmax": 4000.0}, "fmin"),
        ("mel", {"fmin": -1.0}, "fmin"),
        ("mel", {"n_fft": 1024.0}, "n_fft"),
        ("mel", {"n_fft": True}, "n_fft"),
        ("mel", {"sr": 0}, "sr"),
        ("mfcc", {"n_mfcc": 200}, "n_mfcc"),
        ("mfcc", {"deltas": 3}, "deltas"),
        ("mfcc", {"deltas": -1}, "deltas"),
        ("chroma", {"n_chroma": 0}, "n_chroma"),
        ("chroma", {"hop_length": 8192}, "hop_length"),
        ("chroma", {"tuning": 0.7}, "tuning"),
        ("cqt", {"n_bins": 120}, "n_bins"),
        ("cqt", {"fmin": 0.0}, "fmin"),
        ("cqt", {"bins_per_octave": 0}, "bins_per_octave"),
        ("cqt", {"fmin": float("nan")}, "fmin"),
        ("wave", {"sr": -5}, "sr"),
    ],
)
def test_bad_values_are_named(name, settings, culprit):
    with pytest.raises(ValueError, match=culprit):
        build_feature(name, **settings)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros((2, 100), np.float32), "mono"),
        (np.zeros(100, np.int16), "floating"),
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
    ],
)
def test_bad_waveform(samples, message):
    with pytest.raises(ValueError, match=message):
        check_waveform(samples)
    with pytest.raises(ValueError, match=message):
        build_feature("mel")(samples)


def test_parse_feature_names():
    assert parse_feature_names("mel,mfcc") == ["mel", "mfcc"]
    assert parse_feature_names(" cqt , wave ") == ["cqt", "wave"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no feature names"), (" , ", "no feature names"), ("mel,,mfcc", "empty feature name"),
     ("mel,spectral", "unknown feature 'spectral'"), ("mel,mfcc,mel", "more than once")],
)
def test_parse_feature_names_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_feature_names(text)


def test_compute_features_shares_the_log_mel_and_matches_single_calls(monkeypatch):
    from pipeline.features import LogMel, compute_features

    y = np.random.default_rng(4).uniform(-0.5, 0.5, 22050).astype(np.float32)
    features = {name: build_feature(name) for name in FEATURES}
    alone = {name: feature(y) for name, feature in features.items()}
    calls = []
    original = LogMel._compute_log_mel
    monkeypatch.setattr(LogMel, "_compute_log_mel", lambda self, s: calls.append(1) or original(self, s))
    together = compute_features(features, y)
    assert len(calls) == 1  # mel and mfcc share one spectrogram
    for name in FEATURES:
        np.testing.assert_array_equal(together[name], alone[name])
    calls.clear()
    compute_features({"mel": build_feature("mel"), "mfcc": build_feature("mfcc", n_mels=64)}, y)
    assert len(calls) == 2  # other mel settings: nothing to share
