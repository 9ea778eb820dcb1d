"""Write a stand-in for the YESNO corpus: ``DIR/waves_yesno/<w1>_<w2>_..._<w8>.wav``, 8 kHz mono
16-bit, each file eight spoken words, yes (1) or no (0) as its name says -- the layout of
http://www.openslr.org/resources/1/waves_yesno.tar.gz, so ``launch recipe=yesno data.root=DIR``
reads it through the same torchaudio code path as the real recordings.

Words are Hebrew "ken" (yes) and "lo" (no), like the real corpus, spoken by espeak-ng with varied
speed, pitch and loudness, separated by random pauses, over background noise. Without espeak-ng
(or with --tones) words are short tones instead (a minimal stand-in).

    python scripts/yesno_standin.py DIR [--files 60] [--seed 0] [--tones]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np

RATE = 8000
WORDS = {0: "לא", 1: "כן"}  # lo (no), ken (yes)
SPEEDS = (120, 145, 170, 195)
PITCHES = (30, 45, 60, 75)


def _espeak(text: str, speed: int, pitch: int, voice: str = "he") -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    x = resample_poly(x, RATE, rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())  # trim espeak's own silence
    x = x[loud[0] : loud[-1] + 1]
    return x / np.abs(x).max()


def _tone(word: int, speed: int, pitch: int) -> np.ndarray:
    seconds = 0.25 + 30.0 / speed
    t = np.arange(int(seconds * RATE)) / RATE
    freq = (350.0 if word == 0 else 700.0) * (1 + (pitch - 50) / 400)
    envelope = np.sin(np.pi * t / seconds)
    return (envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def word_sounds(tones: bool = False, voice: str = "he", speed: float = 1.0) -> dict[int, list[np.ndarray]]:
    """Every spoken variant of each word: {0: [...], 1: [...]}."""
    if tones or shutil.which("espeak-ng") is None:
        make = _tone
    else:
        make = lambda w, s, p: _espeak(WORDS[w], s, p, voice)  # noqa: E731
    return {w: [make(w, int(s * speed), p) for s in SPEEDS for p in PITCHES] for w in WORDS}


INTONATIONS = (".", "?", "!", ",")  # espeak-ng speaks a word differently before each


def unique_word(word: int, rng, voice: str = "he", speed: float = 1.0) -> np.ndarray:
    """One utterance of a word never heard before, as a person says it again and again: its own
    rate and pitch (continuous, not from a small set), intonation, and a gentle
    spectral tilt (the mouth a little nearer or further from the microphone)."""
    from scipy.signal import lfilter

    x = _espeak(
        WORDS[word] + INTONATIONS[rng.integers(len(INTONATIONS))],
        int(rng.uniform(110, 210) * speed),
        int(rng.uniform(20, 85)),
        voice,
    )
    a = rng.uniform(-0.6, 0.6)  # first-order tilt: > 0 brighter, < 0 duller
    x = lfilter([1.0, -a], [1.0], x) if a > 0 else lfilter([1.0 + a], [1.0, a], x)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def _reverb(audio: np.ndarray, seconds: float, rng) -> np.ndarray:
    """A room: the dry sound plus exponentially decaying noise as impulse response (RT60 ~ seconds)."""
    from scipy.signal import fftconvolve

    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    ir = rng.normal(0, 1, n) * np.exp(-6.9 * t / seconds)
    ir[0] = 1.0 / 0.3  # (the direct sound)
    wet = fftconvolve(audio, ir * 0.3)[: len(audio)]
    return (wet / (np.abs(wet).max() + 1e-9) * np.abs(audio).max()).astype(np.float32)


def make_standin(
    root: Path,
    files: int = 60,
    seed: int = 0,
    words: int = 8,
    tones: bool = False,
    voice: str = "he",
    speed: float = 1.0,
    noise: float = 1.0,
    reverb: float = 0.0,
    gain: float = 1.0,
    pause: float = 1.0,
    jitter: float = 0.0,
    unique: bool = False,
) -> Path:
    """Write ``files`` recordings with distinct label sequences under ``root/waves_yesno``.
    Conditions (one per set, as the real corpus is one speaker in one room): ``voice`` (an
    espeak-ng voice, e.g. ``he+m3``, ``he+f2``, ``he+klatt``), ``speed`` (x the speaking rate),
    ``noise`` (x the background noise), ``reverb`` (RT60 in seconds, 0: dry), ``gain``, ``pause``
    (x the pauses between words: small values run the words together), ``jitter`` (each spoken
    word resampled by a random factor in 1 +- jitter: tempo and pitch vary word by word),
    ``unique`` (every word synthesised afresh, :func:`unique_word`, instead of drawn from 16
    fixed variants, so that no held-out word is a copy of a training word: the real corpus)."""
    import soundfile as sf

    if files > 2**words:
        raise ValueError(f"at most {2**words} distinct files of {words} words")
    rng = np.random.default_rng(seed)
    sounds = None if unique and not tones and shutil.which("espeak-ng") else word_sounds(tones, voice, speed)
    folder = Path(root) / "waves_yesno"
    folder.mkdir(parents=True, exist_ok=True)
    for code in rng.choice(2**words, size=files, replace=False):
        labels = [(int(code) >> (words - 1 - i)) & 1 for i in range(words)]
        parts = [np.zeros(int(rng.uniform(0.3, 1.0) * RATE), np.float32)]
        for w in labels:
            variant = unique_word(w, rng, voice, speed) if sounds is None else sounds[w][rng.integers(len(sounds[w]))]
            if jitter:
                from scipy.signal import resample

                variant = resample(variant, int(len(variant) * rng.uniform(1 - jitter, 1 + jitter))).astype(np.float32)
            parts.append(variant * rng.uniform(0.3, 0.9))
            parts.append(np.zeros(int(pause * rng.uniform(0.15, 0.5) * RATE), np.float32))
        audio = np.concatenate(parts)
        if reverb:
            audio = _reverb(audio, reverb, rng)
        audio += rng.normal(0.0, noise * rng.uniform(0.002, 0.015), audio.shape).astype(np.float32)
        audio *= gain
        name = "_".join(str(w) for w in labels) + ".wav"
        sf.write(folder / name, np.clip(audio, -1, 1), RATE, subtype="PCM_16")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="writes ROOT/waves_yesno/*.wav")
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tones", action="store_true", help="tones instead of espeak-ng speech")
    ap.add_argument("--voice", default="he", help="espeak-ng voice, e.g. he+m3, he+f2, he+klatt")
    ap.add_argument("--speed", type=float, default=1.0, help="x the speaking rate")
    ap.add_argument("--noise", type=float, default=1.0, help="x the background noise")
    ap.add_argument("--reverb", type=float, default=0.0, help="reverberation time in seconds (0: none)")
    ap.add_argument("--gain", type=float, default=1.0)
    ap.add_argument("--pause", type=float, default=1.0, help="x the pauses between words")
    ap.add_argument("--jitter", type=float, default=0.0, help="per-word tempo/pitch change, e.g. 0.2")
    ap.add_argument("--unique", action="store_true", help="every word synthesised afresh (no repeated variants)")
    args = ap.parse_args()
    folder = make_standin(args.root, args.files, args.seed, tones=args.tones, voice=args.voice, speed=args.speed,
                          noise=args.noise, reverb=args.reverb, gain=args.gain, pause=args.pause, jitter=args.jitter, unique=args.unique)  # fmt: skip
    print(f"wrote {args.files} files to {folder}")


if __name__ == "__main__":
    main()
