"""The jobs launcher Lambda against moto's EC2 and a real Redis for run state.

moto cannot boot an instance, so `test_the_instance_runs_the_job_and_powers_off` stands in
for it: it decodes the user-data the instance was given and runs that script here, with
`healthsync` from this checkout and a power-off that only leaves a mark. That is the one
stand-in for something that cannot run here, an EC2 instance.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from redis import Redis

from healthsync.aws import lambda_jobs
from healthsync.aws.package import build
from healthsync.config import Settings
from healthsync.store.runs import RunStore
from tests.aws.conftest import MotoServer


@pytest.fixture
def ec2(aws: MotoServer) -> Any:
    return boto3.client("ec2")


@pytest.fixture
def template(ec2: Any) -> str:
    name = f"healthsync-jobs-{uuid.uuid4().hex[:8]}"
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": image, "InstanceType": "t3.large"}
    )
    return name


@pytest.fixture
def lambda_env(
    settings: Settings, template: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    assert settings.redis.url
    monkeypatch.setenv("HEALTHSYNC_JOBS_LAUNCH_TEMPLATE", template)
    monkeypatch.setenv("HEALTHSYNC_JOBS_STATE_URL", settings.redis.url)
    monkeypatch.setenv("HEALTHSYNC_REDIS_PREFIX", settings.redis.prefix)
    settings.jobs.output_url = f"file://{tmp_path / 'archive'}"
    return settings


def instances(ec2: Any, run_id: str) -> list[dict[str, Any]]:
    found = ec2.describe_instances(Filters=[{"Name": "tag:healthsync:run-id", "Values": [run_id]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


def run_worker(
    ec2: Any, answer: dict[str, Any], tmp_path: Path, env: dict[str, str], healthsync: str
) -> subprocess.CompletedProcess[str]:
    """The launched instance's user-data, run here as the instance would (the stand-in for
    the EC2 instance, see the module docstring), with `healthsync` as its command; it
    powers off by touching `powered-off`."""
    encoded = ec2.describe_instance_attribute(
        InstanceId=answer["instance_id"], Attribute="userData"
    )["UserData"]["Value"]
    script = tmp_path / "user-data.sh"
    script.write_bytes(base64.b64decode(encoded))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    clean |= env | {
        "HEALTHSYNC_BIN": healthsync,
        "HEALTHSYNC_POWEROFF": f"touch {tmp_path / 'powered-off'}",
    }
    return subprocess.run(
        ["bash", str(script)], env=clean, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_handler_launches_from_the_template_with_tags_and_terminate_on_shutdown(
    lambda_env: Settings, ec2: Any, template: str, redis: Redis
) -> None:
    answer = lambda_jobs.handler({"job": "alarm-report", "run_id": "aws-1"})
    assert answer["ok"] is True
    [instance] = instances(ec2, "aws-1")
    assert answer["instance_id"] == instance["InstanceId"]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    [made] = ec2.describe_launch_templates(LaunchTemplateNames=[template])["LaunchTemplates"]
    assert tags["aws:ec2launchtemplate:id"] == made["LaunchTemplateId"]
    assert (tags["healthsync:job"], tags["healthsync:run-id"]) == ("alarm-report", "aws-1")
    assert instance["InstanceType"] == "t3.large"
    behaviour = ec2.describe_instance_attribute(
        InstanceId=instance["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
    )
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    record = RunStore(redis, lambda_env.redis.keys).get("aws-1")
    assert record is not None
    assert (record.status, record.runner, record.worker) == ("queued", "aws", answer["instance_id"])


def test_the_instance_runs_the_job_and_powers_off(
    lambda_env: Settings, ec2: Any, redis: Redis, tmp_path: Path
) -> None:
    answer = lambda_jobs.handler({"job": "alarm-report", "run_id": "aws-2", "until": 1.8e9})
    done = run_worker(ec2, answer, tmp_path, lambda_env.to_env(), f"{sys.executable} -m healthsync")
    assert done.returncode == 0, done.stderr
    assert "healthsync job alarm-report run aws-2 exited with status 0" in done.stdout
    assert (tmp_path / "powered-off").exists()
    record = RunStore(redis, lambda_env.redis.keys).get("aws-2")
    assert record is not None
    assert (record.status, record.exit_code, record.runner, record.trigger) == (
        "succeeded",
        0,
        "aws",
        "lambda",
    )
    assert record.worker == answer["instance_id"]
    assert record.params["until"] == 1.8e9
    assert (tmp_path / "archive/jobs/alarm-report/aws-2/report.json").exists()
    assert RunStore(redis, lambda_env.redis.keys).holder("alarm-report") is None


def test_a_worker_that_outlives_the_job_timeout_is_stopped_and_powers_off(
    lambda_env: Settings, ec2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jobs.timeout_s bounded local runs only: on EC2 a job that hung kept its instance
    running for good, and once its lock expired the next slot started a second worker."""
    monkeypatch.setenv("HEALTHSYNC_JOBS_TIMEOUT_S", "2")
    answer = lambda_jobs.handler({"job": "alarm-report", "run_id": "aws-hung"})
    hung = tmp_path / "hung-job"  # the stand-in for a job that never ends
    hung.write_text("#!/bin/sh\nsleep 60\n")
    hung.chmod(0o755)
    done = run_worker(ec2, answer, tmp_path, {}, str(hung))
    assert done.returncode == 124, done.stderr
    assert "healthsync job alarm-report run aws-hung exited with status 124" in done.stdout
    assert (tmp_path / "powered-off").exists()


