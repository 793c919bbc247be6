"""The README cannot go stale: every ``autolabel`` command in its ```bash blocks is run, in
the README's order, against a local emulator served as the README says (``autolabel
emulator serve`` in its own process), with the files its ```toml / ```python blocks
create and its Python snippet executed; each must end with the exit code a user expects.

Only what a machine cannot do verbatim is adapted, each time said here: ``emulator serve``
gets a free port instead of 8765 (tests run in parallel with other software), the exported
connection is read from the seeded folder (the README tells people to copy it from
``seed``'s output), ``$TASK_ID`` is a task in Ground Truth, review-stage tasks are assigned
to the key as the README asks a project admin to do, ``scan.nii.gz`` is a phantom CT, and
``watch`` is stopped with SIGINT -- the Ctrl-C the README mentions -- after its first poll.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autolabel.cli import build_parser, main
from autolabel.emulator import admin
from autolabel.ledger import Ledger, ledger_path

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One fenced block of the README, with the ``##`` section it sits in."""

    lang: str
    text: str
    section: str


def blocks() -> list[Block]:
    """Every fenced block of the README, in order."""
    text = README.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.MULTILINE)
        found.append(Block(match.group(1), match.group(2), headings[-1] if headings else ""))
    return found


def shell_lines(block: Block) -> list[str]:
    """The commands of a shell block: continuations joined, comments and blanks dropped."""
    joined = block.text.replace("\\\n", " ")
    lines = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            lines.append(shlex.join(words))
    return lines


def readme_commands() -> list[str]:
    """Every ``autolabel ...`` command of the README's bash blocks, in order."""
    return [
        line
        for block in blocks()
        if block.lang == "bash"
        for line in shell_lines(block)
        if line.startswith("autolabel ")
    ]


def file_blocks() -> dict[str, str]:
    """Blocks whose first line is ``# <path>``: files the README asks the reader to create."""
    files = {}
    for block in blocks():
        first, _, rest = block.text.partition("\n")
        match = re.fullmatch(r"# ([\w./-]+\.(?:toml|py))", first.strip())
        if block.lang in ("toml", "python") and match:
            files[match.group(1)] = rest
    return files


def python_snippets() -> list[str]:
    """The README's Python blocks that are code to run (not files to create)."""
    files = set(file_blocks().values())
    return [
        b.text for b in blocks() if b.lang == "python" and b.text.partition("\n")[2] not in files
    ]


def test_quick_start_is_exactly_the_two_commands() -> None:
    """The Quick start section shows ``./dev/demo.sh`` and ``./dev/test.sh``, nothing else."""
    quick = [b for b in blocks() if b.section == "Quick start" and b.lang == "bash"]
    assert quick and shell_lines(quick[0]) == ["./dev/demo.sh", "./dev/test.sh"]
    for script in ("dev/demo.sh", "dev/test.sh"):
        assert os.access(README.parent / script, os.X_OK), script


def test_commands_after_the_quick_start_work_in_a_fresh_shell(tmp_path: Path) -> None:
    """The scripts install into ``.venv`` without touching the reader's shell, so the block
    after the Quick start activates it first; in a new shell (no virtual environment on its
    PATH) that line puts ``autolabel`` on the PATH. Every other line of a bash block is an
    ``autolabel`` command, one of the two scripts, or an export."""
    after = [b for b in blocks() if b.section == "Quick start" and b.lang == "bash"][1]
    assert shell_lines(after)[0] == ". .venv/bin/activate"
    others = {"./dev/demo.sh", "./dev/test.sh", ". .venv/bin/activate"}
    for block in blocks():
        for line in shell_lines(block) if block.lang == "bash" else []:
            assert line.startswith(("autolabel ", "export ")) or line in others, line
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the environment dev/setup-env.sh makes
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    script = f"{shell_lines(after)[0]} && autolabel status --work nowhere"
    done = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "no ledger in nowhere" in done.stderr, done.stderr


def test_every_readme_command_is_a_valid_invocation() -> None:
    """Each command parses with the real parser: no renamed flag or command survives."""
    commands = readme_commands()
    assert len(commands) >= 15
    parser = build_parser()
    a_task = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"  # what "$TASK_ID" holds: a task's UUID
    for command in commands:
        words = [a_task if w == "$TASK_ID" else w for w in shlex.split(command)]
        args = parser.parse_args(words[1:])
        assert callable(args.handler), command


