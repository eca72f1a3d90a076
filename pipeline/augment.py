"""Offline audio-effect augmentation of training clips (audiomentations).

Each augmented version of a clip is a random chain of effects applied in the
fixed order of :data:`AUGMENTATIONS`:

pitch -> stretch -> eq -> noise -> gain

Musical transformations (pitch, tempo) act on the clean signal first, so their
artefacts are not smeared over added noise and the noise keeps its own
spectrum and timing; the EQ then colours the music like a different room or
microphone; noise is added after it, like a recording's noise floor, at an SNR
measured on the coloured signal; the overall gain comes last, which scales
music and noise together and so leaves the drawn SNR intact.

Every effect in the chain applies independently with probability ``p``,
conditioned on at least one applying (an unaugmented "augmented" copy is
wasted cache space); with ``p=0`` exactly one effect, chosen uniformly,
applies.

Determinism: audiomentations draws from the global ``random`` and
``numpy.random`` generators.  :meth:`Augmenter.__call__` seeds both from
``seed``, runs the chain, and restores their previous states, so equal
``(samples, seed)`` give bit-identical output in any process and the caller's
global random state is untouched.  Because it borrows the global generators,
do not call one augmenter from several threads at once (process-based joblib
backends such as loky are fine).

Headroom: pitch/EQ/gain can push peaks above full scale.  If the result's peak
exceeds ``max(1.0, input peak)``, the whole clip is scaled down to that peak
(a gain change, not clipping, so no distortion is added) and the factor is
recorded under ``"headroom"`` in the returned parameters.

Example
-------
>>> import numpy as np
>>> augmenter = build_augmenter(("pitch", "gain"))
>>> x = 0.1 * np.sin(np.linspace(0, 2000, 22050)).astype(np.float32)
>>> y, applied = augmenter(x, seed=augment_seed(0, "blues/blues.00000.wav", 1))
>>> y.shape == x.shape and y.dtype == np.float32 and set(applied) <= {"pitch", "gain"}
True
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random

import audiomentations
import numpy as np

from pipeline.checks import check_int, check_names, check_number, parse_names
from pipeline.features import check_waveform

# python-stretch's Signalsmith Stretch: ~3x smaller log-mel error than librosa's
# phase vocoder against ideally shifted/stretched tones, at about the same cost.
STRETCH_METHOD = "signalsmith_stretch"


def _pitch(*, pitch_semitones, **_):
    return audiomentations.PitchShift(
        min_semitones=-pitch_semitones, max_semitones=pitch_semitones, method=STRETCH_METHOD, p=1.0
    )


def _stretch(*, stretch_min, stretch_max, **_):
    return audiomentations.TimeStretch(
        min_rate=stretch_min, max_rate=stretch_max, leave_length_unchanged=True, method=STRETCH_METHOD, p=1.0
    )


def _eq(*, eq_gain_db, **_):
    return audiomentations.SevenBandParametricEQ(min_gain_db=-eq_gain_db, max_gain_db=eq_gain_db, p=1.0)


def _noise(*, snr_min_db, snr_max_db, **_):
    # Coloured noise (spectral slope drawn in -6..+6 dB/octave, brown to violet)
    # covers more recording noise floors than white noise alone.
    return audiomentations.AddColorNoise(min_snr_db=snr_min_db, max_snr_db=snr_max_db, p=1.0)


def _gain(*, gain_db, **_):
    return audiomentations.Gain(min_gain_db=-gain_db, max_gain_db=gain_db, p=1.0)


# Insertion order is the order of the chain.
AUGMENTATIONS = {"pitch": _pitch, "stretch": _stretch, "eq": _eq, "noise": _noise, "gain": _gain}
DEFAULT_EFFECTS = ("pitch", "stretch", "eq", "noise", "gain")


def parse_effect_names(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of effect names (:func:`pipeline.checks.parse_names`).

    >>> parse_effect_names("pitch, noise")
    ('pitch', 'noise')
    """
    return tuple(parse_names(text, choices=tuple(AUGMENTATIONS), what="effect"))