def test_a_second_concurrent_run_is_refused(lambda_env: Settings, ec2: Any) -> None:
    first = lambda_jobs.handler({"job": "alarm-report", "run_id": "aws-3"})
    second = lambda_jobs.handler({"job": "alarm-report", "run_id": "aws-4"})
    assert first["ok"] is True
    assert second == {
        "ok": False,
        "busy": True,
        "error": "job alarm-report is already running (run aws-3)",
    }
    assert len(instances(ec2, "aws-3")) == 1
    assert instances(ec2, "aws-4") == []


def test_a_missing_template_is_a_clear_error_not_a_retry(
    lambda_env: Settings, ec2: Any, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEALTHSYNC_JOBS_LAUNCH_TEMPLATE", "no-such-template")
    answer = lambda_jobs.handler({"job": "alarm-report", "run_id": "aws-5"})
    assert answer == {"ok": False, "error": "launch template 'no-such-template' does not exist"}
    runs = RunStore(redis, lambda_env.redis.keys)
    record = runs.get("aws-5")
    assert record is not None and record.status == "failed"
    assert runs.holder("alarm-report") is None
    monkeypatch.delenv("HEALTHSYNC_JOBS_LAUNCH_TEMPLATE")
    assert lambda_jobs.handler({"job": "alarm-report"}) == {
        "ok": False,
        "error": "HEALTHSYNC_JOBS_LAUNCH_TEMPLATE is not set",
    }


def test_a_bad_event_is_refused(lambda_env: Settings) -> None:
    answer = lambda_jobs.handler({"job": "alarm-report; rm -rf /"})
    assert answer["ok"] is False
    assert answer["error"].startswith("the event names no valid job")


def test_the_package_runs_the_handler_on_its_own(
    lambda_env: Settings, ec2: Any, redis: Redis, tmp_path: Path
) -> None:
    """The zip, with only the libraries the Lambda runtime has (boto3), launches a run."""
    zip_path = build(tmp_path / "one.zip")
    assert build(tmp_path / "two.zip").read_bytes() == zip_path.read_bytes()
    names = zipfile.ZipFile(zip_path).namelist()
    assert "healthsync/aws/lambda_jobs.py" in names and "redis/__init__.py" in names
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for module in ("boto3", "botocore", "jmespath", "dateutil", "urllib3", "s3transfer", "six"):
        found = __import__(module)
        origin = Path(str(found.__file__))
        target = origin.parent if origin.name == "__init__.py" else origin
        (runtime / target.name).symlink_to(target)
    code = (
        "import json, sys; sys.path[:0] = sys.argv[1:3]; "
        "from healthsync.aws.lambda_jobs import handler; "
        "print(json.dumps(handler({'job': 'alarm-report', 'run_id': 'zip-1'})))"
    )
    # -S: no site-packages, so only the zip and the runtime's libraries can be imported.
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(zip_path), str(runtime)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"] is True
    assert [i["InstanceId"] for i in instances(ec2, "zip-1")] == [answer["instance_id"]]
