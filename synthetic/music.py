"""The music synthesiser behind the demo data set: instruments, drums, parts and genre styles.

Each genre has its own tempo range, drum pattern, instruments (harmonic wavetables
with genre-typical brightness and envelopes, distortion for metal, pads for
classical, ...) and chord progressions in a random key. Per-clip randomness (key,
tempo, mix levels, recording colour, noise, loudness and a chance of borrowing one
part from another genre) makes the classes overlap, so the set is learnable but not
trivially separable.

>>> y = synthesize_clip("jazz", seconds=1.0, sr=22050, rng=np.random.default_rng(0))
>>> y.shape
(22050,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import signal

from pipeline.checks import is_int, is_real

GENRES = ("classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae")

_TABLE_SIZE = 2048
MIN_SR = 8000

# --------------------------------------------------------------------------
# Instruments: harmonic wavetables with an amplitude envelope
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Instrument:
    """Timbre and envelope of a pitched instrument.

    Harmonic ``h`` has amplitude ``h ** -rolloff`` (even harmonics times
    ``even``), optionally shaped by vowel formants.  ``bright_decay`` > 0
    makes the sound darker as a note decays (plucked strings, pianos).
    Times are in seconds; ``vibrato`` is ``(rate_hz, relative_depth)``.
    """

    rolloff: float
    n_harmonics: int
    attack: float
    decay: float
    sustain: float
    release: float
    even: float = 1.0
    bright_decay: float = 0.0
    vibrato: tuple[float, float] = (0.0, 0.0)
    detune: float = 0.0
    formants: bool = False


INSTRUMENTS = {
    "strings": Instrument(1.0, 24, 0.25, 1.0, 0.9, 0.5, vibrato=(5.5, 0.004), detune=0.004),
    "cello": Instrument(1.1, 24, 0.15, 1.0, 0.85, 0.4, vibrato=(5.0, 0.004), detune=0.003),
    "violin": Instrument(0.9, 30, 0.07, 0.5, 0.85, 0.25, vibrato=(6.0, 0.007)),
    "acoustic": Instrument(1.1, 30, 0.003, 0.7, 0.0, 0.15, bright_decay=0.15),
    "pick_bass": Instrument(1.5, 14, 0.005, 0.5, 0.3, 0.08, bright_decay=0.2),
    "synth_bass": Instrument(0.9, 20, 0.004, 0.15, 0.5, 0.05, bright_decay=0.08),
    "sub808": Instrument(3.0, 4, 0.004, 1.2, 0.4, 0.25),
    "upright": Instrument(2.0, 10, 0.01, 0.35, 0.25, 0.1, bright_decay=0.12),
    "round_bass": Instrument(2.8, 6, 0.01, 0.8, 0.6, 0.1),
    "power_guitar": Instrument(1.2, 20, 0.003, 0.3, 0.7, 0.05),
    "dist_bass": Instrument(1.4, 14, 0.004, 0.3, 0.7, 0.05),
    "muted_guitar": Instrument(1.0, 24, 0.002, 0.06, 0.0, 0.03, bright_decay=0.03),
    "epiano": Instrument(2.2, 8, 0.005, 1.2, 0.2, 0.3, bright_decay=0.3),
    "piano": Instrument(1.4, 20, 0.003, 0.8, 0.1, 0.25, bright_decay=0.25),
    "bright_piano": Instrument(1.0, 30, 0.002, 0.6, 0.1, 0.2, bright_decay=0.35),
    "synth_pad": Instrument(1.1, 24, 0.08, 0.6, 0.8, 0.2, detune=0.008),
    "skank_guitar": Instrument(0.9, 30, 0.002, 0.08, 0.0, 0.04, bright_decay=0.05),
    "organ": Instrument(1.6, 12, 0.01, 1.0, 1.0, 0.05, even=0.4),
    "fiddle": Instrument(0.8, 30, 0.04, 0.4, 0.8, 0.15, vibrato=(6.0, 0.009)),
    "sax": Instrument(0.9, 24, 0.03, 0.4, 0.8, 0.1, vibrato=(5.0, 0.004), formants=True),
    "vox": Instrument(0.7, 40, 0.04, 0.4, 0.8, 0.12, vibrato=(5.5, 0.006), formants=True),
    "vox_rap": Instrument(0.7, 40, 0.01, 0.1, 0.6, 0.05, formants=True),
    "lead_guitar": Instrument(1.0, 24, 0.005, 0.6, 0.7, 0.1, vibrato=(6.0, 0.01)),
    "square_lead": Instrument(1.0, 20, 0.01, 0.3, 0.7, 0.08, even=0.05),
}

# Formant frequencies (Hz) of a few vowels; sung/rapped notes and the sax
# pick one per note, which gives voice-like spectral envelopes.
VOWELS = {
    "a": (800.0, 1200.0, 2500.0),
    "e": (400.0, 2000.0, 2600.0),
    "i": (300.0, 2300.0, 3000.0),
    "o": (500.0, 900.0, 2400.0),
    "u": (350.0, 800.0, 2300.0),
}


def build_instrument(name: str) -> Instrument:
    """Return the registered instrument ``name``.

    Examples
    --------
    >>> build_instrument("piano").attack
    0.003
    """
    try:
        return INSTRUMENTS[name]
    except KeyError:
        raise ValueError(f"unknown instrument {name!r}; choose one of {sorted(INSTRUMENTS)}") from None


def _jitter_instrument(inst: Instrument, rng: np.random.Generator) -> Instrument:
    """Vary one instrument per clip so that the same timbre never repeats exactly."""
    return replace(
        inst,
        rolloff=max(0.4, inst.rolloff + rng.uniform(-0.3, 0.3)),
        decay=inst.decay * rng.uniform(0.7, 1.4),
        attack=inst.attack * rng.uniform(0.7, 1.4),
        sustain=float(np.clip(inst.sustain + rng.uniform(-0.1, 0.1), 0.0, 1.0)),
    )


def _harmonic_table(amps: np.ndarray) -> np.ndarray:
    """One period of ``sum_h amps[h-1] * sin(2 pi h x)`` and its slopes, shape ``(2, _TABLE_SIZE)``."""
    spec = np.zeros(_TABLE_SIZE // 2 + 1, dtype=complex)
    spec[1 : len(amps) + 1] = -1j * amps * (_TABLE_SIZE / 2)
    table = np.fft.irfft(spec, n=_TABLE_SIZE)
    table /= max(np.max(np.abs(table)), 1e-9)
    return np.stack([table, np.roll(table, -1) - table]).astype(np.float32)


def _lookup(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Linearly interpolated wavetable read at ``phase`` (cycles, >= 0).

    Integer indexing with a bit mask is several times faster than
    ``np.interp`` plus a modulo, which matters for 30 s clips.
    """
    pos = phase * _TABLE_SIZE
    idx = pos.astype(np.int64)
    frac = (pos - idx).astype(np.float32)
    idx &= _TABLE_SIZE - 1
    return table[0].take(idx) + frac * table[1].take(idx)


