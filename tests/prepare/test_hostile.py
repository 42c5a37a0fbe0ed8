"""Hostile sources: archive bombs, archives that fight the file system, manifests that point
elsewhere, files too large. The program runs as the Job runs it (a child process, config in the
environment, summary in the termination log) and its peak memory is measured by the kernel."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from modelops_trainer import cgroup
from modelops_trainer.prepare import pipeline
from modelops_trainer.prepare.errors import ArchiveTooLarge, InvalidSource, SourceTooLarge, UnsafeArchive
from modelops_trainer.prepare.remote import read_capped
from tests.prepare.conftest import config, run_cli

MIB = 1 << 20
#: Peak RSS the program may reach on these inputs: the interpreter with numpy and Pillow is about
#: 100 MiB. Reading a bomb or a large archive into memory, as the program once did, goes far past it.
RSS_BOUND = 200 * MIB

#: The child reports its children's peak RSS (the program and its workers), in KiB on Linux.
MEASURE = """
import resource, subprocess, sys
code = subprocess.call([sys.executable, "-m", "modelops_trainer.prepare", "--termination-log", sys.argv[1]])
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def run_measured(cfg: Any, tmp: Path) -> tuple[int, int, dict[str, Any]]:
    """(exit status, peak RSS in bytes, termination message) of the program in a child process."""
    term = tmp / "termination-log"
    env = {**os.environ, "MODELOPS_PREPARE_CONFIG": cfg.model_dump_json(by_alias=True)}
    out = (
        subprocess.run([sys.executable, "-c", MEASURE, str(term)], env=env, capture_output=True, text=True, check=True)
        .stdout.splitlines()[-1]
        .split()
    )
    return int(out[0]), int(out[1]), json.loads(term.read_text())


def zeros(size: int) -> io.BufferedIOBase:
    """A file object of `size` zero bytes, produced as it is read."""

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    return io.BufferedReader(Zeros())


