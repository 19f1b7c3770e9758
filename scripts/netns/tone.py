#!/usr/bin/env python3
"""Share of a tone in mono f32le 48 kHz audio (a file or stdin).

    tone.py FILE FREQ MIN_SHARE [MIN_SECONDS]

Prints the seconds decoded and the share of the signal's energy within
±25 Hz of FREQ (after the first 0.5 s); exits 1 if there is less audio than
MIN_SECONDS or the share is below MIN_SHARE.
"""
import sys

import numpy as np

path, freq, min_share = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
min_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
raw = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
pcm = np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<f4").astype(np.float64)
seconds = len(pcm) / 48000
body = pcm[24000:]
if len(body) < 4800:
    print(f"{seconds:.2f} s decoded: too little audio")
    sys.exit(1)
spec = np.abs(np.fft.rfft(body * np.hanning(len(body)))) ** 2
freqs = np.fft.rfftfreq(len(body), 1 / 48000)
total = spec[freqs > 20].sum()
share = spec[np.abs(freqs - freq) <= 25].sum() / total if total > 0 else 0.0
rms = float(np.sqrt(np.mean(body**2)))
print(f"{seconds:.2f} s decoded, {freq:.0f} Hz share {share:.3f}, rms {rms:.3f}")
sys.exit(0 if share >= min_share and seconds >= min_seconds else 1)
