"""Sources and output on S3: a real S3-compatible server (moto's, over HTTP on loopback)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

import pytest

from modelops_trainer.datasetfmt import SPLITS, DatasetReader
from modelops_trainer.prepare import pipeline
from modelops_trainer.prepare.errors import SourceUnreachable
from tests.prepare.conftest import config, write_digits
from tests.support.s3 import S3Server


@pytest.fixture(scope="module")
def s3() -> Iterator[object]:
    server = S3Server().start()
    patch = pytest.MonkeyPatch()
    for key, value in server.env.items():
        patch.setenv(key, value)  # what a Dataset's credentialsSecret puts in the pod's environment
    yield server.bucket("data")
    server.stop()
    patch.undo()


def test_an_s3_folder_and_archive_become_a_version_on_s3(s3, tmp_path):
    src = tmp_path / "src"
    write_digits(src, per_class=15)
    s3.put(str(src / "1"), "data/digits/1", recursive=True)
    s3.put(str(src / "2"), "data/digits/2", recursive=True)
    with tarfile.open(tmp_path / "more.tar.gz", "w:gz") as tar:
        tar.add(src / "3", arcname="3")
    s3.put(str(tmp_path / "more.tar.gz"), "data/more.tar.gz")
    cfg = config([{"uri": "s3://data/digits"}, {"uri": "s3://data/more.tar.gz", "format": "archive"}], tmp_path)
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"uri": "s3://data/datasets/digits"})})
    result = pipeline.run(cfg)
    assert result.version.uri == f"s3://data/datasets/digits/{result.version.version}"
    assert s3.exists(f"data/datasets/digits/{result.version.version}/manifest.json")
    reader = DatasetReader(result.version.uri, digest=result.version.digest)
    assert reader.manifest.classes == ["1", "2", "3"]
    assert sum(1 for s in SPLITS for _ in reader.iter_split(s)) == 45


def test_a_missing_bucket_is_unreachable(s3, tmp_path):
    with pytest.raises(SourceUnreachable, match="s3://nowhere/digits"):
        pipeline.run(config("s3://nowhere/digits", tmp_path / "out"))
