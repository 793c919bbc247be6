"""A local RedBrick AI that the official SDK accepts: GraphQL, presigned storage, rules, faults.

Use :func:`seed` to create a data directory (org, project, taxonomy, users, phantom CT
studies) and :func:`serve_in_thread` to serve it on a free ``localhost`` port::

    from autolabel.emulator import seed, serve_in_thread

    seed(tmp_dir, studies=2, shape=(32, 32, 16))
    with serve_in_thread(tmp_dir) as emu:
        project = redbrick.get_project(emu.org_id, emu.project_id, emu.api_key, url=emu.url)

The emulator never imports autolabel's own RedBrick client.
"""

from __future__ import annotations

from autolabel.emulator.faults import FaultRule, load_faults
from autolabel.emulator.handle import Actor, EmulatorHandle, serve_forever, serve_in_thread
from autolabel.emulator.seed import Connection, seed
from autolabel.emulator.service import Emulator, MintedUser
from autolabel.emulator.stages import RuleViolation

__all__ = [
    "Actor",
    "Connection",
    "Emulator",
    "EmulatorHandle",
    "FaultRule",
    "MintedUser",
    "RuleViolation",
    "load_faults",
    "seed",
    "serve_forever",
    "serve_in_thread",
]