def _harmonic_amps(inst: Instrument, f0: float, sr: int, *, dark: bool, vowel: str | None) -> np.ndarray:
    """Harmonic amplitudes for a note at ``f0`` Hz, band-limited below Nyquist."""
    n = max(1, min(inst.n_harmonics, int(0.45 * sr / f0)))
    h = np.arange(1, n + 1, dtype=float)
    rolloff = inst.rolloff + (1.2 if dark else 0.0)
    amps = h**-rolloff
    amps[1::2] *= inst.even
    if vowel is not None:
        freqs = h * f0
        gain = np.full(n, 0.03)
        for k, formant in enumerate(VOWELS[vowel]):
            # Resonances as Gaussians in log-frequency; higher formants weaker.
            gain += (0.5**k) * np.exp(-0.5 * (np.log(freqs / formant) / 0.18) ** 2)
        amps = amps * gain
    return amps


class _Renderer:
    """Renders note lists for one clip, caching wavetables per (instrument, pitch)."""

    def __init__(self, n: int, sr: int):
        self.n = n
        self.sr = sr
        self._tables: dict[tuple, np.ndarray] = {}

    def _table(self, inst: Instrument, f0: float, *, dark: bool, vowel: str | None) -> np.ndarray:
        key = (inst, round(f0, 2), dark, vowel)
        if key not in self._tables:
            self._tables[key] = _harmonic_table(_harmonic_amps(inst, f0, self.sr, dark=dark, vowel=vowel))
        return self._tables[key]

    def render(self, notes, inst: Instrument, rng: np.random.Generator) -> np.ndarray:
        """Sum of all ``notes`` (onset_s, dur_s, midi, velocity), shape ``(n,)``."""
        out = np.zeros(self.n, dtype=np.float32)
        sr = self.sr
        vowels = list(VOWELS)
        for onset, dur, midi, vel in notes:
            start = int(round(onset * sr))
            stop = min(self.n, start + int((dur + inst.release) * sr))
            first = max(0, start)
            if stop <= first or vel <= 0:
                continue
            f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
            t = np.arange(first - start, stop - start) / sr
            t32 = t.astype(np.float32)
            # Phase stays float64: tens of thousands of cycles need the precision.
            phase = f0 * t + rng.random()
            rate, depth = inst.vibrato
            if depth > 0:
                phase += f0 * depth * (1.0 - np.cos(2 * np.pi * rate * t)) / (2 * np.pi * rate)
            vowel = vowels[rng.integers(len(vowels))] if inst.formants else None
            table = self._table(inst, f0, dark=False, vowel=vowel)
            wave = _lookup(table, phase)
            if inst.detune > 0:
                wave += _lookup(table, phase * (1.0 + inst.detune))
                wave *= 0.5
            if inst.bright_decay > 0:
                dark = _lookup(self._table(inst, f0, dark=True, vowel=vowel), phase)
                wave = dark + (wave - dark) * np.exp(t32 * (-1.0 / inst.bright_decay))
            out[first:stop] += (vel * wave) * _envelope(t32, dur, inst)
        return out


def _envelope(t: np.ndarray, dur: float, inst: Instrument) -> np.ndarray:
    """Attack-decay-sustain-release gain at times ``t`` (s, float32) since the onset."""
    env = inst.sustain + (1.0 - inst.sustain) * np.exp(t * (-1.0 / inst.decay))
    n_attack = int(np.searchsorted(t, inst.attack))
    env[:n_attack] *= t[:n_attack] * (1.0 / inst.attack)
    n_held = int(np.searchsorted(t, dur, side="right"))
    env[n_held:] *= np.exp((t[n_held:] - dur) * (-5.0 / inst.release))
    return env


# --------------------------------------------------------------------------
# Drums: one-shots from noise bursts and decaying sines
# --------------------------------------------------------------------------

