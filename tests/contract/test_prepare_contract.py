"""The operator and the preparation program agree on the config and on the result.

Neither imports the other (separate distributions and images); these tests feed one side's output
to the other side's model, so a change on one side that breaks the other fails here.
"""

from __future__ import annotations

import json

from modelops_operator.api.dataset import Augmentation, Cleaning, DatasetSpec, Preprocessing, Split
from modelops_operator.builders.dataset import CONFIG_ENV, build_prepare_job
from modelops_operator.reconcile.dataset import PrepareResult
from modelops_operator.settings import OperatorSettings
from modelops_trainer.datasetfmt import AugmentationPolicy
from modelops_trainer.prepare import config as program
from modelops_trainer.prepare.__main__ import summary
from tests.prepare.conftest import config, pipeline, write_digits
from tests.support.objects import dataset


def test_the_operators_config_is_the_programs_config():
    body = dataset("digits").set("spec.augmentation", {"autoAugment": "trivialAugment", "rotationDegrees": 15})
    body = body.set("spec.sources", [{"uri": "s3://b/pets.tar.gz", "format": "archive", "credentialsSecret": "c"}])
    obj = body.obj()
    obj["metadata"].update(namespace="ml", uid="u")
    job = build_prepare_job(obj, DatasetSpec.model_validate(obj["spec"]), OperatorSettings())
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    parsed = program.PrepareConfig.model_validate(json.loads(next(e["value"] for e in env if e["name"] == CONFIG_ENV)))
    assert parsed.sources[0].format == "archive"
    assert parsed.augmentation.auto_augment == "trivialAugment" and parsed.augmentation.rotation_degrees == 15
    assert parsed.dataset.namespace == "ml"


def test_defaults_agree():
    pairs = [
        (Augmentation(), AugmentationPolicy()),
        (Cleaning(), program.Cleaning()),
        (Preprocessing(), program.Preprocessing()),
        (Split(), program.Split()),
    ]
    for operator_side, program_side in pairs:
        assert operator_side.wire() == program_side.model_dump(by_alias=True, mode="json"), type(operator_side)


def test_the_programs_summary_is_what_the_operator_reads(tmp_path):
    write_digits(tmp_path / "src", per_class=10)
    doc = summary(pipeline.run(config(f"file://{tmp_path / 'src'}", tmp_path / "out")))
    result = PrepareResult.model_validate(json.loads(json.dumps(doc)))
    assert result.ok and result.images == 100 and result.classes == 10
    assert result.splits["train"].total + result.splits["val"].total + result.splits["test"].total == 100
    assert result.digest == doc["digest"] and result.version == doc["version"]
