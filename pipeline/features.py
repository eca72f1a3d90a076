"""Per-clip audio features computed by the cache-build workers.

Every feature is an object with the same small interface (:class:`Feature`):
call it on a mono float waveform ``(n_samples,)`` and it returns a float32,
C-contiguous array of shape ``output_shape(n_samples)`` -- ``(n_bins, frames)``
for spectrogram-like features, ``(n_samples,)`` for the raw waveform.

All framed features use centred frames (``frames = 1 + n_samples // hop_length``)
with zero padding, and their log scales are absolute (``ref=1.0``, no
``top_db`` clipping), so a frame's value depends only on the audio under its
window: the feature of a crop equals the matching slice of the feature of the
whole clip, away from the crop's edges.  Random crops of cached features are
therefore the features of random crops of audio.

Example
-------
>>> import numpy as np
>>> feature = build_feature("mel", n_mels=64)
>>> x = np.zeros(22050, dtype=np.float32)
>>> feature(x).shape == feature.output_shape(22050) == (64, 44)
True
"""

from __future__ import annotations

import librosa
import numpy as np

from common.kinds import SPECTROGRAM, WAVEFORM
from pipeline.checks import check_int, check_names, check_number, parse_names

# librosa.feature.delta's default window; the delta orders need at least this many frames.
DELTA_WIDTH = 9


def _check_stft(sr: int, n_fft, hop_length) -> tuple[int, int]:
    """Validate the framing shared by the STFT-based features."""
    n_fft = check_int("n_fft", n_fft, minimum=1)
    hop_length = check_int("hop_length", hop_length, minimum=1)
    if hop_length > n_fft:
        raise ValueError(
            f"hop_length ({hop_length}) must be <= n_fft ({n_fft}), or samples between frames are skipped"
        )
    return n_fft, hop_length


def _check_mel_bands(sr: int, n_fft: int, n_mels, fmin, fmax) -> tuple[int, float, float | None]:
    """Validate the mel filter bank settings (fmax None means sr / 2)."""
    n_mels = check_int("n_mels", n_mels, minimum=1)
    if n_mels > n_fft // 2 + 1:
        raise ValueError(
            f"n_mels ({n_mels}) must be <= n_fft // 2 + 1 ({n_fft // 2 + 1}); raise n_fft or lower n_mels"
        )
    fmin = check_number("fmin", fmin, low=0.0)
    if fmax is not None:
        fmax = check_number("fmax", fmax, low=0.0, low_open=True)
        if fmax > sr / 2:
            raise ValueError(f"fmax ({fmax}) must be <= sr / 2 ({sr / 2}), or None for sr / 2")
    if fmin >= (sr / 2 if fmax is None else fmax):
        raise ValueError(f"fmin ({fmin}) must be below fmax ({fmax if fmax is not None else sr / 2})")
    return n_mels, fmin, fmax