KITS = {
    # kick: (start Hz, end Hz, decay s, click); snare: (tone Hz, tone decay,
    # noise decay, noise high-pass Hz, noise mix); hats/cymbals: (decay s, high-pass Hz).
    "acoustic": dict(kick=(110, 50, 0.25, 0.3), snare=(190, 0.06, 0.15, 1500, 0.7),
                     hat=(0.04, 7000), open_hat=(0.25, 6000), ride=(0.8, 4000), crash=(1.5, 3000)),
    "electronic": dict(kick=(150, 45, 0.3, 0.2), snare=(220, 0.05, 0.12, 2000, 0.8),
                       hat=(0.03, 8000), open_hat=(0.3, 7000), ride=(0.6, 5000), crash=(1.2, 3500)),
    "808": dict(kick=(80, 38, 0.7, 0.1), snare=(180, 0.08, 0.2, 1200, 0.6),
                hat=(0.05, 6000), open_hat=(0.3, 5000), ride=(0.6, 4000), crash=(1.2, 3000)),
    "jazz": dict(kick=(90, 55, 0.2, 0.1), snare=(230, 0.04, 0.1, 2500, 0.9),
                 hat=(0.06, 6000), open_hat=(0.3, 5000), ride=(1.2, 3000), crash=(1.6, 2500)),
    "metal": dict(kick=(160, 55, 0.12, 0.8), snare=(210, 0.05, 0.18, 1200, 0.7),
                  hat=(0.04, 7000), open_hat=(0.3, 6000), ride=(0.7, 4000), crash=(1.8, 2500)),
    "reggae": dict(kick=(100, 48, 0.35, 0.2), snare=(420, 0.03, 0.05, 3000, 0.3),
                   hat=(0.04, 7000), open_hat=(0.2, 6000), ride=(0.6, 4000), crash=(1.2, 3000)),
}


DRUMS = ("kick", "snare", "hat", "open_hat", "ride", "crash", "clap")


def build_kit(name: str, *, sr: int, rng: np.random.Generator, drums=DRUMS) -> dict[str, list[np.ndarray]]:
    """Synthesise the one-shots ``drums`` of kit ``name``: drum -> two variants, each ``(samples,)``.

    Examples
    --------
    >>> kit = build_kit("acoustic", sr=22050, rng=np.random.default_rng(0), drums=("kick", "hat"))
    >>> sorted(kit), kit["kick"][0].ndim
    (['hat', 'kick'], 1)
    """
    if name not in KITS:
        raise ValueError(f"unknown drum kit {name!r}; choose one of {sorted(KITS)}")
    p = KITS[name]

    def vary(x: float) -> float:  # per-clip tuning, so no two clips share a kit exactly
        return x * rng.uniform(0.8, 1.25)

    kick, snare = p["kick"], p["snare"]
    k_params = (vary(kick[0]), vary(kick[1]), vary(kick[2]), kick[3])
    s_params = (vary(snare[0]), snare[1], vary(snare[2]), vary(snare[3]), snare[4])
    kit = {}
    for drum in drums:
        variants = []
        for _ in range(2):
            if drum == "kick":
                variants.append(_kick(*k_params, sr=sr, rng=rng))
            elif drum == "snare":
                variants.append(_snare(*s_params, sr=sr, rng=rng))
            elif drum == "clap":
                variants.append(_clap(sr=sr, rng=rng))
            else:
                decay, cutoff = p[drum]
                variants.append(_cymbal(vary(decay), cutoff, metallic=drum in ("ride", "crash"), sr=sr, rng=rng))
        kit[drum] = variants
    return kit


def _noise_burst(seconds: float, decay: float, *, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(seconds * sr)) / sr
    return t, rng.standard_normal(t.size) * np.exp(-t / decay)


def _filter(x: np.ndarray, cutoff, btype: str, *, sr: int, order: int = 2) -> np.ndarray:
    """Butterworth filter; cutoffs (Hz, a pair for "bandpass") are clamped below Nyquist for low sample rates."""
    cutoff = np.clip(cutoff, 20.0, 0.45 * sr)
    sos = signal.butter(order, cutoff, btype=btype, fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def _kick(f_start, f_end, decay, click, *, sr, rng):
    t = np.arange(int(min(4 * decay, 2.0) * sr)) / sr
    freq = f_end + (f_start - f_end) * np.exp(-t / 0.03)
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / decay) * _fade_out(t)
    noise = rng.standard_normal(t.size) * np.exp(-t / 0.004)
    return body + click * noise


def _fade_out(t: np.ndarray) -> np.ndarray:
    """Gain that ramps to zero over the last 50 ms, so truncated one-shots do not click."""
    return np.minimum(1.0, (t[-1] - t) / 0.05) if t.size else t


def _snare(tone, tone_decay, noise_decay, hp, mix, *, sr, rng):
    t, noise = _noise_burst(6 * noise_decay, noise_decay, sr=sr, rng=rng)
    body = np.sin(2 * np.pi * tone * t) * np.exp(-t / tone_decay)
    return (1 - mix) * body + mix * _filter(noise, hp, "highpass", sr=sr)


def _clap(*, sr, rng):
    t, noise = _noise_burst(0.25, 0.06, sr=sr, rng=rng)
    # A clap is a few quick bursts: gate the noise with three short spikes.
    gate = np.zeros_like(t)
    for delay in (0.0, 0.011, 0.023):
        gate += np.exp(-np.clip(t - delay, 0, None) / 0.004) * (t >= delay)
    return _filter(noise * np.maximum(gate, np.exp(-t / 0.06)), 1200, "highpass", sr=sr)