def gz_bomb(path: Path, size: int) -> Path:
    """A tar.gz of one `size`-byte member of zeros (it compresses about 1000 times)."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bomb/0/zeros.png")
        info.size = size
        tar.addfile(info, zeros(size))
    return path


def zip_bomb(path: Path, size: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("0/zeros.png", "w", force_zip64=True) as f:
        block = bytes(MIB)
        for _ in range(size // MIB):
            f.write(block)
    return path


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_compression_bomb_is_refused_in_flat_memory(tmp_path, kind):
    make = gz_bomb if kind == "tar.gz" else zip_bomb
    bomb = make(tmp_path / f"bomb.{kind}", 512 * MIB)
    assert bomb.stat().st_size < 1 * MIB

    code, peak, message = run_measured(
        config([{"uri": f"file://{bomb}", "format": "archive"}], tmp_path / "out"), tmp_path
    )

    assert code == 1 and message["reason"] == "ArchiveTooLarge", message
    assert "expands more than 100 times" in message["message"] and "spec.limits.archiveMaxRatio" in message["message"]
    assert peak < RSS_BOUND, f"peak RSS {peak / MIB:.0f} MiB"
    assert not (tmp_path / "out").exists()


def test_a_large_genuine_archive_is_extracted_without_holding_it_in_memory(tmp_path, small_digits):
    """A 300 MiB tar (a random 300 MiB file beside the images: incompressible, so no bomb) is
    prepared with memory far below its size; the large file is dropped unread (TooLarge)."""
    noise = small_digits / "0" / "noise.png"
    with noise.open("wb") as f:
        for _ in range(300):
            f.write(os.urandom(MIB))
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(small_digits, arcname="digits")
    noise.unlink()

    code, peak, message = run_measured(
        config([{"uri": f"file://{archive}", "format": "archive"}], tmp_path / "out"), tmp_path
    )

    assert code == 0, message
    assert message["images"] == 120 and message["dropped"] == {"TooLarge": 1}
    assert peak < RSS_BOUND, f"peak RSS {peak / MIB:.0f} MiB for a {archive.stat().st_size / MIB:.0f} MiB archive"


def tar_of(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_too_many_members_and_too_many_bytes_are_refused_with_the_limit(tmp_path):
    many = tar_of(tmp_path / "many.tar", [(f"a/{i}.png", b"x") for i in range(50)])
    big = tar_of(tmp_path / "big.tar", [("a/big.png", bytes(3 * MIB))])
    cases = [
        (many, {"archiveMaxMembers": 10}, "more than 10 members"),
        (big, {"archiveMaxBytes": MIB}, f"more than {MIB} bytes"),
    ]
    for archive, limits, words in cases:
        cfg = config([{"uri": f"file://{archive}", "format": "archive"}], tmp_path / "out", limits=limits)
        with pytest.raises(ArchiveTooLarge, match=words):
            pipeline.run(cfg)


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ([(".", b"root")], "is the archive's root"),
        ([("a/x.png", b"1"), ("a/x.png", b"2")], "clashes with another member"),
        ([("a", b"file"), ("a/x.png", b"2")], "clashes with another member"),
        ([("../x.png", b"1")], "escapes the archive's root"),
    ],
)
def test_an_archive_that_fights_the_file_system_fails_with_a_termination_message(tmp_path, members, words):
    archive = tar_of(tmp_path / "odd.tar", members)

    code, message = run_cli(config([{"uri": f"file://{archive}", "format": "archive"}], tmp_path / "out"), tmp_path)

    assert code == 1 and message["reason"] == UnsafeArchive.reason
    assert words in message["message"]


def test_manifest_rows_may_only_point_where_the_sources_do(tmp_path, small_digits):
    secret = tmp_path.parent / f"{tmp_path.name}-secret.png"
    secret.write_bytes((small_digits / "1").iterdir().__next__().read_bytes())
    folder = tmp_path / "m"
    folder.mkdir()
    for row in (str(secret), "../" + secret.name, "http://169.254.169.254/latest/meta-data/x.png"):
        (folder / "list.csv").write_text(f"uri,label\n{row},a\n")
        with pytest.raises(InvalidSource, match="row 1 points outside the Dataset's sources"):
            pipeline.run(config([{"uri": f"file://{folder}/list.csv", "format": "csv"}], tmp_path / "out"))


def test_an_oversized_manifest_and_image_are_refused(tmp_path, small_digits):
    rows = "".join(f"{p},{p.parent.name}\n" for p in sorted(small_digits.rglob("*.png")))
    (small_digits / "list.csv").write_text("uri,label\n" + rows)
    with pytest.raises(SourceTooLarge, match=r"spec\.limits\.manifestMaxBytes"):
        pipeline.run(
            config(
                [{"uri": f"file://{small_digits}/list.csv", "format": "csv"}],
                tmp_path / "o1",
                limits={"manifestMaxBytes": 100},
            )
        )
    limits = {"imageMaxBytes": 200}  # the digits are 150 to 300 bytes
    result = pipeline.run(
        config(f"file://{small_digits}", tmp_path / "o2", limits=limits, cleaning={"minImagesPerClass": 1})
    )
    assert result.dropped["TooLarge"] > 0


@pytest.mark.parametrize(
    ("content", "limit", "expected"),
    [(b"x" * 100, 100, b"x" * 100), (b"x" * 101, 100, None), (b"", 0, b"")],
)
def test_a_local_image_is_read_up_to_its_limit(tmp_path, content, limit, expected):
    (tmp_path / "image").write_bytes(content)
    for uri in (f"file://{tmp_path}/image", f"{tmp_path}/image"):
        assert read_capped(uri, limit) == expected


def test_a_device_that_never_ends_is_read_only_to_the_limit():
    assert read_capped("/dev/zero", 1 << 20) is None  # no size to trust: read in blocks, stopped past the limit
    assert read_capped("file:///dev/null", 10) == b""


@pytest.mark.parametrize(
    ("cpu_max", "memory_max", "workers"),
    [
        ("200000 100000", "4294967296", 2),
        ("max 100000", "max", None),
        ("400000 100000", "1610612736", 2),
        ("50000 100000", "max", 1),
    ],
)
def test_the_worker_pool_follows_the_containers_limits(tmp_path, cpu_max, memory_max, workers):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    (tmp_path / "memory.max").write_text(memory_max + "\n")
    cores = len(os.sched_getaffinity(0))
    expected = workers if workers is not None else cores
    assert pipeline.default_workers(cgroup.cpu_limit(tmp_path), cgroup.memory_limit(tmp_path)) == min(expected, cores)


def test_a_class_that_cleaning_empties_fails_the_run_instead_of_vanishing(tmp_path, small_digits):
    for p in (small_digits / "7").iterdir():
        p.write_bytes(b"not an image")  # every 7 is dropped as Undecodable

    code, message = run_cli(config(f"file://{small_digits}", tmp_path / "out"), tmp_path)

    assert code == 1 and message["reason"] == "EmptyClass"
    assert message["message"] == "classes with fewer than 1 images after cleaning: 7 (0)"


def test_a_split_without_a_class_is_reported(tmp_path, small_digits):
    """12 images a class and a 10% test split: some classes have no test image. The version is
    published, and the summary names them (the operator turns them into a Degraded condition)."""
    code, message = run_cli(config(f"file://{small_digits}", tmp_path / "out"), tmp_path)

    assert code == 0
    per_class = message["splits"]["test"]["perClass"]
    lacking = sorted(c for c in map(str, range(10)) if per_class.get(c, 0) == 0)
    assert lacking and message["missing"]["test"] == lacking
    assert "train" not in message["missing"]


def test_an_unforeseen_failure_still_leaves_a_termination_message(tmp_path, small_digits, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "list_items", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_cli(config(f"file://{small_digits}", tmp_path / "out"), tmp_path)
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message == {"ok": False, "reason": "InternalError", "message": "RuntimeError: disk on fire"}


def test_a_redirect_loop_or_a_long_chain_is_refused(tmp_path):
    """The source's server answers with redirects forever, or in a circle: the program gives up
    after `remote.MAX_REDIRECTS` (or at the first repeat) and says which, for manifests and archives."""
    from modelops_trainer.prepare import remote  # noqa: PLC0415

    hits: list[str] = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            n = int(self.path.rsplit("/", 1)[-1])
            self.send_response(302)
            # /loop/<n> points at itself; /far/<n> at /far/<n + 1>, forever
            self.send_header("Location", self.path if self.path.startswith("/loop/") else f"/far/{n + 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    cases = [
        ({"uri": f"{uri}/loop/0", "format": "csv"}, f"redirect loop: {uri}/loop/0 -> {uri}/loop/0"),
        (
            {"uri": f"{uri}/far/0", "format": "archive"},
            f"more than {remote.MAX_REDIRECTS} redirects from {uri}/far/0 (the last to {uri}/far/6)",
        ),
    ]
    try:
        for source, words in cases:
            code, message = run_cli(config([source], tmp_path / "out"), tmp_path)
            assert code == 1 and message["reason"] == "SourceUnreachable", message
            assert words in message["message"] and "RedirectRefused" in message["message"]
    finally:
        server.shutdown()
        server.server_close()
    assert hits == ["/loop/0", *(f"/far/{n}" for n in range(remote.MAX_REDIRECTS + 1))]
