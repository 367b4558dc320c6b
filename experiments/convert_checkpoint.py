"""Convert a v1 checkpoint of an older cigl-bayes to the current format, on a file you trust.

    python -m experiments.convert_checkpoint runs/demo/checkpoint.pt --trusted

A v1 checkpoint holds numpy's random state as numpy objects, which ``torch.load`` can read only by
full unpickling, i.e. by running whatever code the file names; the current format (v2) holds
tensors and plain values only and is read with ``weights_only=True``, so cigl-bayes refuses v1
files.  This command is the one place that unpickles a checkpoint in full, and only when asked
with ``--trusted``: run it only on a checkpoint you wrote yourself or got from someone you trust.

The original is kept beside it as ``<name>.v1`` (refused if that exists), then the converted
checkpoint replaces it atomically; the result must load with ``weights_only=True``, or nothing is
written.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

from cigl_bayes.runs import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    plain_rng_state,
)

from .cli import ArgumentParser, run_cli

V1_FORMAT = "cigl-bayes-checkpoint-v1"


def convert(state: dict) -> dict:
    """A v1 checkpoint's state (fully unpickled) → the v2 state: the format tag and the RNG states."""
    if not isinstance(state, dict) or state.get("format") != V1_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"not a v1 cigl-bayes checkpoint (format {found!r}); nothing to convert")
    return {**state, "format": CHECKPOINT_FORMAT, "rng": plain_rng_state(state["rng"])}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.convert_checkpoint", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt of a run folder")
    p.add_argument("--trusted", action="store_true",
                   help="you trust this file: it is unpickled in full, which runs any code it names")
    args = p.parse_args(argv)
    path: Path = args.checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        load_checkpoint(path)
    except CheckpointError:
        pass
    else:
        print(f"{path} is already a {CHECKPOINT_FORMAT} checkpoint; nothing to do")
        return 0
    if not args.trusted:
        raise ValueError(f"converting {path} unpickles it in full, which runs any code the file names; "
                         "give --trusted only if you wrote it yourself or trust where it came from")
    backup = path.with_name(path.name + ".v1")
    if backup.exists():
        raise ValueError(f"{backup} exists already; move it away first (it may be an earlier original)")
    original = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(original), map_location="cpu", weights_only=False)  # --trusted, on request
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__})") from err
    converted = convert(state)
    buf = io.BytesIO()
    torch.save(converted, buf)
    try:
        torch.load(io.BytesIO(buf.getvalue()), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} holds Python objects besides the known v1 random states; "
                              "not converted") from err
    atomic_write_bytes(original, backup)
    atomic_write_bytes(buf.getvalue(), path)
    print(f"converted {path} to {CHECKPOINT_FORMAT}; the original is kept as {backup}")
    return 0


if __name__ == "__main__":
    run_cli(main)