def _cymbal(decay, cutoff, *, metallic, sr, rng):
    # Capped length with a short fade keeps long crashes cheap without a click.
    t, noise = _noise_burst(min(4 * decay, 2.0), decay, sr=sr, rng=rng)
    noise *= _fade_out(t)
    out = _filter(noise, cutoff, "highpass", sr=sr)
    if metallic:
        # Inharmonic partials give rides and crashes their pitched shimmer.
        partials = rng.uniform(3000, min(9000, 0.45 * sr), size=4)
        t32 = t.astype(np.float32)  # float32 sines: half the cost, ample precision for 2.5 s
        ring = sum(np.sin((2 * np.pi * f) * t32) for f in partials)
        out = out + 0.075 * ring * np.exp(-t / decay)
    return out


# Drum patterns: drum -> (positions in beats within a 4/4 bar, velocity).
DRUM_PATTERNS = {
    "none": {},
    "train": {"kick": ([0, 2], 1.0), "snare": ([1, 3], 0.9),
              "hat": ([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5], 0.5)},
    "four_floor": {"kick": ([0, 1, 2, 3], 1.0), "clap": ([1, 3], 0.8),
                   "open_hat": ([0.5, 1.5, 2.5, 3.5], 0.6),
                   "hat": ([0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75], 0.35)},
    "boom_bap": {"kick": ([0, 0.75, 2.5], 1.0), "snare": ([1, 3], 1.0),
                 "hat": ([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5], 0.45)},
    "swing": {"ride": ([0, 1, 1 + 2 / 3, 2, 3, 3 + 2 / 3], 0.55), "hat": ([1, 3], 0.4),
              "kick": ([0, 1, 2, 3], 0.15)},
    "metal": {"kick": ([i / 4 for i in range(16)], 0.9), "snare": ([1, 3], 1.0),
              "ride": ([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5], 0.4)},
    "rock": {"kick": ([0, 1.5, 2], 1.0), "snare": ([1, 3], 1.0),
             "hat": ([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5], 0.55)},
    "pop": {"kick": ([0, 1.5, 2, 2.75], 1.0), "clap": ([1, 3], 0.8), "snare": ([1, 3], 0.5),
            "hat": ([i / 4 for i in range(16)], 0.3)},
    "one_drop": {"kick": ([2], 1.0), "snare": ([2], 0.8),
                 "hat": ([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5], 0.4)},
}


# --------------------------------------------------------------------------
# Harmony and the song timeline
# --------------------------------------------------------------------------

SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
}


@dataclass
class _Song:
    """Timing and harmony shared by all parts of one clip."""

    sr: int
    n: int
    beat: float  # seconds per beat
    offset: float  # seconds of the first bar cut off (excerpts start mid-song)
    n_beats: int
    swing: float  # 0.5 = straight; 0.67 = triplet swing
    swing_unit: float  # beats; 0.5 swings 8ths, 0.25 swings 16ths
    jitter: float  # seconds of human timing error (std)
    key: int  # pitch class of the tonic
    scale: tuple[int, ...]
    chords: list[tuple[float, float, list[int]]]  # (start beat, length beats, semitones above key)
    power: bool  # power chords (root-fifth-octave) instead of scale triads

    def times(self, beats, rng: np.random.Generator) -> np.ndarray:
        """Absolute beat positions -> seconds, with swing and human jitter."""
        beats = np.asarray(beats, dtype=float)
        units = beats / self.swing_unit
        offbeat = (np.abs(units - np.round(units)) < 1e-6) & (np.round(units).astype(int) % 2 == 1)
        shifted = beats + offbeat * (self.swing - 0.5) * 2 * self.swing_unit
        return shifted * self.beat - self.offset + rng.normal(0.0, self.jitter, beats.shape)


