"""``autolabel emulator``: a local RedBrick to try autolabel with no account.

``seed`` creates a data folder (org, project, CT taxonomy, users, synthetic CT studies as
DICOM, or your own DICOM folders / NIfTI files) and prints how to connect; ``serve`` runs
the emulator on ``http://localhost:PORT`` until interrupted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autolabel.cli.commands._args import port
from autolabel.errors import ConfigError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``emulator`` sub-command with ``seed`` and ``serve``."""
    parser = subparsers.add_parser(
        "emulator",
        help="run a local RedBrick emulator (seed a demo project, serve it)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    actions = parser.add_subparsers(dest="emulator_command", metavar="ACTION", required=True)

    seed = actions.add_parser("seed", help="create or extend an emulator data folder")
    seed.add_argument("--data", required=True, type=Path, metavar="DIR", help="data folder")
    seed.add_argument("--studies", type=int, default=3, help="synthetic CT studies (default 3)")
    seed.add_argument(
        "--shape", default="64,64,32", metavar="X,Y,Z", help="phantom size (default 64,64,32)"
    )
    seed.add_argument("--seed", type=int, default=0, help="first phantom seed (default 0)")
    seed.add_argument(
        "--from",
        dest="from_paths",
        nargs="+",
        default=[],
        type=Path,
        metavar="PATH",
        help="DICOM folders or NIfTI files to add as tasks (folders are searched)",
    )
    seed.add_argument(
        "--multi-series",
        action="store_true",
        help="each --from folder is one task; its DICOM sub-folders and NIfTI files are the "
        "task's series, in name order",
    )
    seed.add_argument(
        "--datasets",
        action="store_true",
        help="store DICOM studies as a Datasets (AltaDB) project serves them",
    )
    seed.set_defaults(handler=run_seed)

    serve = actions.add_parser("serve", help="serve a seeded data folder over HTTP")
    serve.add_argument("--data", required=True, type=Path, metavar="DIR", help="data folder")
    serve.add_argument("--port", type=port, default=8765, help="port on 127.0.0.1 (default 8765)")
    serve.add_argument(
        "--faults", metavar="JSON|FILE", help="fault rules to inject (JSON text or a file)"
    )
    serve.set_defaults(handler=run_serve)


#: The largest phantom ``seed --shape`` makes: 512^3 voxels (a few GB while it is built).
MAX_PHANTOM_VOXELS = 512**3


def _shape(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 8:
        raise ConfigError(f"--shape must be three sizes of at least 8 like 64,64,32, got {text!r}")
    voxels = sizes[0] * sizes[1] * sizes[2]
    if voxels > MAX_PHANTOM_VOXELS:
        raise ConfigError(
            f"--shape {text} is {voxels:,} voxels per phantom, over the limit of "
            f"{MAX_PHANTOM_VOXELS:,} (512,512,512); use a smaller shape such as 512,512,300"
        )
    return (sizes[0], sizes[1], sizes[2])


def run_seed(args: argparse.Namespace) -> int:
    """Seed the folder and print the connection (this demo key is the emulator's own)."""
    from autolabel.emulator import seed

    if args.studies < 0:
        raise ConfigError("--studies must be 0 or more")
    if args.studies == 0 and not args.from_paths:
        raise ConfigError("nothing to seed: give --studies N (N > 0) or --from PATH...")
    if args.multi_series and not args.from_paths:
        raise ConfigError("--multi-series needs --from FOLDER...")
    try:
        connection = seed(
            args.data,
            studies=args.studies,
            shape=_shape(args.shape),
            from_paths=args.from_paths,
            multi_series=args.multi_series,
            seed=args.seed,
            datasets=args.datasets,
        )
    except (FileNotFoundError, FileExistsError) as exc:
        raise ConfigError(str(exc)) from None
    print(f"data:       {args.data}")
    print(f"url:        {connection.url or 'set when served (autolabel emulator serve)'}")
    print(f"org id:     {connection.org_id}")
    print(f"project id: {connection.project_id}")
    print(f"api key:    {connection.api_key}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from autolabel.emulator import load_faults, serve_forever

    try:
        faults = load_faults(args.faults) if args.faults else []
        serve_forever(args.data, args.port, faults=faults)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot serve on port {args.port}: {exc}") from None
    return 0
