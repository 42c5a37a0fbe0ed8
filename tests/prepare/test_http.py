"""Sources over HTTP(S) from a real server (the standard library's, on loopback): a redirect
chain is followed, a downgrade to http is refused, a source over its size limit is refused without
being read whole, and a server that stalls is given up on after the HTTP timeout."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest

from modelops_trainer.prepare import pipeline, remote
from modelops_trainer.prepare.errors import SourceTooLarge, SourceUnreachable
from tests.prepare.conftest import config, run_cli
from tests.support.web import Site, redirect, self_signed, send_bytes, stall, stream

MIB = 1 << 20


def digits_site(root: Path) -> tuple[dict, list[str]]:
    """Routes serving `root`'s images under /img/, and /hop/<n>/list.csv: n redirects, then a
    manifest of every image (rows as absolute URLs, filled in once the port is known)."""
    rows: list[str] = []

    def image(h) -> None:
        send_bytes(h, (root / h.path.removeprefix("/img/")).read_bytes(), "image/png")

    def hop(h) -> None:
        _, _, n, rest = h.path.split("/", 3)
        if int(n) > 0:
            redirect(h, f"/hop/{int(n) - 1}/{rest}", code=301 if int(n) % 2 else 302)
        else:
            send_bytes(h, ("uri,label\n" + "".join(rows)).encode(), "text/csv")

    return {"/img/": image, "/hop/": hop}, rows


def test_a_chain_of_redirects_is_followed(tmp_path, small_digits):
    routes, rows = digits_site(small_digits)
    with Site(routes) as site:
        rows += [f"{site.url}/img/{p.relative_to(small_digits)},{p.parent.name}\n" for p in small_digits.rglob("*.png")]
        source = {"uri": f"{site.url}/hop/{remote.MAX_REDIRECTS}/list.csv", "format": "csv"}
        code, message = run_cli(config([source], tmp_path / "out"), tmp_path)
    assert code == 0, message
    assert message["images"] == 120
    assert [h for h in site.hits if h.startswith("/hop/")] == [
        f"/hop/{n}/list.csv" for n in range(remote.MAX_REDIRECTS, -1, -1)
    ]


def test_a_downgrade_from_https_to_http_is_refused(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the test's certificate
    with Site({"/": lambda h: send_bytes(h, b"uri,label\n")}) as plain:
        target = f"{plain.url}/list.csv"
        with Site({"/": lambda h: redirect(h, target)}, tls=(cert, key)) as secure:
            uri = f"{secure.url}/list.csv"
            with pytest.raises(SourceUnreachable) as refused:
                pipeline.run(config([{"uri": uri, "format": "csv"}], tmp_path / "out"))
    assert f"redirect from {uri} to {target} refused: a downgrade from https to http" in str(refused.value)
    assert plain.hits == []


@pytest.mark.parametrize(
    ("chain", "words"),
    [
        (
            ["http://93.184.216.34/a", "http://169.254.169.254/latest/meta-data/"],
            "from a public address to an internal",
        ),
        (["https://93.184.216.34/a", "https://127.0.0.1:8080/x"], "from a public address to an internal"),
        (["http://93.184.216.34/a", "http://10.0.0.7/x"], "from a public address to an internal"),
        (["https://93.184.216.34/a", "http://93.184.216.34/a"], "a downgrade from https to http"),
        (["http://10.0.0.7/a", "http://10.0.0.8/b"], None),  # inside the cluster, staying inside
        (["http://93.184.216.34/a", "https://93.184.216.35/b"], None),  # public to public, upgraded
    ],
)
def test_which_redirects_are_followed(chain, words):
    """The redirect rule on address literals (no DNS): a public source's server cannot steer the
    program inwards, to the metadata service, loopback or the cluster's private addresses."""
    problem = remote.redirect_problem(chain)
    assert (problem is None) if words is None else (words in (problem or "")), problem


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked"])
def test_a_large_manifest_is_refused_without_reading_it_all(tmp_path, declare):
    """64 MiB made on the fly against a 1 MiB limit: refused with the limit's name, and the
    server could not send it all (the reader stopped, or never started)."""
    sent: queue.Queue[int] = queue.Queue()
    size = 64 * MIB
    with Site({"/": lambda h: stream(h, size, declare=declare, sent=sent)}) as site:
        uri = f"{site.url}/big.csv"
        cfg = config([{"uri": uri, "format": "csv"}], tmp_path / "out", limits={"manifestMaxBytes": MIB})
        with pytest.raises(SourceTooLarge, match=rf"manifest {uri} is larger than {MIB} bytes"):
            pipeline.run(cfg)
        written = sent.get(timeout=60)  # once the handler has noticed that the client left
    assert written < size


@pytest.mark.parametrize("after_headers", [False, True], ids=["no-answer", "stalls-mid-body"])
@pytest.mark.parametrize("fmt", ["csv", "archive"])
def test_a_server_that_stalls_is_given_up_on_after_the_timeout(tmp_path, monkeypatch, after_headers, fmt):
    monkeypatch.setattr(remote, "HTTP_TIMEOUT_S", 0.5)
    release = threading.Event()
    with Site({"/": lambda h: stall(h, release, after_headers=after_headers)}) as site:
        uri = f"{site.url}/slow"
        try:
            code, message = run_cli(config([{"uri": uri, "format": fmt}], tmp_path / "out"), tmp_path)
        finally:
            release.set()
    assert code == 1 and message["reason"] == "SourceUnreachable", message
    assert f"{uri} sent nothing for 0.5 s (the HTTP timeout): timed out" in message["message"]