def check_waveform(samples: np.ndarray) -> np.ndarray:
    """Check a mono waveform and return it as contiguous float32 ``(n_samples,)``.

    Raises ValueError for a wrong shape or dtype, an empty clip, or NaN/inf.

    >>> check_waveform(np.zeros(4, dtype=np.float64)).dtype
    dtype('float32')
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"samples must be mono with shape (n_samples,), got shape {samples.shape}; mix down first")
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"samples must be floating point in [-1, 1], got dtype {samples.dtype}")
    if samples.size == 0:
        raise ValueError("samples is empty; the clip decoded to zero samples")
    if not np.isfinite(samples).all():
        raise ValueError("samples contains NaN or infinity; check the decoder output")
    return np.ascontiguousarray(samples, dtype=np.float32)


class Feature:
    """Common interface of every feature.

    Subclasses set ``name``, ``kind`` and ``DEFAULTS`` (their settings without
    ``sr``), validate their settings in ``__init__`` and implement ``_compute``.

    Attributes
    ----------
    name : str
        Registry name (key of :data:`FEATURES`).
    kind : str
        :data:`common.kinds.SPECTROGRAM` (output ``(n_bins, frames)``) or
        :data:`common.kinds.WAVEFORM` (output ``(n_samples,)``).
    sr : int
        Sample rate the input must have.
    settings : dict
        Every setting including defaults and ``sr``; JSON-serialisable, and
        ``build_feature(name, **settings)`` rebuilds the same feature.  Two
        features of the same name are the same iff their settings are equal.
    frames_per_second : float
        Output frames per second of audio (``sr / hop_length``; ``sr`` for
        the waveform).
    """

    name: str = ""
    kind: str = SPECTROGRAM
    DEFAULTS: dict = {}

    def __init__(self, *, sr: int = 22050):
        self.sr = check_int("sr", sr, minimum=1)
        self.settings: dict = {"sr": self.sr}

    @property
    def frames_per_second(self) -> float:
        return self.sr / self.settings["hop_length"]

    def n_bins(self) -> int:
        """Number of rows of the output (spectrogram kinds only)."""
        raise NotImplementedError

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        """Shape of ``self(samples)`` for a clip of ``n_samples`` samples."""
        n_samples = check_int("n_samples", n_samples, minimum=1)
        return (self.n_bins(), 1 + n_samples // self.settings["hop_length"])

    def _compute(self, samples: np.ndarray, shared: dict) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, samples: np.ndarray, *, shared: dict | None = None) -> np.ndarray:
        """Compute the feature of one clip.

        Parameters
        ----------
        samples : np.ndarray, shape (n_samples,)
            Mono waveform at ``self.sr`` (float, nominally in [-1, 1]).

        Returns
        -------
        np.ndarray
            float32, C-contiguous, shape ``self.output_shape(n_samples)``.
        """
        samples = check_waveform(samples)
        return np.ascontiguousarray(self._compute(samples, {} if shared is None else shared),
                                    dtype=np.float32)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({args})"


class LogMel(Feature):
    """Log-power mel spectrogram, shape ``(n_mels, frames)``, in dB re 1.0.

    ``power_to_db(S, ref=1.0, amin=1e-10, top_db=None)``: absolute, not
    relative to the clip's maximum and not clipped, so the floor is -100 dB
    and every frame depends only on its own window.  Slaney mel filters
    (librosa's default), Hann window, zero-padded centred frames.
    """

    name = "mel"
    DEFAULTS = {"n_fft": 2048, "hop_length": 512, "n_mels": 128, "fmin": 0.0, "fmax": None}

    def __init__(self, *, sr=22050, n_fft=2048, hop_length=512, n_mels=128, fmin=0.0, fmax=None):
        super().__init__(sr=sr)
        n_fft, hop_length = _check_stft(self.sr, n_fft, hop_length)
        n_mels, fmin, fmax = _check_mel_bands(self.sr, n_fft, n_mels, fmin, fmax)
        self.settings.update(n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmin=fmin, fmax=fmax)

    def n_bins(self) -> int:
        return self.settings["n_mels"]

    def _log_mel(self, samples: np.ndarray, shared: dict) -> np.ndarray:
        s = self.settings
        # mel and mfcc of one clip with equal settings share this spectrogram (compute_features).
        key = ("log_mel", self.sr, s["n_fft"], s["hop_length"], s["n_mels"], s["fmin"], s["fmax"])
        if key not in shared:
            shared[key] = self._compute_log_mel(samples)
        return shared[key]

    def _compute_log_mel(self, samples: np.ndarray) -> np.ndarray:
        s = self.settings
        power = librosa.feature.melspectrogram(
            y=samples, sr=self.sr, n_fft=s["n_fft"], hop_length=s["hop_length"], n_mels=s["n_mels"],
            fmin=s["fmin"], fmax=s["fmax"], center=True, pad_mode="constant", power=2.0,
        )
        return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)

    def _compute(self, samples: np.ndarray, shared: dict) -> np.ndarray:
        return self._log_mel(samples, shared)


class MFCC(LogMel):
    """MFCCs of the :class:`LogMel` spectrogram, shape ``(n_mfcc * (1 + deltas), frames)``.

    ``librosa.feature.mfcc(S=log_mel, n_mfcc=...)`` (DCT-II, orthonormal, no
    liftering).  ``deltas`` = 1 or 2 stacks ``librosa.feature.delta`` of order
    1 (and 2) under the coefficients; deltas use a 9-frame window, so they need
    clips of at least ``(9 - 1) * hop_length`` samples.
    """

    name = "mfcc"
    DEFAULTS = {**LogMel.DEFAULTS, "n_mfcc": 20, "deltas": 0}

    def __init__(self, *, sr=22050, n_fft=2048, hop_length=512, n_mels=128, fmin=0.0, fmax=None,
                 n_mfcc=20, deltas=0):
        super().__init__(sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmin=fmin, fmax=fmax)
        n_mfcc = check_int("n_mfcc", n_mfcc, minimum=1)
        if n_mfcc > self.settings["n_mels"]:
            raise ValueError(f"n_mfcc ({n_mfcc}) must be <= n_mels ({self.settings['n_mels']})")
        deltas = check_int("deltas", deltas, minimum=0)
        if deltas > 2:
            raise ValueError(f"deltas must be 0, 1 or 2 (orders of librosa.feature.delta to stack), got {deltas}")
        self.settings.update(n_mfcc=n_mfcc, deltas=deltas)

    def n_bins(self) -> int:
        return self.settings["n_mfcc"] * (1 + self.settings["deltas"])

    def _compute(self, samples: np.ndarray, shared: dict) -> np.ndarray:
        s = self.settings
        mfcc = librosa.feature.mfcc(S=self._log_mel(samples, shared), n_mfcc=s["n_mfcc"])
        if s["deltas"] == 0:
            return mfcc
        if mfcc.shape[1] < DELTA_WIDTH:
            raise ValueError(
                f"clip of {samples.size} samples gives {mfcc.shape[1]} frames, fewer than the "
                f"{DELTA_WIDTH} that MFCC deltas need; use clips of at least "
                f"{(DELTA_WIDTH - 1) * s['hop_length']} samples or deltas=0"
            )
        orders = [librosa.feature.delta(mfcc, order=k, width=DELTA_WIDTH) for k in range(1, s["deltas"] + 1)]
        return np.concatenate([mfcc, *orders], axis=0)


class Chroma(Feature):
    """STFT chromagram, shape ``(n_chroma, frames)``, each frame max-normalised.

    ``librosa.feature.chroma_stft``.  ``tuning`` defaults to 0.0 (A440) rather
    than librosa's per-clip estimate (None): the estimate costs ~4x the
    chromagram itself and makes every frame depend on the whole clip.  Pass
    ``tuning=None`` to estimate it anyway.
    """

    name = "chroma"
    DEFAULTS = {"n_fft": 2048, "hop_length": 512, "n_chroma": 12, "tuning": 0.0}

    def __init__(self, *, sr=22050, n_fft=2048, hop_length=512, n_chroma=12, tuning=0.0):
        super().__init__(sr=sr)
        n_fft, hop_length = _check_stft(self.sr, n_fft, hop_length)
        n_chroma = check_int("n_chroma", n_chroma, minimum=1)
        if tuning is not None:
            tuning = check_number("tuning", tuning)
            if not -0.5 <= tuning < 0.5:
                raise ValueError(f"tuning must be in [-0.5, 0.5) (fractions of a bin) or None, got {tuning}")
        self.settings.update(n_fft=n_fft, hop_length=hop_length, n_chroma=n_chroma, tuning=tuning)

    def n_bins(self) -> int:
        return self.settings["n_chroma"]

    def _compute(self, samples: np.ndarray, shared: dict) -> np.ndarray:
        s = self.settings
        return librosa.feature.chroma_stft(
            y=samples, sr=self.sr, n_fft=s["n_fft"], hop_length=s["hop_length"], n_chroma=s["n_chroma"],
            tuning=s["tuning"], center=True, pad_mode="constant",
        )


class CQT(Feature):
    """Log-magnitude constant-Q transform, shape ``(n_bins, frames)``, in dB re 1.0.

    ``amplitude_to_db(|librosa.cqt(...)|, ref=1.0, amin=1e-5, top_db=None)``:
    amin 1e-5 in amplitude is 1e-10 in power, the same -100 dB floor as
    :class:`LogMel`; absolute and unclipped for the same reason.  ``fmin``
    defaults to C1 (``librosa.note_to_hz('C1')``, ~32.7 Hz); tuning is fixed
    at 0 (librosa's default for ``cqt``).
    """

    name = "cqt"
    DEFAULTS = {"hop_length": 512, "fmin": float(librosa.note_to_hz("C1")), "n_bins": 84, "bins_per_octave": 12}

    def __init__(self, *, sr=22050, hop_length=512, fmin=DEFAULTS["fmin"], n_bins=84, bins_per_octave=12):
        super().__init__(sr=sr)
        hop_length = check_int("hop_length", hop_length, minimum=1)
        fmin = check_number("fmin", fmin, low=0.0, low_open=True)
        n_bins = check_int("n_bins", n_bins, minimum=1)
        bins_per_octave = check_int("bins_per_octave", bins_per_octave, minimum=1)
        self._check_below_nyquist(fmin, n_bins, bins_per_octave)
        self.settings.update(hop_length=hop_length, fmin=fmin, n_bins=n_bins, bins_per_octave=bins_per_octave)

    def _check_below_nyquist(self, fmin: float, n_bins: int, bins_per_octave: int) -> None:
        # Same test librosa.cqt makes at call time, moved to construction so a
        # bad setting fails before any worker starts.
        freqs = librosa.cqt_frequencies(n_bins=n_bins, fmin=fmin, bins_per_octave=bins_per_octave)
        ratio = 2.0 ** (2.0 / bins_per_octave)
        alpha = (ratio - 1) / (ratio + 1)  # relative bandwidth of equal-tempered bins
        _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=self.sr, alpha=alpha)
        if cutoff > self.sr / 2:
            raise ValueError(
                f"cqt filters reach {cutoff:.0f} Hz, above the Nyquist frequency {self.sr / 2:.0f} Hz "
                f"(fmin={fmin}, n_bins={n_bins}, bins_per_octave={bins_per_octave}); lower n_bins or fmin"
            )

    def n_bins(self) -> int:
        return self.settings["n_bins"]

    def _compute(self, samples: np.ndarray, shared: dict) -> np.ndarray:
        s = self.settings
        magnitude = np.abs(librosa.cqt(
            samples, sr=self.sr, hop_length=s["hop_length"], fmin=s["fmin"], n_bins=s["n_bins"],
            bins_per_octave=s["bins_per_octave"], tuning=0.0,
        ))
        return librosa.amplitude_to_db(magnitude, ref=1.0, amin=1e-5, top_db=None)


class Waveform(Feature):
    """The raw waveform itself, shape ``(n_samples,)`` (a float32 copy)."""

    name = "wave"
    kind = WAVEFORM
    DEFAULTS = {}

    @property
    def frames_per_second(self) -> float:
        return float(self.sr)

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        return (check_int("n_samples", n_samples, minimum=1),)

    def _compute(self, samples: np.ndarray, shared: dict) -> np.ndarray:
        return samples.copy()


FEATURES = {"mel": LogMel, "mfcc": MFCC, "chroma": Chroma, "cqt": CQT, "wave": Waveform}


def _feature_class(name: str) -> type[Feature]:
    check_names([name], choices=tuple(FEATURES), what="feature")
    return FEATURES[name]


def feature_settings_defaults(name: str) -> dict:
    """Default settings of feature ``name``, including ``sr``.

    >>> feature_settings_defaults("chroma")
    {'sr': 22050, 'n_fft': 2048, 'hop_length': 512, 'n_chroma': 12, 'tuning': 0.0}
    """
    return {"sr": 22050, **_feature_class(name).DEFAULTS}


def build_feature(name: str, *, sr: int = 22050, **settings) -> Feature:
    """Build the feature registered as ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`FEATURES`.
    sr : int
        Sample rate of the audio the feature will receive.
    **settings
        Overrides of :func:`feature_settings_defaults`; an unknown setting or
        an invalid value raises ValueError naming it.

    >>> build_feature("mfcc", deltas=1).output_shape(22050 * 30)
    (40, 1292)
    """
    cls = _feature_class(name)
    unknown = sorted(set(settings) - set(cls.DEFAULTS))
    if unknown:
        known = ", ".join(["sr", *cls.DEFAULTS])
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for feature {name!r}; its settings are: {known}")
    return cls(sr=sr, **settings)


def compute_features(features: dict[str, Feature], samples: np.ndarray) -> dict[str, np.ndarray]:
    """Every feature of one clip, sharing work between them.

    ``mel`` and ``mfcc`` with equal STFT and mel settings compute the log-mel once.

    >>> feats = {n: build_feature(n) for n in ("mel", "mfcc")}
    >>> out = compute_features(feats, np.zeros(22050, dtype=np.float32))
    >>> out["mel"].shape, out["mfcc"].shape
    ((128, 44), (20, 44))
    """
    shared: dict = {}
    return {name: feature(samples, shared=shared) for name, feature in features.items()}


def parse_feature_names(text: str) -> list[str]:
    """Split a comma-separated list of feature names (:func:`pipeline.checks.parse_names`).

    >>> parse_feature_names("mel, mfcc")
    ['mel', 'mfcc']
    """
    return parse_names(text, choices=tuple(FEATURES), what="feature")
