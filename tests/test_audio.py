"""Tests for pipeline.audio: decoding, mono/resample, cut/pad, flags and errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio import DEFAULT_SR, Audio, AudioLoadError, fit_length, load_audio

RNG_SEED = 1234


def tone(freq, seconds, sr, *, amplitude=0.5):
    t = np.arange(round(seconds * sr)) / sr
    return amplitude * np.sin(2 * np.pi * freq * t)


def dominant_frequency(samples, sr):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / sr)[np.argmax(spectrum)]


def noise(seconds, sr, *, channels=1, amplitude=0.3):
    rng = np.random.default_rng(RNG_SEED)
    shape = (round(seconds * sr), channels) if channels > 1 else (round(seconds * sr),)
    return amplitude * rng.uniform(-1, 1, shape)


def decoder_warnings(caught):
    """Warnings a user would see from the decoders (ResourceWarning comes from GC, not us)."""
    return [w for w in caught if not issubclass(w.category, ResourceWarning)]


def test_stereo_44k_becomes_mono_22k_with_same_pitch(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = tone(440, 1.0, 44100, amplitude=0.8), tone(440, 1.0, 44100, amplitude=0.4)
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")

    audio = load_audio(path, sr=22050, duration=1.0)

    assert isinstance(audio, Audio)
    assert audio.sr == 22050
    assert audio.samples.shape == (22050,) and audio.samples.dtype == np.float32
    assert audio.source_seconds == pytest.approx(1.0)
    assert audio.padded_samples == 0 and audio.flags == ()
    assert dominant_frequency(audio.samples, 22050) == pytest.approx(440, abs=2)
    # The channels are averaged: amplitude (0.8 + 0.4) / 2, away from the resampler's edges.
    middle = audio.samples[1000:-1000]
    assert np.abs(middle).max() == pytest.approx(0.6, abs=0.01)
    expected = tone(440, 1.0, 22050, amplitude=0.6)[1000:-1000]
    np.testing.assert_allclose(middle, expected, atol=0.01)


def test_channels_in_antiphase_average_to_silence(tmp_path):
    path = tmp_path / "antiphase.wav"
    left = tone(300, 0.5, 22050)
    sf.write(path, np.stack([left, -left], axis=1), 22050, subtype="FLOAT")
    audio = load_audio(path, duration=0.5)
    assert np.abs(audio.samples).max() < 1e-6
    assert "silent" in audio.flags


@pytest.mark.parametrize("suffix, subtype", [(".wav", "PCM_16"), (".au", "PCM_16"),
                                             (".flac", "PCM_16"), (".wav", "FLOAT")])
def test_lossless_formats_read_exactly(tmp_path, suffix, subtype):
    path = tmp_path / f"clip{suffix}"
    signal = noise(0.5, DEFAULT_SR)
    sf.write(path, signal, DEFAULT_SR, subtype=subtype)

    audio = load_audio(path, duration=0.5)
    tolerance = 1e-6 if subtype == "FLOAT" else 1 / 2 ** 15
    np.testing.assert_allclose(audio.samples, signal, atol=tolerance)


@pytest.mark.parametrize("suffix, fmt", [(".ogg", "OGG"), (".mp3", "MP3")])
def test_lossy_formats_keep_pitch(tmp_path, suffix, fmt):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    path = tmp_path / f"tone{suffix}"
    sf.write(path, tone(660, 1.0, 44100), 44100, format=fmt)
    audio = load_audio(path, duration=1.0)
    assert audio.samples.shape == (DEFAULT_SR,)
    assert dominant_frequency(audio.samples, DEFAULT_SR) == pytest.approx(660, abs=3)


@pytest.mark.parametrize("seconds, expected_flags", [
    (0.3, ("padded", "short")),
    (0.8, ("padded",)),
    (1.0, ()),
])
def test_padding_amount_and_flags(tmp_path, seconds, expected_flags):
    path = tmp_path / "clip.wav"
    signal = noise(seconds, DEFAULT_SR)
    sf.write(path, signal, DEFAULT_SR, subtype="FLOAT")

    audio = load_audio(path, duration=1.0)

    assert audio.samples.shape == (DEFAULT_SR,)
    assert audio.padded_samples == DEFAULT_SR - len(signal)
    assert audio.flags == expected_flags
    assert audio.source_seconds == pytest.approx(seconds)
    np.testing.assert_allclose(audio.samples[:len(signal)], signal, atol=1e-6)
    assert not audio.samples[len(signal):].any()


def test_short_fraction_moves_the_short_threshold(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, noise(0.8, DEFAULT_SR), DEFAULT_SR)
    assert "short" not in load_audio(path, duration=1.0).flags
    assert "short" in load_audio(path, duration=1.0, short_fraction=0.9).flags


def test_long_file_is_cut_without_decoding_all_of_it(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    signal = noise(10.0, 8000)
    sf.write(path, signal, 8000, subtype="FLOAT")
    requested = []
    original_read = sf.SoundFile.read

    def spy_read(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return original_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy_read)
    audio = load_audio(path, sr=8000, duration=2.0)

    assert audio.samples.shape == (16000,)
    assert audio.padded_samples == 0 and audio.flags == ()
    assert audio.source_seconds == pytest.approx(10.0)
    np.testing.assert_allclose(audio.samples, signal[:16000], atol=1e-6)
    assert requested and all(0 < frames < 3 * 8000 for frames in requested)


@pytest.mark.parametrize("seconds", [0.3, 7.5])
@pytest.mark.parametrize("fallback", [False, True])
def test_duration_none_keeps_the_whole_file(tmp_path, monkeypatch, seconds, fallback):
    path = tmp_path / "whole.wav"
    signal = noise(seconds, 16000, channels=2)
    # 16-bit PCM: the stdlib wave reader behind audioread's fallback reads nothing else.
    sf.write(path, signal, 16000, subtype="PCM_16")
    if fallback:
        class RefusingSoundFile(sf.SoundFile):
            def __init__(self, *args, **kwargs):
                raise sf.SoundFileRuntimeError("simulated: libsndfile cannot read this")

        monkeypatch.setattr(sf, "SoundFile", RefusingSoundFile)

    audio = load_audio(path, sr=8000, duration=None, short_fraction=1.0)

    # Whole, mono and resampled: neither cut nor padded, and never "short" or "padded".
    assert audio.samples.shape == (round(seconds * 8000),) and audio.samples.dtype == np.float32
    assert audio.padded_samples == 0 and audio.flags == ()
    assert audio.source_seconds == pytest.approx(seconds)
    at_source_rate = load_audio(path, sr=16000, duration=None)
    np.testing.assert_allclose(at_source_rate.samples, signal.mean(axis=1), atol=2 / 2 ** 15)


def test_duration_none_still_flags_silence_and_refuses_bad_files(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(4000), 8000)
    assert load_audio(path, sr=8000, duration=None).flags == ("silent",)
    broken = tmp_path / "broken.wav"
    broken.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioLoadError, match="broken.wav"):
        load_audio(broken, duration=None)


def write_truncated_header(path):
    sf.write(path, noise(0.5, 8000), 8000)
    path.write_bytes(path.read_bytes()[:12])  # shorter than the WAV (44) and AU (24) headers


BROKEN_FILES = {
    "garbage": lambda p: p.write_bytes(np.random.default_rng(RNG_SEED).bytes(4096)),
    "text": lambda p: p.write_text("this is not audio\n" * 50),
    "truncated_header": write_truncated_header,
    "empty": lambda p: p.write_bytes(b""),
    "header_only": lambda p: sf.write(p, np.zeros(0), 8000),
    "missing": lambda p: None,
    "folder": lambda p: p.mkdir(),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
@pytest.mark.parametrize("suffix", [".wav", ".au"])
def test_undecodable_file_raises_naming_it(tmp_path, kind, suffix):
    path = tmp_path / f"{kind}{suffix}"
    BROKEN_FILES[kind](path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AudioLoadError) as info:
            load_audio(path, duration=1.0)
    assert str(path) in str(info.value)
    assert "Hint" in str(info.value)
    # librosa's audioread fallback warns (FutureWarning, UserWarning, DeprecationWarning).
    assert decoder_warnings(caught) == []


def test_non_finite_samples_raise(tmp_path):
    path = tmp_path / "nan.wav"
    signal = noise(0.2, 8000)
    signal[100] = np.nan
    sf.write(path, signal, 8000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="NaN"):
        load_audio(path, sr=8000, duration=0.2)


def test_audioread_fallback_is_used_quietly_when_soundfile_fails(tmp_path, monkeypatch):
    path = tmp_path / "clip.wav"
    signal = noise(0.5, 8000, channels=2)
    sf.write(path, signal, 8000, subtype="PCM_16")

    class RefusingSoundFile(sf.SoundFile):
        def __init__(self, *args, **kwargs):
            raise sf.SoundFileRuntimeError("simulated: libsndfile cannot read this")

    # Patching the module attribute also makes librosa's own soundfile attempt fail.
    monkeypatch.setattr(sf, "SoundFile", RefusingSoundFile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        audio = load_audio(path, sr=8000, duration=0.5)

    assert decoder_warnings(caught) == []
    assert audio.source_seconds == pytest.approx(0.5)
    np.testing.assert_allclose(audio.samples, signal.mean(axis=1), atol=2 / 2 ** 15)


@pytest.mark.parametrize("amplitude_db, silent", [(None, True), (-80.0, True), (-40.0, False)])
def test_silence_flag(tmp_path, amplitude_db, silent):
    path = tmp_path / "quiet.wav"
    amplitude = 0.0 if amplitude_db is None else 10 ** (amplitude_db / 20)
    sf.write(path, noise(0.5, 8000, amplitude=amplitude), 8000, subtype="FLOAT")
    audio = load_audio(path, sr=8000, duration=0.5)
    assert ("silent" in audio.flags) is silent
    assert audio.flags == (("silent",) if silent else ())


def test_silence_threshold_is_configurable(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, noise(0.5, 8000, amplitude=10 ** (-40 / 20)), 8000, subtype="FLOAT")
    assert "silent" in load_audio(path, sr=8000, duration=0.5, silence_db=-30.0).flags


@pytest.mark.parametrize("settings, named", [
    ({"sr": 0}, "0"), ({"sr": -22050}, "-22050"), ({"sr": 22050.5}, "22050.5"),
    ({"sr": float("nan")}, "nan"), ({"duration": 0}, "0"), ({"duration": -1.0}, "-1.0"),
    ({"duration": float("inf")}, "inf"), ({"short_fraction": 1.5}, "1.5"),
    ({"silence_db": 6.0}, "6.0"),
])
def test_invalid_settings_raise_value_error(tmp_path, settings, named):
    path = tmp_path / "clip.wav"
    sf.write(path, noise(0.1, 8000), 8000)
    (name,) = settings
    with pytest.raises(ValueError, match=rf"{name} .*got {named}"):
        load_audio(path, **settings)


@pytest.mark.parametrize("length, n_samples, padded", [(10, 4, 0), (4, 10, 6), (7, 7, 0), (0, 3, 3)])
def test_fit_length(length, n_samples, padded):
    samples = np.arange(1, length + 1, dtype=np.float32)
    fitted, got_padded = fit_length(samples, n_samples)
    assert fitted.shape == (n_samples,) and fitted.dtype == np.float32
    assert got_padded == padded
    kept = min(length, n_samples)
    np.testing.assert_array_equal(fitted[:kept], samples[:kept])
    assert not fitted[kept:].any()


def test_fit_length_works_on_the_last_axis():
    fitted, padded = fit_length(np.ones((2, 3), dtype=np.float32), 5)
    assert fitted.shape == (2, 5) and padded == 2
    np.testing.assert_array_equal(fitted[:, 3:], 0)


@pytest.mark.parametrize("n_samples", [-1, 2.5, True])
def test_fit_length_rejects_bad_length(n_samples):
    with pytest.raises(ValueError, match=str(n_samples)):
        fit_length(np.ones(3), n_samples)
