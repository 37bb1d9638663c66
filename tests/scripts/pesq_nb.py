#!/usr/bin/env python3
"""PESQ narrowband (ITU-T P.862, MOS-LQO) of DEG.wav against REF.wav; prints the score.

Both files: 8 kHz mono 16-bit PCM. Needs `pip install pesq numpy`.
Exit status 2 when the pesq module is missing (the caller tells that apart from a failure).
"""
import sys
import wave

try:
    import numpy as np
    from pesq import pesq
except ImportError as e:  # pragma: no cover
    print(f"pesq_nb.py: missing Python module: {e}", file=sys.stderr)
    sys.exit(2)


def read(path):
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: want mono 16-bit PCM")
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return rate, data.astype(np.float32)


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: pesq_nb.py REF.wav DEG.wav")
    r_rate, ref = read(sys.argv[1])
    d_rate, deg = read(sys.argv[2])
    if r_rate != 8000 or d_rate != 8000:
        raise SystemExit("both files must be 8 kHz")
    n = min(len(ref), len(deg))
    print(f"{pesq(8000, ref[:n], deg[:n], 'nb'):.4f}")


if __name__ == "__main__":
    main()
