"""Audio loading: any file soundfile or librosa can read -> mono float32 at one rate.

Clips are cut or zero-padded to a fixed length (the cache build), or kept whole
(``duration=None``, for prediction on files of any length).

soundfile (libsndfile: wav, au, flac, ogg, mp3, ...) is tried first and reads only
the frames needed; librosa's audioread fallback covers what libsndfile cannot
(e.g. m4a where ffmpeg is installed). Every decoding failure becomes an
`AudioLoadError` naming the file: a broken clip is never silently turned into zeros.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import audioread
import librosa
import numpy as np
import soundfile as sf

from common.errors import UserError

DEFAULT_SR = 22050
DEFAULT_DURATION = 30.0

RESAMPLE_TYPE = "soxr_hq"
# Native frames decoded beyond the target duration, so the resampler sees real
# signal (not an artificial end) at the cut and rounding never pads a full clip.
_MARGIN_SECONDS = 0.05

_HINT = ("Hint: check that the file is a complete audio file (try playing it); "
         "re-download or re-convert it, or remove it from the split list.")


class AudioLoadError(UserError, RuntimeError):
    """An audio file could not be read; the message names the file and the reason.

    A :class:`~common.errors.UserError` (the file is missing or damaged), and still a
    RuntimeError for callers that catch it as one.
    """


@dataclass(frozen=True)
class Audio:
    """A decoded clip, cut or zero-padded to a fixed length (or whole).

    Attributes
    ----------
    samples : np.ndarray
        ``(n_samples,)`` float32 mono, ``n_samples == round(duration * sr)``; the
        whole resampled file when loaded with ``duration=None``.
    sr : int
        Sample rate of ``samples``.
    source_seconds : float
        Length of the source audio before cut/pad. For a file longer than the
        requested duration this is the length its header reports, since only
        the needed part is decoded.
    padded_samples : int
        Zeros appended at the end.
    flags : tuple of str
        Subset of ``("padded", "short", "silent")``.
    """

    samples: np.ndarray
    sr: int
    source_seconds: float
    padded_samples: int
    flags: tuple[str, ...]


def fit_length(samples: np.ndarray, n_samples: int) -> tuple[np.ndarray, int]:
    """Cut or zero-pad ``samples`` at the end to ``n_samples`` along the last axis.

    Parameters
    ----------
    samples : np.ndarray
        ``(..., n)`` signal.
    n_samples : int
        Wanted length, >= 0.

    Returns
    -------
    samples : np.ndarray
        ``(..., n_samples)``, same dtype.
    padded : int
        Number of zeros appended (0 when cut or already the right length).

    Examples
    --------
    >>> y, padded = fit_length(np.ones(3, dtype=np.float32), 5)
    >>> y.tolist(), padded
    ([1.0, 1.0, 1.0, 0.0, 0.0], 2)
    """
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 0:
        raise ValueError(f"n_samples must be a non-negative integer, got {n_samples!r}")
    n_samples = int(n_samples)
    samples = np.asarray(samples)
    padded = max(0, n_samples - samples.shape[-1])
    return librosa.util.fix_length(samples, size=n_samples, axis=-1), padded


def load_audio(path, *, sr=DEFAULT_SR, duration=DEFAULT_DURATION, short_fraction=0.5,
               silence_db=-60.0) -> Audio:
    """Load ``duration`` seconds of a file (or all of it) as mono float32 at ``sr``.

    Channels are averaged, the audio is resampled with soxr (``RESAMPLE_TYPE``)
    and cut or zero-padded at the end to ``round(duration * sr)`` samples. Only
    about ``duration`` seconds are decoded, however long the file. With
    ``duration=None`` the whole file is decoded and kept, neither cut nor padded.

    Parameters
    ----------
    path : str or Path
        Any format soundfile or librosa can read (wav, au, flac, ogg, mp3, ...).
    sr : int
        Output sample rate, > 0.
    duration : float or None
        Output length in seconds, > 0; None keeps the whole file.
    short_fraction : float
        Flag ``"short"`` when the source is shorter than ``short_fraction * duration``
        (never with ``duration=None``: there is no wanted length to fall short of).
    silence_db : float
        Flag ``"silent"`` when the peak amplitude is below this level in dBFS.

    Returns
    -------
    Audio

    Raises
    ------
    AudioLoadError
        If the file is missing, empty, undecodable, has no samples or non-finite samples.
    UserError
        If a setting is out of range (a ValueError, as before).

    Examples
    --------
    >>> import tempfile, soundfile as sf
    >>> path = Path(tempfile.mkdtemp()) / "tone.wav"
    >>> t = np.arange(44100) / 44100
    >>> sf.write(path, np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1), 44100)
    >>> audio = load_audio(path, sr=22050, duration=2.0)
    >>> audio.samples.shape, audio.padded_samples, audio.flags
    ((44100,), 22050, ('padded',))
    >>> load_audio(path, sr=22050, duration=None).samples.shape
    (22050,)
    """
    sr, duration = _check_settings(sr=sr, duration=duration, short_fraction=short_fraction,
                                   silence_db=silence_db)
    path = Path(path)
    if not path.is_file():
        reason = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise AudioLoadError(f"cannot load audio {path}: the file {reason}. "
                             "Hint: check the path and the dataset root.")
    if path.stat().st_size == 0:
        raise AudioLoadError(f"cannot load audio {path}: the file is empty (0 bytes). {_HINT}")

    max_seconds = None if duration is None else duration + _MARGIN_SECONDS
    channels, native_sr, source_seconds = _decode(path, max_seconds=max_seconds)
    if channels.shape[-1] == 0:
        raise AudioLoadError(f"cannot load audio {path}: it contains no audio samples. {_HINT}")
    if not np.isfinite(channels).all():
        raise AudioLoadError(f"cannot load audio {path}: it contains NaN or infinite samples. {_HINT}")

    mono = librosa.to_mono(channels)
    if native_sr != sr:
        mono = librosa.resample(mono, orig_sr=native_sr, target_sr=sr, res_type=RESAMPLE_TYPE)
    samples, padded = mono.astype(np.float32, copy=False), 0
    if duration is not None:
        samples, padded = fit_length(samples, round(duration * sr))
    flags = _flags(samples, padded=padded, source_seconds=source_seconds, duration=duration,
                   short_fraction=short_fraction, silence_db=silence_db)
    return Audio(samples=np.ascontiguousarray(samples), sr=sr, source_seconds=source_seconds,
                 padded_samples=padded, flags=flags)


def _check_settings(*, sr, duration, short_fraction, silence_db) -> tuple[int, float | None]:
    """Validated ``(sr, duration)``; a UserError (a ValueError) naming the bad value otherwise."""
    if isinstance(sr, bool) or not isinstance(sr, (int, float, np.number)) \
            or not math.isfinite(sr) or sr <= 0 or int(sr) != sr:
        raise UserError(f"sr must be a positive integer sample rate in Hz, got {sr!r}")
    if duration is not None and (isinstance(duration, bool)
                                 or not isinstance(duration, (int, float, np.number))
                                 or not math.isfinite(duration) or duration <= 0):
        raise UserError(f"duration must be a positive number of seconds (or None for the whole "
                        f"file), got {duration!r}")
    if not 0 <= short_fraction <= 1:
        raise UserError(f"short_fraction must be between 0 and 1, got {short_fraction!r}")
    if not (math.isfinite(silence_db) and silence_db <= 0):
        raise UserError(f"silence_db must be a finite level in dBFS (<= 0), got {silence_db!r}")
    return int(sr), None if duration is None else float(duration)


def _decode(path: Path, *, max_seconds: float | None) -> tuple[np.ndarray, int, float]:
    """``(channels (n_channels, n), native sr, source seconds)``, at most ``max_seconds``
    decoded (all of the file when None)."""
    try:
        return _decode_soundfile(path, max_seconds=max_seconds)
    except sf.SoundFileError as exc:
        sf_error = exc
    try:
        return _decode_fallback(path, max_seconds=max_seconds)
    # audioread's backends fail in their own ways on bad input (DecodeError, but also
    # EOFError, struct.error or AssertionError from the stdlib readers): any failure
    # here means the file is unreadable, and the cause stays chained.
    except Exception as exc:  # noqa: BLE001
        reason = str(exc) or type(exc).__name__
        raise AudioLoadError(f"cannot load audio {path}: not a readable audio file "
                             f"(soundfile: {sf_error}; audioread: {reason}). {_HINT}") from exc


def _decode_soundfile(path: Path, *, max_seconds: float | None) -> tuple[np.ndarray, int, float]:
    with sf.SoundFile(path) as f:
        if f.format == "RAW":
            # libsndfile opens a header-less file named *.au/*.snd as raw u-law, which
            # would turn any garbage into "audio"; we never ask for raw input.
            raise sf.SoundFileRuntimeError(f"no audio header recognised in {path.name}")
        native_sr, header_frames = f.samplerate, f.frames
        if max_seconds is None:
            # Read to the end, however many frames the header claims.
            channels = f.read(dtype="float32", always_2d=True).T
            return channels, native_sr, channels.shape[-1] / native_sr
        wanted = math.ceil(max_seconds * native_sr)
        channels = f.read(frames=min(wanted, header_frames), dtype="float32", always_2d=True).T
    got = channels.shape[-1]
    # A truncated file holds fewer frames than its header says: trust what decoded.
    frames = header_frames if got >= wanted else got
    return channels, native_sr, frames / native_sr


def _decode_fallback(path: Path, *, max_seconds: float | None) -> tuple[np.ndarray, int, float]:
    """Decode with audioread through librosa (ffmpeg, GStreamer, ... where installed)."""
    with warnings.catch_warnings():
        # librosa warns on every call that its audioread path is deprecated, and
        # audioread's first use imports stdlib modules deprecated since Python 3.11
        # (aifc, audioop, sunau); the outcome is reported by us instead.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # An open reader (not the path) makes librosa skip its own soundfile attempt,
        # which would accept what _decode_soundfile refused (header-less raw data).
        reader = audioread.audio_open(str(path))
        source_seconds = float(reader.duration)
        channels, native_sr = librosa.load(reader, sr=None, mono=False, duration=max_seconds,
                                           dtype=np.float32)
    channels = np.atleast_2d(channels)
    # librosa stops at int(max_seconds * sr); fewer samples mean the file ended first, and
    # a whole-file read is its own length, whatever the header said.
    if max_seconds is None or channels.shape[-1] < int(max_seconds * native_sr):
        source_seconds = channels.shape[-1] / native_sr
    return channels, int(native_sr), source_seconds


def _flags(samples: np.ndarray, *, padded: int, source_seconds: float, duration: float | None,
           short_fraction: float, silence_db: float) -> tuple[str, ...]:
    flags = []
    if padded:
        flags.append("padded")
    if duration is not None and source_seconds < short_fraction * duration:
        flags.append("short")
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak < 10.0 ** (silence_db / 20.0):
        flags.append("silent")
    return tuple(flags)
