"""Every user mistake ends the same way: one short ``error:`` message, exit code 2, no traceback, nothing lost."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
import torch

from test_cli import tiny_run_args

from sqdr.__main__ import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (config, metrics, checkpoints) that no bad command may touch."""
    runs = tmp_path_factory.mktemp("runs")
    main(["fit", *tiny_run_args(runs, "--trainer.max_epochs", "1", "--model.certify_engine", "none")])
    return runs


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def fails_cleanly(capsys, argv: list[str], *expected: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err[-2000:])
    return err


def idx_file(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + data)


def bad_cases(runs: Path, scratch: Path) -> list[tuple[str, list[str], tuple[str, ...]]]:
    checkpoint = runs / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    not_a_checkpoint = scratch / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    a_file = scratch / "a_file"
    a_file.write_text("x")
    old_syntax = scratch / "old.yaml"
    old_syntax.write_text("model:\n  optimizer: adam\n")
    fit = ["fit", *tiny_run_args(scratch / "runs")]
    return [
        ("abbreviated option", [*fit, "--trainer.max_ep", "2"], ("max_ep",)),
        ("negative qubit count", [*fit, "--model.net.init_args.n_qubits", "-1"], ("n_qubits", "-1")),
        ("unknown engine", [*fit, "--model.net.init_args.engine", "qiskit"], ("engine",)),
        ("unknown noise preset", [*fit, "--model.net.init_args.noise", "loud"], ("Unknown noise preset 'loud'",)),
        ("negative learning rate", [*fit, "--model.lr", "-0.01"], ("lr must be a positive, finite",)),
        ("overflowing learning rate", [*fit, "--model.lr", "1e400"], ("learning rate",)),
        ("runs dir is a file", [*fit, "--runs_dir", str(a_file)], ("cannot write to", str(a_file))),
        ("old optimizer syntax", [*fit, "--config", str(old_syntax)], ("earlier release", "torch.optim.Adam")),
        ("missing config file", ["fit", "--config", str(scratch / "nope.yaml")], ("nope.yaml",)),
        ("missing checkpoint", ["test", *tiny_run_args(runs, "--ckpt_path", str(scratch / "gone.ckpt"))], ("gone.ckpt",)),
        ("not a checkpoint", ["test", *tiny_run_args(runs, "--ckpt_path", str(not_a_checkpoint))], ("notes.ckpt",)),
        ("checkpoint contradicts an option",
         ["test", *tiny_run_args(runs, "--model.net.init_args.n_qubits", "5", "--ckpt_path", str(checkpoint))],
         ("n_qubits is 5", "n_qubits=3")),
        ("predict without a checkpoint file", ["predict", *tiny_run_args(runs, "--ckpt_path", str(scratch / "x.ckpt"))],
         ("x.ckpt",)),
        ("missing study file", ["sweep", str(scratch / "study.yaml")], ("study.yaml",)),
        ("study that is not a mapping", ["sweep", str(a_file)], (str(a_file),)),
        ("noise without a checkpoint", ["noise", "--ckpt", str(scratch / "none")], ("none",)),
        ("noise level outside [0, 1]", ["noise", "--ckpt", str(checkpoint), "--levels", "[2]"], ("levels",)),
        ("noise output is a file", ["noise", "--ckpt", str(checkpoint), "--out", str(a_file)], (str(a_file),)),
        ("report of nothing", ["report", str(scratch / "nothing")], ("nothing",)),
        ("bench of an unknown measurement", ["bench", "--only", "[warp_drive]"], ("warp_drive",)),
        ("unknown command", ["train"], ("unknown command 'train'",)),
    ]  # fmt: skip


def test_twenty_bad_inputs_each_end_in_one_clear_error_and_change_nothing(trained, tmp_path, capsys):
    cases = bad_cases(trained, tmp_path)
    assert len(cases) >= 20
    before = snapshot(trained)
    for name, argv, expected in cases:
        fails_cleanly(capsys, argv, *expected)
        assert snapshot(trained) == before, f"{name} changed an existing file"
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_a_diverging_run_stops_with_exit_2_and_writes_no_checkpoint(tmp_path, capsys):
    err = fails_cleanly(capsys, ["fit", *tiny_run_args(tmp_path, "--model.lr", "1e30", "--trainer.max_epochs", "2")],
                        "became", "learning rate is probably too large")  # fmt: skip
    assert "step" in err
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("damage", ["truncated archive", "bad magic number", "wrong size"])
def test_damaged_data_files_are_named_and_leave_no_partial_file(tmp_path, capsys, damage):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = torch.randint(0, 255, (4, 28, 28), dtype=torch.uint8).numpy().tobytes()
    for split, n in (("train", 4), ("t10k", 4)):
        idx_file(raw / f"{split}-labels-idx1-ubyte", 2049, (n,), bytes(range(n)))
        idx_file(raw / f"{split}-images-idx3-ubyte", 2051, (n, 28, 28), images)
    broken = raw / "train-images-idx3-ubyte"
    if damage == "truncated archive":
        archive = gzip.compress(broken.read_bytes())
        broken.unlink()
        (raw / "train-images-idx3-ubyte.gz").write_bytes(archive[: len(archive) // 2])
    elif damage == "bad magic number":
        idx_file(broken, 1234, (4, 28, 28), images)
    else:
        idx_file(broken, 2051, (4, 28, 28), images[:-100])
    args = ["--data", "sqdr.data.FashionMNISTDataModule", "--data.root", str(tmp_path / "data"), "--data.download", "false"]
    err = fails_cleanly(capsys, ["fit", *tiny_run_args(tmp_path / "runs"), *args], "damaged", "delete")
    assert "train-images-idx3-ubyte" in err or str(raw) in err
    assert not [p for p in raw.rglob("*") if p.name.endswith(".part") or p.name.startswith(".")]