# -- the walkthrough --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Walkthrough:
    """Runs README commands the way a reader would, in one folder and one environment."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = folder
        self.monkeypatch = monkeypatch
        self.server: subprocess.Popen[str] | None = None
        self.url = ""
        self.admin_token = ""
        self.key_user = ""
        self.ran: list[str] = []

    # -- the emulator the README serves ----------------------------------------------------

    def serve(self, argv: list[str]) -> None:
        """``autolabel emulator serve ...`` in its own process, on a free port."""
        argv = list(argv)
        port = str(_free_port())
        argv[argv.index("--port") + 1] = port
        self.server = subprocess.Popen(
            [sys.executable, "-m", "autolabel", *argv[1:]],
            cwd=self.folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        assert "serving" in line, line
        data = Path(self.folder, argv[argv.index("--data") + 1])
        connection = json.loads((data / "connection.json").read_text())
        self.url = connection["url"]
        self.admin_token = connection["admin_token"]
        assert self.url == f"http://localhost:{port}"
        for key, name in (
            ("url", "REDBRICK_URL"),
            ("org_id", "REDBRICK_ORG_ID"),
            ("project_id", "REDBRICK_PROJECT_ID"),
            ("api_key", "REDBRICK_API_KEY"),
        ):
            self.monkeypatch.setenv(name, connection[key])  # fmt: skip
        self.key_user = next(t["assigned_to"] for t in self.tasks() if t["assigned_to"])

    def admin(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        """Call an admin route of the served emulator (what a project admin does in the UI)."""
        method = "GET" if payload is None else "POST"
        status, answer = admin.call(self.url, self.admin_token, method, path, payload)
        assert status == 200, answer
        return answer

    def tasks(self) -> list[dict[str, Any]]:
        """The served emulator's tasks."""
        tasks: list[dict[str, Any]] = self.admin("tasks")["tasks"]
        return tasks

    def stop(self) -> int | None:
        """Stop the served emulator as a user would (Ctrl-C); its exit code."""
        if self.server is None:
            return None
        self.server.send_signal(signal.SIGINT)
        try:
            return self.server.wait(timeout=30)
        finally:
            if self.server.poll() is None:
                self.server.kill()

    # -- commands --------------------------------------------------------------------------

    def run(self, command: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Run one README command and check its exit code."""
        self.ran.append(command)
        argv = shlex.split(os.path.expandvars(command))
        sub = argv[1]
        if argv[1:3] == ["emulator", "serve"]:
            self.serve(argv)
            return
        self._prepare(sub, argv)
        expected = 0
        if "--device" in argv and argv[argv.index("--device") + 1].startswith("cuda"):
            expected = 0 if torch.cuda.is_available() else 2
        if sub == "watch":
            with self._interrupt_after_first_poll():
                code = main(argv[1:])
        elif "--ray" in argv:
            # A process of its own, as from a shell: Ray keeps per-process state (its auth
            # mode, its session) from any earlier ray.init in this test process.
            done = subprocess.run(
                [sys.executable, "-m", "autolabel", *argv[1:]],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            code, out, err = done.returncode, done.stdout, done.stderr
            assert code == expected, f"{command}\nexit {code}\n{out}\n{err}"
            return
        else:
            code = main(argv[1:])
        out, err = capsys.readouterr()
        assert code == expected, f"{command}\nexit {code}\n{out}\n{err}"
        if expected == 2:
            assert "no CUDA device" in err, err

    def _prepare(self, sub: str, argv: list[str]) -> None:
        if sub == "review":
            for task in self.tasks():
                if task["stage_name"] == "Review_1":
                    self.admin(f"tasks/{task['task_id']}/assign", {"user": self.key_user})
        if sub == "reannotate" and "--task-id" in argv:
            done = [t for t in self.tasks() if t["stage_name"] == "END"]
            assert done, "no task reached Ground Truth before `reannotate --task-id`"
            self.monkeypatch.setenv("TASK_ID", done[0]["task_id"])
            argv[argv.index("--task-id") + 1] = done[0]["task_id"]
        if sub == "predict" and not (self.folder / argv[2]).exists():
            _write_scan(self.folder / argv[2])

    @contextmanager
    def _interrupt_after_first_poll(self) -> Iterator[None]:
        """Send SIGINT (Ctrl-C) once ``watch`` has finished a poll (a run in the ledger)."""
        ledger = ledger_path(self.folder / "autolabel-work")
        before = _finished_runs(ledger)
        done = threading.Event()

        def interrupt() -> None:
            deadline = time.monotonic() + 120
            while not done.is_set() and time.monotonic() < deadline:
                if _finished_runs(ledger) > before:
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                time.sleep(0.2)

        thread = threading.Thread(target=interrupt, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=5)


def _finished_runs(path: Path) -> int:
    if not path.is_file():
        return 0
    with Ledger(path, create=False) as ledger:
        return sum(1 for r in ledger.runs() if r.finished_at is not None)


def _write_scan(path: Path) -> None:
    """A phantom trunk CT as NIfTI (RAS affine): the README's ``scan.nii.gz``."""
    from autolabel.emulator.phantom import make_phantom
    from autolabel.imaging import write_volume_nifti
    from autolabel.records import Volume

    phantom = make_phantom((64, 64, 32), seed=11)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ phantom.affine_lps
    write_volume_nifti(Volume(array=phantom.hu, affine=affine), path)


def test_readme_walkthrough_runs_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every README command, in order, from a clean folder: the demo, the emulator, a dry
    run, drafts, submits, status, report, review, reannotate, watch, models, predict with
    a shipped and a home-made card, the GPU check, and the Python snippet. Each exits as
    documented and leaves what the README promises."""
    for name in list(os.environ):
        if name.startswith(("REDBRICK_", "AUTOLABEL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no RedBrick CLI profile of this machine
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.chdir(tmp_path)
    for relative, text in file_blocks().items():
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    walk = Walkthrough(tmp_path, monkeypatch)
    try:
        for command in readme_commands():
            walk.run(command, capsys)
        for snippet in python_snippets():
            namespace: dict[str, Any] = {}
            exec(compile(snippet, "README.md", "exec"), namespace)
            assert namespace["summary"].failed == []
        stages = {t["task_id"]: t["stage_name"] for t in walk.tasks()}
    finally:
        served_exit = walk.stop()
    assert walk.ran == readme_commands()
    assert served_exit == 130  # Ctrl-C ends `emulator serve`
    # What the README promises is there.
    assert (tmp_path / "autolabel-demo" / "report.html").is_file()
    assert (tmp_path / "demo-report.html").is_file() and (tmp_path / "report.html").is_file()
    assert (tmp_path / "scan-labels.nii.gz").is_file() and (tmp_path / "bright.nii.gz").is_file()
    assert "Review_1" not in stages.values()  # `review --auto` decided every task
    assert stages[os.environ["TASK_ID"]] == "Label"  # `reannotate --task-id` sent it back


def test_readme_framework_cards_run_on_weights_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nnunet_results: Path
) -> None:
    """The README's nnU-Net, TotalSegmentator and MONAI bundle cards, as written, predict
    once their weights lie where the README says (models built by the frameworks' own code;
    see tests/framework_models.py)."""
    import shutil

    pytest.importorskip("totalsegmentator")
    pytest.importorskip("monai.bundle")
    import nibabel as nib
    from framework_models import (
        CONFIGURATION,
        PLANS,
        TRAINER,
        build_monai_bundle,
        build_totalsegmentator_weights,
    )

    from autolabel.inference import read_card

    nnunet_model = nnunet_results / "Dataset901_Tiny" / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg-home"))
    cards = []
    for relative, text in file_blocks().items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        card = read_card(path) if path.name == "model.toml" else None
        if card is None or card.kind not in ("nnunet", "totalsegmentator", "monai-bundle"):
            continue
        cards.append(card)
        if card.kind == "nnunet":
            shutil.copytree(nnunet_model, card.folder / card.options["folder"])
        elif card.kind == "totalsegmentator":
            weights = build_totalsegmentator_weights(
                tmp_path / "totalseg-weights",
                nnunet_model,
                card.options["task"],
                bool(card.options.get("fast")),
            )
            monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(weights))
        else:
            build_monai_bundle(card.folder / card.options["bundle"])
    assert sorted(c.kind for c in cards) == ["monai-bundle", "nnunet", "totalsegmentator"]
    _write_scan(tmp_path / "scan.nii.gz")
    for card in cards:
        out = tmp_path / f"{card.name}.nii.gz"
        argv = ["predict", "scan.nii.gz", "--model", str(card.folder), "--out", str(out)]
        assert main([*argv, "--device", "cpu", "--no-png"]) == 0, card.name
        labels = np.asanyarray(nib.load(out).dataobj)
        assert labels.shape == (64, 64, 32) and labels.any(), card.name