def augment_seed(base_seed: int, key: str, version: int) -> int:
    """Seed of augmented version ``version`` of the clip listed as ``key``.

    SHA-256 of the JSON text ``[base_seed, key, version]``, first 8 bytes read
    as a little-endian unsigned integer: the same in every process and Python
    run (unlike ``hash()``), and distinct for different keys or versions.

    >>> augment_seed(0, "blues/blues.00000.wav", 1) == augment_seed(0, "blues/blues.00000.wav", 1)
    True
    """
    base_seed = check_int("base_seed", base_seed, minimum=0)
    version = check_int("version", version, minimum=0)
    if not isinstance(key, str):
        raise ValueError(f"key must be the clip's listed path as a str, got {type(key).__name__}")
    digest = hashlib.sha256(json.dumps([base_seed, key, version]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _draw_mask(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Which of ``n`` effects apply: independent Bernoulli(p) given at least one.

    Sampled exactly, without rejection: the first applied effect is ``i`` with
    probability proportional to ``(1 - p)**i * p`` (uniform in the p -> 0
    limit), and each later one applies with probability ``p``.
    """
    weights = np.ones(n) if p == 0 else p * (1 - p) ** np.arange(n)
    first = rng.choice(n, p=weights / weights.sum())
    mask = np.zeros(n, dtype=bool)
    mask[first] = True
    mask[first + 1:] = rng.random(n - first - 1) < p
    return mask


def _plain(value):
    """numpy scalars -> Python numbers, for JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _applied_parameters(transform) -> dict:
    """The parameters a transform drew on its last call, JSON-serialisable."""
    if isinstance(transform, audiomentations.SevenBandParametricEQ):
        # The EQ keeps its draws in its seven sub-filters.
        filters = [transform.low_shelf_filter, *transform.peaking_filters, transform.high_shelf_filter]
        return {"bands": [{k: _plain(v) for k, v in f.parameters.items() if k != "should_apply"} for f in filters]}
    return {k: _plain(v) for k, v in transform.parameters.items() if k != "should_apply"}


class Augmenter:
    """A seeded random chain of audio effects (see the module docstring).

    Parameters
    ----------
    effects : sequence of str or str
        Effects to draw from (keys of :data:`AUGMENTATIONS`, or a
        comma-separated string).  They always run in the registry's order.
    sr : int
        Sample rate of the clips.
    p : float
        Probability that each effect applies (given that at least one does).
    pitch_semitones : float
        Pitch shift drawn uniformly in ``[-pitch_semitones, pitch_semitones]``.
    stretch_min, stretch_max : float
        Time-stretch rate range (>1 speeds up); the output is cut or
        zero-padded back to the input length.
    snr_min_db, snr_max_db : float
        Signal-to-noise ratio range of the added coloured noise.
    eq_gain_db : float
        Each of the seven EQ bands gets a gain in ``[-eq_gain_db, eq_gain_db]``.
    gain_db : float
        Overall gain drawn in ``[-gain_db, gain_db]``.

    Attributes
    ----------
    settings : dict
        All of the above (effects in chain order), JSON-serialisable.
    """

    def __init__(self, effects=DEFAULT_EFFECTS, *, sr=22050, p=0.5, pitch_semitones=2.0, stretch_min=0.8,
                 stretch_max=1.25, snr_min_db=15.0, snr_max_db=40.0, eq_gain_db=6.0, gain_db=6.0):
        effects = parse_effect_names(effects) if isinstance(effects, str) else tuple(effects)
        if not effects:
            raise ValueError(f"effects is empty; choose at least one of: {', '.join(AUGMENTATIONS)}")
        check_names(effects, choices=tuple(AUGMENTATIONS), what="effect")
        sr = check_int("sr", sr, minimum=1)
        # Zero-width ranges are refused: they would make the effect a no-op.
        settings = {
            "effects": [name for name in AUGMENTATIONS if name in effects],
            "sr": int(sr),
            "p": check_number("p", p, low=0.0, high=1.0),
            "pitch_semitones": check_number("pitch_semitones", pitch_semitones, low=0.0, high=24.0, low_open=True),
            "stretch_min": check_number("stretch_min", stretch_min, low=0.1, high=10.0),
            "stretch_max": check_number("stretch_max", stretch_max, low=0.1, high=10.0),
            "snr_min_db": check_number("snr_min_db", snr_min_db),
            "snr_max_db": check_number("snr_max_db", snr_max_db),
            "eq_gain_db": check_number("eq_gain_db", eq_gain_db, low=0.0, high=24.0, low_open=True),
            "gain_db": check_number("gain_db", gain_db, low=0.0, high=40.0, low_open=True),
        }
        if settings["stretch_min"] >= settings["stretch_max"]:
            raise ValueError(f"stretch_min ({stretch_min}) must be < stretch_max ({stretch_max})")
        if settings["snr_min_db"] > settings["snr_max_db"]:
            raise ValueError(f"snr_min_db ({snr_min_db}) must be <= snr_max_db ({snr_max_db})")
        self.settings = settings

    def __repr__(self) -> str:
        return f"Augmenter({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"

    def _transforms(self, names) -> list:
        # Built per call: cheap, and it keeps the augmenter free of the
        # transforms' mutable per-call state (pickles small, shares nothing).
        knobs = {k: v for k, v in self.settings.items() if k not in ("effects", "sr", "p")}
        return [(name, AUGMENTATIONS[name](**knobs)) for name in names]

    def __call__(self, samples: np.ndarray, *, seed: int) -> tuple[np.ndarray, dict]:
        """Augment one clip.

        Parameters
        ----------
        samples : np.ndarray, shape (n_samples,)
            Mono float waveform at ``settings["sr"]``.
        seed : int
            Non-negative; e.g. :func:`augment_seed` of the clip and version.

        Returns
        -------
        augmented : np.ndarray, shape (n_samples,), float32
        applied : dict
            ``{effect: {parameter: value}}`` for the effects that ran, plus
            ``"headroom": {"scale": s}`` if the peak had to be scaled down.
        """
        samples = check_waveform(samples)
        seed = check_int("seed", seed, minimum=0)
        mask_seq, random_seq, numpy_seq = np.random.SeedSequence(seed).spawn(3)
        names = self.settings["effects"]
        mask = _draw_mask(np.random.default_rng(mask_seq), len(names), self.settings["p"])
        chosen = [name for name, keep in zip(names, mask) if keep]

        saved_random, saved_numpy = random.getstate(), np.random.get_state()
        try:
            random.seed(int(random_seq.generate_state(1, np.uint64)[0]))
            np.random.seed(numpy_seq.generate_state(4))
            out, applied = self._run_chain(samples, chosen)
        finally:
            random.setstate(saved_random)
            np.random.set_state(saved_numpy)
        return self._limit_peak(out, samples, applied)

    def _run_chain(self, samples: np.ndarray, chosen) -> tuple[np.ndarray, dict]:
        out, applied, sr = samples, {}, self.settings["sr"]
        for name, transform in self._transforms(chosen):
            out = transform(out, sr)
            applied[name] = _applied_parameters(transform)
        if out.shape != samples.shape or not np.isfinite(out).all():
            raise RuntimeError(f"augmentation chain {chosen} returned shape {out.shape} or non-finite values")
        return np.ascontiguousarray(out, dtype=np.float32), applied

    @staticmethod
    def _limit_peak(out: np.ndarray, original: np.ndarray, applied: dict) -> tuple[np.ndarray, dict]:
        limit = max(1.0, float(np.abs(original).max()))
        peak = float(np.abs(out).max())
        if peak > limit:
            scale = limit / peak
            out = (out * np.float32(scale)).astype(np.float32)
            applied["headroom"] = {"scale": scale}
        return out, applied


def build_augmenter(effects=DEFAULT_EFFECTS, **settings) -> Augmenter:
    """Build an :class:`Augmenter`; ``effects`` may be a comma-separated string.

    >>> build_augmenter("pitch,noise", p=0.3).settings["effects"]
    ['pitch', 'noise']
    """
    known = set(inspect.signature(Augmenter).parameters) - {"effects"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown augmenter setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return Augmenter(effects, **settings)
