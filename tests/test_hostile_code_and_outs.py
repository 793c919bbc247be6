"""A model card's code and an ``--out`` as a careless user or an attacker gives them: the key
a model quotes never lands in a file or an output, a card that raises or exits while it
loads is one usage error naming it, a model that moves the working folder does not move
the outputs, and ``predict`` / ``report`` refuse an ``--out`` they cannot or must not write."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.ledger import Ledger, ModelKey, ledger_path


def _card(folder: Path, body: str) -> Path:
    """A python-kind card whose ``plugin.py`` is ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text(textwrap.dedent(body))
    (folder / "model.toml").write_text(
        'name = "hostile"\nversion = "1"\nkind = "python"\nentry = "plugin:predict"\n'
        '[labels]\n1 = "Bone"\n'
    )
    return folder / "model.toml"


def _scan(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), path)
    return path


def _files_with(key: str, folder: Path) -> list[str]:
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and key.lower().encode() in p.read_bytes().lower()
    ]


QUOTES_THE_KEY = """
    import os
    def predict(volume):
        raise RuntimeError("cannot reach " + os.environ["REDBRICK_API_KEY"])
"""


def test_a_models_error_quoting_the_key_is_masked_in_the_ledger_status_and_report(
    emulator: EmulatorHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The tasks fail with the model's message, ``***`` in place of the key, in the ledger
    file, ``status --json`` and the report."""
    for name, value in {
        "REDBRICK_URL": emulator.url,
        "REDBRICK_ORG_ID": emulator.org_id,
        "REDBRICK_PROJECT_ID": emulator.project_id,
        "REDBRICK_API_KEY": emulator.api_key,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    card = _card(tmp_path / "card", QUOTES_THE_KEY)
    work = tmp_path / "work"
    run = ["run", "--dry-run", "--limit", "1", "--model", str(card), "--work", str(work)]
    assert main(run) == 1
    assert main(["status", "--work", str(work), "--json"]) == 1  # it lists the failure
    assert main(["report", "--work", str(work)]) == 0
    out = capsys.readouterr()
    assert "cannot reach ***" in out.out + out.err
    assert "cannot reach ***" in (work / "report.html").read_text(encoding="utf-8")
    assert _files_with(emulator.api_key, work) == []
    assert emulator.api_key.lower() not in (out.out + out.err).lower()


def test_a_traceback_the_command_did_not_foresee_still_masks_the_key(tmp_path: Path) -> None:
    """A model error whose own text fails to print escapes as a traceback (exit 1); the key
    that text quotes is masked there too, though the interpreter prints tracebacks after
    the command's streams are gone."""
    key = "k3y-" + "x" * 20
    card = _card(
        tmp_path / "card",
        """
        import os
        class Unprintable(Exception):
            def __str__(self):
                raise RuntimeError("str of " + os.environ["REDBRICK_API_KEY"])
        def predict(volume):
            raise Unprintable()
        """,
    )
    ran = subprocess.run(
        [sys.executable, "-m", "autolabel", "predict", str(_scan(tmp_path / "a.nii.gz")),
         "--model", str(card), "--out", str(tmp_path / "o.nii.gz")],
        env={**os.environ, "REDBRICK_API_KEY": key}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert ran.returncode == 1
    assert "str of ***" in ran.stderr
    assert key not in ran.stdout + ran.stderr


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("import os\nraise RuntimeError('no weights here')\n", "RuntimeError: no weights here"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
        (
            "import sys\nclass predict:\n    def __init__(self, card, device):\n"
            "        sys.exit('gpu missing')\n",
            "SystemExit: gpu missing",
        ),
    ],
    ids=["raises-at-import", "exits-at-import", "exits-in-constructor"],
)
def test_a_card_whose_code_fails_while_loading_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, said: str
) -> None:
    """Exit 2 (a broken card is a configuration error), one line naming the card and what
    its code did; never a traceback, never the card's own exit code."""
    card = _card(tmp_path / "card", body)
    scan = _scan(tmp_path / "a.nii.gz")
    code = main(["predict", str(scan), "--model", str(card), "--out", str(tmp_path / "o.nii")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"model card {card}" in err and said in err and "Traceback" not in err
    assert not (tmp_path / "o.nii").exists()


@pytest.mark.parametrize("when", ["at-import", "in-predict"])
def test_a_model_that_changes_the_working_folder_does_not_move_the_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A relative ``--out`` lands in the folder the user ran from."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    move = f"os.chdir({str(elsewhere)!r})"
    card = _card(
        tmp_path / "card",
        f"""
        import os
        import numpy as np
        {move if when == "at-import" else ""}
        def predict(volume):
            {move if when == "in-predict" else ""}
            return np.zeros(volume.array.shape, np.uint8)
        """,
    )
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    _scan(here / "a.nii.gz")
    assert main(["predict", "a.nii.gz", "--model", str(card), "--out", "labels.nii.gz"]) == 0
    assert (here / "labels.nii.gz").is_file() and (here / "labels.png").is_file()
    assert list(elsewhere.iterdir()) == []
    assert Path.cwd() == here


def test_predict_refuses_an_out_it_cannot_write_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = _scan(tmp_path / "a.nii.gz")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "folder.nii.gz").mkdir()
    for out, said in [
        (tmp_path / "a-file" / "o.nii.gz", "cannot write in the --out folder"),
        (tmp_path / "folder.nii.gz", "is a folder"),
    ]:
        assert main(["predict", str(scan), "--model", "ct-threshold", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err


def test_report_never_overwrites_the_ledger_or_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report --out WORK/ledger.sqlite`` once replaced the ledger with HTML (exit 0): now a
    usage error, like a folder or an unwritable place; an earlier report is replaced."""
    work = tmp_path / "work"
    with Ledger(ledger_path(work)) as ledger:
        ledger.start_run(mode="dry-run", model=ModelKey("m", "1")).finish()
    before = ledger_path(work).read_bytes()
    (tmp_path / "a-file").write_text("x")
    for out, said in [
        (ledger_path(work), "is not an HTML report: refusing to overwrite it"),
        (work, "is a folder"),
        (tmp_path / "a-file" / "r.html", "cannot write in the --out folder"),
    ]:
        assert main(["report", "--work", str(work), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err
    assert ledger_path(work).read_bytes() == before
    again = ["report", "--work", str(work), "--out", str(tmp_path / "r.html")]
    assert main(again) == 0 and main(again) == 0
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def _framework_card(folder: Path, kind: str, option: str) -> Path:
    (folder / "model.toml").write_text(
        f'name = "broken"\nversion = "1"\nkind = "{kind}"\n[labels]\n1 = "Liver"\n'
        f'[options]\n{option} = "files"\n'
    )
    return folder / "model.toml"


def test_a_damaged_nnunet_folder_is_a_usage_error_naming_the_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("nnunetv2")
    (tmp_path / "files" / "fold_0").mkdir(parents=True)
    (tmp_path / "files" / "dataset.json").write_text("{}")
    (tmp_path / "files" / "plans.json").write_text("{damaged")
    card = _framework_card(tmp_path, "nnunet", "folder")
    scan = _scan(tmp_path / "a.nii.gz")
    code = main(["predict", str(scan), "--model", str(card), "--out", str(tmp_path / "o.nii")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"model card {card}: loading the nnU-Net folder failed (JSONDecodeError" in err


def test_a_monai_bundle_with_a_broken_inference_json_is_a_usage_error_naming_the_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("monai")
    import torch

    (tmp_path / "files" / "configs").mkdir(parents=True)
    (tmp_path / "files" / "models").mkdir()
    torch.save({}, tmp_path / "files" / "models" / "model.pt")
    (tmp_path / "files" / "configs" / "inference.json").write_text(
        '{"network": "$no_such_network()"}'
    )
    card = _framework_card(tmp_path, "monai-bundle", "bundle")
    scan = _scan(tmp_path / "a.nii.gz")
    code = main(["predict", str(scan), "--model", str(card), "--out", str(tmp_path / "o.nii")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"model card {card}: loading the MONAI bundle failed" in err
    assert "no_such_network" in err