def _chord_tones(scale: tuple[int, ...], degree: int, n_tones: int) -> list[int]:
    """Semitones above the key of a chord stacked in thirds on scale ``degree``."""
    return [scale[(degree + 2 * k) % 7] + 12 * ((degree + 2 * k) // 7) for k in range(n_tones)]


def _voice(semitones, key: int, low: int) -> list[int]:
    """Place each chord tone in the octave ``[low, low + 12)`` (MIDI)."""
    return sorted(low + (key + s - low) % 12 for s in semitones)


def _root(chord, key: int, low: int) -> int:
    return low + (key + chord[0] - low) % 12


# --------------------------------------------------------------------------
# Parts: note generators for bass, chords and lead
# --------------------------------------------------------------------------


def _tile(positions, length: float) -> list[float]:
    """One-bar ``positions`` (beats) repeated every 4 beats across a chord of ``length`` beats."""
    return [bar + pos for bar in range(0, int(math.ceil(length)), 4) for pos in positions if bar + pos < length]


def _notes(song, rng, beats, durs, midis, vels):
    onsets = song.times(beats, rng)
    return [(o, d * song.beat, m, v) for o, d, m, v in zip(onsets, durs, midis, vels)]


def _bass_sustain(song, rng):
    """Chord roots held for the whole chord (cellos, pads)."""
    b, d, m, v = [], [], [], []
    for start, length, chord in song.chords:
        b.append(start), d.append(length), m.append(_root(chord, song.key, 36)), v.append(0.8)
    return _notes(song, rng, b, d, m, v)


def _bass_pattern(positions, intervals, dur, *, low=36):
    """Bass on fixed beat positions inside each chord; ``intervals`` above the root."""

    def part(song, rng):
        b, d, m, v = [], [], [], []
        for start, length, chord in song.chords:
            root = _root(chord, song.key, low)
            for i, pos in enumerate(_tile(positions, length)):
                step = intervals[i % len(intervals)]
                b.append(start + pos), d.append(dur), m.append(root + step)
                v.append(rng.uniform(0.7, 1.0))
        return _notes(song, rng, b, d, m, v)

    return part


def _bass_walking(song, rng):
    """Quarter-note walking line: root on the downbeat, chromatic approach at the end."""
    b, d, m, v = [], [], [], []
    chords = song.chords
    for ci, (start, length, chord) in enumerate(chords):
        root = _root(chord, song.key, 36)
        nxt = _root(chords[(ci + 1) % len(chords)][2], song.key, 36)
        for k in range(int(length)):
            if k == 0:
                pitch = root
            elif k == int(length) - 1:
                pitch = nxt + rng.choice([-1, 1])
            else:
                pitch = root + rng.choice([3, 4, 5, 7, 9, 10, 12])
            b.append(start + k), d.append(0.9), m.append(pitch), v.append(rng.uniform(0.7, 1.0))
    return _notes(song, rng, b, d, m, v)


def _bass_reggae(song, rng):
    """Melodic bass that drops out on beat one and syncopates around the root."""
    b, d, m, v = [], [], [], []
    for start, length, chord in song.chords:
        root = _root(chord, song.key, 33)
        for pos in _tile((0.5, 1.0, 1.5, 2.5, 3.0, 3.5), length):
            if rng.random() < 0.8:
                b.append(start + pos), d.append(0.45), m.append(root + rng.choice([0, 0, 7, 12, 3, 5]))
                v.append(rng.uniform(0.7, 1.0))
    return _notes(song, rng, b, d, m, v)


def _chords_at(positions, dur, *, low=55, strum=0.0, vel=(0.6, 0.9), prob=1.0):
    """Whole chord voiced from ``low`` at fixed beat positions inside each chord."""

    def part(song, rng):
        out = []
        for start, length, chord in song.chords:
            pitches = _chord_pitches(song, chord, low)
            for pos in _tile(positions, length):
                if rng.random() > prob:
                    continue
                when = song.times([start + pos], rng)[0]
                velocity = rng.uniform(*vel)
                for i, pitch in enumerate(pitches):
                    out.append((when + i * strum, dur * song.beat, pitch, velocity))
        return out

    return part


def _chord_pitches(song, chord, low):
    if song.power:
        root = _root(chord, song.key, low - 12)
        return [root, root + 7, root + 12]
    return _voice(chord, song.key, low)


def _chords_sustain(low=55):
    def part(song, rng):
        out = []
        for start, length, chord in song.chords:
            when = song.times([start], rng)[0]
            for pitch in _chord_pitches(song, chord, low):
                out.append((when, length * song.beat, pitch, 0.6))
        return out

    return part


def _chords_jazz(song, rng):
    """Sparse syncopated comping (Charleston-like) with four-note voicings."""
    out = []
    for start, length, chord in song.chords:
        pitches = _voice(chord, song.key, 52)
        for pos in _tile((0.0, 1.5, 2.5, 3.0), length):
            if rng.random() < 0.55:
                when = song.times([start + pos], rng)[0]
                dur = rng.choice([0.4, 0.9, 1.4]) * song.beat
                vel = rng.uniform(0.4, 0.8)
                out.extend((when, dur, p, vel) for p in pitches)
    return out


def _melody(durations, *, low, high, rest=0.15, scale_steps=(-2, -1, -1, 1, 1, 2), pentatonic=False):
    """Random-walk melody over the key's scale with the given note lengths (beats)."""

    def part(song, rng):
        if pentatonic:
            scale = (0, 2, 4, 7, 9) if 4 in song.scale else (0, 3, 5, 7, 10)
        else:
            scale = song.scale
        pitches = [song.key + s + 12 * o for o in range(-1, 11) for s in scale]
        pitches = [p for p in sorted(pitches) if low <= p <= high]
        idx = len(pitches) // 2
        beat = 0.5 * float(rng.integers(0, 4))
        b, d, m, v = [], [], [], []
        while beat < song.n_beats:
            dur = float(rng.choice(durations))
            if rng.random() > rest:
                idx = int(np.clip(idx + rng.choice(scale_steps), 0, len(pitches) - 1))
                b.append(beat), d.append(dur * 0.95), m.append(pitches[idx]), v.append(rng.uniform(0.6, 1.0))
            beat += dur
        return _notes(song, rng, b, d, m, v)

    return part


def _rap(song, rng):
    """Spoken syllables on 16ths in a narrow pitch range, phrased in bars."""
    centre = 48 + rng.integers(0, 8)
    b, d, m, v = [], [], [], []
    for bar in range(song.n_beats // 4):
        if rng.random() < 0.25:  # breathing room between lines
            continue
        for step in range(16):
            if rng.random() < 0.65:
                b.append(bar * 4 + step / 4), d.append(rng.uniform(0.12, 0.22))
                m.append(centre + rng.normal(0, 1.5)), v.append(rng.uniform(0.5, 1.0))
    return _notes(song, rng, b, d, m, v)


@dataclass(frozen=True)
class Part:
    """A note generator, the instrument that plays it and its bus effects."""

    notes: object  # callable (song, rng) -> list of (onset_s, dur_s, midi, velocity)
    instrument: str
    level_db: float = 0.0
    drive: float = 0.0  # tanh distortion gain; 0 = clean
    lowpass: float = 0.0  # Hz; 0 = none


PARTS = {
    # bass lines
    "cello_roots": Part(_bass_sustain, "cello", -4),
    "root_fifth": Part(_bass_pattern([0, 2], [0, 7], 0.9), "pick_bass", -3),
    "disco_octaves": Part(_bass_pattern([i / 2 for i in range(8)], [0, 12], 0.4), "synth_bass", -2),
    "sub_808": Part(_bass_pattern([0, 0.75, 2.5], [0, 0, -2], 1.5, low=28), "sub808", 0, lowpass=400),
    "walking": Part(_bass_walking, "upright", -3),
    "metal_bass": Part(_bass_pattern([i / 2 for i in range(8)], [0], 0.45, low=28), "dist_bass", -3, drive=4),
    "pop_bass": Part(_bass_pattern([i / 2 for i in range(8)], [0, 0, 0, 12], 0.45), "synth_bass", -4),
    "reggae_bass": Part(_bass_reggae, "round_bass", 2),
    # chords
    "string_pad": Part(_chords_sustain(55), "strings", 0),
    "strum": Part(_chords_at([1, 3, 1.5, 3.5], 0.5, low=52, strum=0.012), "acoustic", -2),
    "disco_stabs": Part(_chords_at([0.5, 1.5, 2.5, 3.5, 0.75, 2.75], 0.2, low=60), "muted_guitar", -4),
    "rhodes": Part(_chords_at([0, 2.5], 1.8, low=55), "epiano", -3, lowpass=2500),
    "jazz_comp": Part(_chords_jazz, "piano", -2),
    "power_chug": Part(_chords_at([i / 4 for i in range(16)], 0.22, low=52, prob=0.8), "power_guitar", 1, drive=12,
                       lowpass=5000),
    "pop_keys": Part(_chords_at([0, 1, 2, 2.5, 3], 0.9, low=57), "bright_piano", -2),
    "synth_pad": Part(_chords_sustain(57), "synth_pad", -4),
    "skank": Part(_chords_at([1, 3], 0.18, low=60), "skank_guitar", -3),
    "organ_bubble": Part(_chords_at([0.5, 0.75, 1.5, 1.75, 2.5, 2.75, 3.5, 3.75], 0.15, low=55), "organ", -6),
    # leads
    "violin_line": Part(_melody([1, 2, 0.5, 1.5, 3], low=67, high=91, rest=0.05), "violin", -4),
    "fiddle": Part(_melody([0.5, 0.5, 1, 0.25], low=64, high=88, pentatonic=True), "fiddle", -6),
    "string_line": Part(_melody([2, 4, 1], low=72, high=91, rest=0.1), "strings", -6),
    "rap": Part(_rap, "vox_rap", -2),
    "sax": Part(_melody([0.5, 0.5, 0.5, 1, 1.5], low=58, high=82, rest=0.25), "sax", -4),
    "shred": Part(_melody([0.25, 0.25, 0.5, 1], low=64, high=88, rest=0.1, pentatonic=True), "lead_guitar", -5,
                  drive=8, lowpass=6000),
    "sung": Part(_melody([0.5, 1, 1, 1.5, 2], low=60, high=79, rest=0.2, pentatonic=True), "vox", -3),
    "melodica": Part(_melody([0.5, 1, 1.5], low=67, high=86, rest=0.3), "square_lead", -7),
}


def build_part(name: str) -> Part:
    """Return the registered part ``name`` (generator + instrument + effects).

    Examples
    --------
    >>> build_part("walking").instrument
    'upright'
    """
    try:
        return PARTS[name]
    except KeyError:
        raise ValueError(f"unknown part {name!r}; choose one of {sorted(PARTS)}") from None


# --------------------------------------------------------------------------
# Genre styles
# --------------------------------------------------------------------------

# Per role, a list of part names to draw from ("none" = role silent).
# progressions are scale degrees (0 = tonic); chord_beats is the harmonic rhythm.
GENRE_STYLES = {
    "classical": dict(
        tempo=(60, 110), swing=(0.5, 0.5), swing_unit=0.5, scales=("major", "harmonic_minor"),
        progressions=((0, 3, 4, 0), (0, 5, 1, 4), (0, 4, 5, 3, 0, 1, 4, 0), (5, 1, 4, 0)),
        chord_beats=(4, 8), n_tones=(3, 4), power=False, drums=("none",), kit="acoustic",
        bass=("cello_roots",), comp=("string_pad",), lead=("violin_line", "string_line", "none"),
        reverb=(1.5, 2.8, 0.25, 0.45), loudness=(-28.0, -18.0), jitter=0.0),
    "country": dict(
        tempo=(85, 140), swing=(0.5, 0.56), swing_unit=0.5, scales=("major", "mixolydian"),
        progressions=((0, 3, 0, 4), (0, 4, 3, 0), (0, 0, 3, 4)),
        chord_beats=(4, 8), n_tones=(3,), power=False, drums=("train", "rock"), kit="acoustic",
        bass=("root_fifth",), comp=("strum",), lead=("fiddle", "sung", "none"),
        reverb=(0.4, 1.0, 0.1, 0.25), loudness=(-22.0, -14.0), jitter=0.008),
    "disco": dict(
        tempo=(110, 132), swing=(0.5, 0.52), swing_unit=0.25, scales=("dorian", "minor", "major"),
        progressions=((0, 3), (0, 6, 5, 4), (1, 4, 0, 5)),
        chord_beats=(4, 8), n_tones=(4,), power=False, drums=("four_floor",), kit="electronic",
        bass=("disco_octaves",), comp=("disco_stabs", "synth_pad"), lead=("string_line", "sung", "none"),
        reverb=(0.5, 1.2, 0.1, 0.25), loudness=(-18.0, -11.0), jitter=0.003),
    "hiphop": dict(
        tempo=(78, 100), swing=(0.54, 0.64), swing_unit=0.25, scales=("minor", "dorian"),
        progressions=((0, 5), (0, 5, 3, 4), (0, 3)),
        chord_beats=(4, 8), n_tones=(4, 5), power=False, drums=("boom_bap",), kit="808",
        bass=("sub_808",), comp=("rhodes",), lead=("rap", "rap", "none"),
        reverb=(0.3, 0.8, 0.05, 0.2), loudness=(-18.0, -11.0), jitter=0.006),
    "jazz": dict(
        tempo=(100, 220), swing=(0.6, 0.67), swing_unit=0.5, scales=("major", "dorian"),
        progressions=((1, 4, 0, 5), (1, 4, 0, 0), (0, 5, 1, 4)),
        chord_beats=(2, 4), n_tones=(4,), power=False, drums=("swing",), kit="jazz",
        bass=("walking",), comp=("jazz_comp",), lead=("sax", "none"),
        reverb=(0.8, 1.6, 0.15, 0.35), loudness=(-26.0, -17.0), jitter=0.01),
    "metal": dict(
        tempo=(90, 200), swing=(0.5, 0.5), swing_unit=0.5, scales=("minor", "phrygian"),
        progressions=((0, 5, 6, 0), (0, 1, 0, 6), (0, 3, 5, 4)),
        chord_beats=(4, 8), n_tones=(3,), power=True, drums=("metal", "rock"), kit="metal",
        bass=("metal_bass",), comp=("power_chug",), lead=("shred", "none", "none"),
        reverb=(0.4, 1.0, 0.05, 0.2), loudness=(-16.0, -9.0), jitter=0.003),
    "pop": dict(
        tempo=(90, 130), swing=(0.5, 0.53), swing_unit=0.25, scales=("major",),
        progressions=((0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4)),
        chord_beats=(4,), n_tones=(3, 4), power=False, drums=("pop", "four_floor"), kit="electronic",
        bass=("pop_bass",), comp=("pop_keys", "synth_pad"), lead=("sung",),
        reverb=(0.5, 1.2, 0.1, 0.3), loudness=(-18.0, -11.0), jitter=0.003),
    "reggae": dict(
        tempo=(62, 92), swing=(0.5, 0.6), swing_unit=0.5, scales=("major", "minor"),
        progressions=((0, 3), (0, 4), (0, 3, 4, 3), (0, 6)),
        chord_beats=(4, 8), n_tones=(3,), power=False, drums=("one_drop",), kit="reggae",
        bass=("reggae_bass",), comp=("skank", "organ_bubble"), lead=("melodica", "none", "none"),
        reverb=(0.5, 1.3, 0.1, 0.3), loudness=(-22.0, -13.0), jitter=0.006),
}

ROLES = ("drums", "bass", "comp", "lead")
# Chance that one role of a clip is borrowed from another genre, and that a
# role (other than comp) falls silent.  They make the classes overlap.
P_BORROW = 0.12
P_SILENT = 0.05


def build_style(name: str) -> dict:
    """Return the style of genre ``name`` (tempo range, parts, harmony...).

    Examples
    --------
    >>> build_style("disco")["drums"]
    ('four_floor',)
    """
    try:
        return GENRE_STYLES[name]
    except KeyError:
        raise ValueError(f"unknown genre {name!r}; choose one of {list(GENRES)}") from None


# --------------------------------------------------------------------------
# Clip synthesis
# --------------------------------------------------------------------------


def _make_song(style: dict, *, seconds: float, sr: int, rng: np.random.Generator) -> _Song:
    tempo = rng.uniform(*style["tempo"])
    beat = 60.0 / tempo
    offset = rng.uniform(0, 4 * beat)
    n_beats = int(math.ceil((seconds + offset) / beat)) + 4
    n_beats += -n_beats % 4
    scale = SCALES[rng.choice(style["scales"])]
    progression = style["progressions"][rng.integers(len(style["progressions"]))]
    chord_beats = float(rng.choice(style["chord_beats"]))
    n_tones = int(rng.choice(style["n_tones"]))
    chords, start, i = [], 0.0, 0
    while start < n_beats:
        chords.append((start, chord_beats, _chord_tones(scale, progression[i % len(progression)], n_tones)))
        start += chord_beats
        i += 1
    return _Song(sr=sr, n=int(round(seconds * sr)), beat=beat, offset=offset, n_beats=n_beats,
                 swing=rng.uniform(*style["swing"]), swing_unit=style["swing_unit"], jitter=style["jitter"],
                 key=int(rng.integers(12)), scale=scale, chords=chords, power=style["power"])


def _pick_parts(genre: str, rng: np.random.Generator) -> dict[str, str]:
    """Choose the part for each role, sometimes borrowed from another genre or dropped."""
    style = build_style(genre)
    others = [g for g in GENRES if g != genre]
    choice = {}
    for role in ROLES:
        source = style
        if rng.random() < P_BORROW:
            source = GENRE_STYLES[others[rng.integers(len(others))]]
        options = source[role]
        choice[role] = options[rng.integers(len(options))]
        if role != "comp" and rng.random() < P_SILENT:
            choice[role] = "none"
    return choice


# Patterns that mark every eighth bar with a crash cymbal.
_CRASH_PATTERNS = ("metal", "rock", "pop", "four_floor", "train")


def _drum_bus(song: _Song, pattern: str, kit_name: str, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(song.n)
    hits = DRUM_PATTERNS[pattern]
    if not hits:
        return out
    crashes = pattern in _CRASH_PATTERNS
    kit = build_kit(kit_name, sr=song.sr, rng=rng, drums=sorted({*hits, "snare", *(["crash"] if crashes else [])}))
    for bar in range(song.n_beats // 4):
        fill = bar % 4 == 3 and rng.random() < 0.5
        for drum, (positions, vel) in hits.items():
            beats = [bar * 4 + p for p in positions if not (fill and p >= 3)]
            for when in song.times(beats, rng):
                _add(out, kit[drum][rng.integers(2)], when, vel * rng.uniform(0.75, 1.0), song.sr)
        if fill:
            for when in song.times([bar * 4 + 3 + k / 4 for k in range(4)], rng):
                _add(out, kit["snare"][rng.integers(2)], when, rng.uniform(0.5, 0.9), song.sr)
        if bar % 8 == 0 and crashes:
            _add(out, kit["crash"][0], song.times([bar * 4], rng)[0], 0.5, song.sr)
    return out


def _add(out: np.ndarray, shot: np.ndarray, when: float, gain: float, sr: int) -> None:
    start = int(round(when * sr))
    a, b = max(start, 0), min(start + shot.size, out.size)
    if b > a:
        out[a:b] += gain * shot[a - start : b - start]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def _apply_bus(x: np.ndarray, part: Part, sr: int, rng: np.random.Generator) -> np.ndarray:
    if part.drive > 0:
        peak = max(np.max(np.abs(x)), 1e-9)
        x = np.tanh(part.drive * rng.uniform(0.7, 1.4) * x / peak)
    if part.lowpass > 0:
        x = _filter(x, part.lowpass * rng.uniform(0.8, 1.25), "lowpass", sr=sr)
    return x


def _reverb(x: np.ndarray, rt60: float, wet: float, *, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Convolve with exponentially decaying noise (a cheap room)."""
    t = np.arange(int(min(rt60, 2.0) * sr)) / sr
    ir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
    ir = _filter(ir, 5000, "lowpass", sr=sr)
    ir /= np.sqrt(np.sum(ir**2))
    # float32 halves the FFT cost; the tail is far below 16-bit resolution anyway.
    tail = signal.oaconvolve(x.astype(np.float32), ir.astype(np.float32))[: x.size]
    return (1 - wet) * x + wet * tail


def synthesize_clip(genre: str, *, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Synthesise one clip of ``genre``.

    Parameters
    ----------
    genre : str
        One of ``GENRES``.
    seconds : float
        Clip length; the result has ``round(seconds * sr)`` samples.
    sr : int
        Sample rate in Hz (at least 8000).
    rng : numpy.random.Generator
        Source of all randomness; the same generator state gives the same clip.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_samples,)``, float32, peak below 1.

    Examples
    --------
    >>> y = synthesize_clip("jazz", seconds=1.0, sr=22050, rng=np.random.default_rng(0))
    >>> y.shape, y.dtype
    ((22050,), dtype('float32'))
    """
    style = build_style(genre)
    check_clip_args(seconds, sr)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    sr = int(sr)
    song = _make_song(style, seconds=seconds, sr=sr, rng=rng)
    choice = _pick_parts(genre, rng)
    renderer = _Renderer(song.n, sr)

    buses = []
    if choice["drums"] != "none":
        buses.append((_drum_bus(song, choice["drums"], style["kit"], rng), -1.0))
    for role in ("bass", "comp", "lead"):
        if choice[role] == "none":
            continue
        part = build_part(choice[role])
        inst = _jitter_instrument(build_instrument(part.instrument), rng)
        bus = _apply_bus(renderer.render(part.notes(song, rng), inst, rng), part, sr, rng)
        buses.append((bus, part.level_db))

    mix = np.zeros(song.n)
    for bus, level_db in buses:
        rms = _rms(bus)
        if rms > 0:
            mix += bus / rms * 10 ** ((level_db + rng.uniform(-4, 4)) / 20)

    rt_lo, rt_hi, wet_lo, wet_hi = style["reverb"]
    mix = _reverb(mix, rng.uniform(rt_lo, rt_hi), rng.uniform(wet_lo, wet_hi), sr=sr, rng=rng)
    # Recording colour: every clip gets its own band limits, so timbre alone
    # does not give the genre away.
    band = (rng.uniform(30, 120), 10 ** rng.uniform(np.log10(3500), np.log10(11000)))
    mix = _filter(mix, band, "bandpass", sr=sr)
    mix /= max(_rms(mix), 1e-9)
    noise = rng.standard_normal(song.n)
    if rng.random() < 0.5:
        noise = _filter(noise, rng.uniform(300, 3000), "lowpass", sr=sr)
    mix += noise / _rms(noise) * 10 ** (rng.uniform(-55, -25) / 20)

    mix *= 10 ** (rng.uniform(*style["loudness"]) / 20) / _rms(mix)
    peak = np.max(np.abs(mix))
    if peak > 0.98:
        mix *= 0.98 / peak
    return mix.astype(np.float32)


def check_clip_args(seconds, sr) -> None:
    """Refuse a clip length or sample rate the synthesiser cannot use (ValueError naming it)."""
    if not (is_real(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")
    if not (is_int(sr) and sr >= MIN_SR):
        raise ValueError(f"sr must be an integer sample rate of at least {MIN_SR} Hz, got {sr!r}")
    if round(seconds * sr) < 1:
        raise ValueError(f"seconds={seconds!r} gives no samples at sr={sr}; ask for at least {1 / sr:.2g} s")
