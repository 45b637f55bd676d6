"""The CloudFormation templates in deploy/aws pass cfn-lint and agree with the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

from healthsync.aws import cloudwatch, lambda_jobs, object_lambda
from healthsync.names import JOBS
from healthsync.store.archive import encryption

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "aws"
TEMPLATES = sorted(DEPLOY.glob("*.yaml"))


def load(name: str) -> Any:
    template, problems = decode(str(DEPLOY / name))
    assert not problems, problems
    return template


def test_every_template_passes_cfn_lint() -> None:
    assert [t.name for t in TEMPLATES] == [
        "archive.yaml",
        "compute.yaml",
        "data.yaml",
        "monitoring.yaml",
        "network.yaml",
    ]
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [str(cfn_lint), *map(str, TEMPLATES)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alarms_watch_metrics_the_exporter_sends() -> None:
    sent = re.findall(r"^\| (\w+) \| (\w+)", cloudwatch.__doc__ or "", re.MULTILINE)
    exported = {(name, stage) for name, stage in sent if name != "metric"}
    resources = load("monitoring.yaml")["Resources"]
    watched = set()
    for resource in resources.values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        stats = [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        for metric in [props, *stats]:
            if "MetricName" in metric:
                assert metric["Namespace"] == "HealthSync"
                stage = {d["Name"]: d["Value"] for d in metric["Dimensions"]}["Stage"]
                watched.add((metric["MetricName"], stage))
    assert watched == {
        ("ConsumerLag", "processor"),
        ("ReadingsRejected", "ingest"),
        ("ReadingsIngested", "ingest"),
        ("JobFailures", "jobs"),
        ("EndToEndLatencyP99", "processor"),
    }
    assert watched <= exported


def test_workers_terminate_on_shutdown_and_the_launcher_is_configured_as_the_code_reads_it() -> (
    None
):
    resources = load("compute.yaml")["Resources"]
    worker = resources["WorkerTemplate"]["Properties"]["LaunchTemplateData"]
    assert worker["InstanceInitiatedShutdownBehavior"] == "terminate"
    launcher = resources["Launcher"]["Properties"]
    assert launcher["Handler"] == "healthsync.aws.lambda_jobs.handler"
    variables = set(launcher["Environment"]["Variables"])
    for name in ("HEALTHSYNC_JOBS_LAUNCH_TEMPLATE", "HEALTHSYNC_JOBS_STATE_URL"):
        assert name in variables and name in (lambda_jobs.__doc__ or "")


def test_the_security_groups_mirror_the_host_firewall() -> None:
    """Devices reach only the ingest TLS port, clinicians only the API (ops/firewall.sh)."""
    groups = load("network.yaml")["Resources"]
    params = load("network.yaml")["Parameters"]
    ingest = groups["IngestSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    api = groups["ApiSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert {r["CidrIp"]["Ref"] for r in ingest} == {"DeviceCidr", "VpcCidr"}
    assert all(r["FromPort"]["Ref"] == "IngestTlsPort" for r in ingest)
    assert [r["CidrIp"]["Ref"] for r in api] == ["ClinicianCidr"]
    assert (params["IngestTlsPort"]["Default"], params["ApiPort"]["Default"]) == (7443, 8000)
    for store in ("KafkaSecurityGroup", "RedisSecurityGroup"):
        rules = groups[store]["Properties"]["SecurityGroupIngress"]
        assert all("CidrIp" not in r for r in rules), f"{store} must admit HealthSync hosts only"


def _imports(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Fn::ImportValue":
                yield value["Fn::Sub"]
            else:
                yield from _imports(value)
    elif isinstance(node, list):
        for value in node:
            yield from _imports(value)


def test_every_cross_stack_import_names_an_export_of_the_stack_it_names() -> None:
    stacks = {"NetworkStack": "network", "DataStack": "data", "ArchiveStack": "archive"}
    exports = {
        stack: {
            output["Export"]["Name"]["Fn::Sub"].removeprefix("${AWS::StackName}-")
            for output in load(f"{name}.yaml")["Outputs"].values()
            if "Export" in output
        }
        for stack, name in stacks.items()
    }
    seen = set()
    for path in TEMPLATES:
        for name in _imports(load(path.name)["Resources"]):
            stack, export = name.removeprefix("${").split("}-", 1)
            assert export in exports[stack], f"{path.name} imports {name}, which nothing exports"
            seen.add((stack, export))
    assert ("ArchiveStack", "ArchiveBucketArn") in seen and ("DataStack", "DataKeyArn") in seen


def test_the_object_lambda_is_configured_as_the_code_reads_it() -> None:
    resources = load("archive.yaml")["Resources"]
    function = resources["DeidentifyFunction"]["Properties"]
    assert function["Handler"] == "healthsync.aws.object_lambda.handler"
    variables = set(function["Environment"]["Variables"])
    assert object_lambda.SECRET_ENV in variables
    assert all(name in (object_lambda.__doc__ or "") for name in variables)
    # The role may unwrap Parquet data keys only under the context the archive binds them to.
    [(name, value)] = encryption._CONTEXT.items()
    statements = resources["DeidentifyRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    conditions = [s.get("Condition", {}) for s in statements["Statement"]]
    assert {"StringEquals": {f"kms:EncryptionContext:{name}": value}} in conditions
    olap = resources["ResearchAccessPoint"]["Properties"]["ObjectLambdaConfiguration"]
    [transform] = olap["TransformationConfigurations"]
    assert transform["Actions"] == ["GetObject"] and "AllowedFeatures" not in olap


def test_eventbridge_schedules_every_job_but_reprocess_with_a_permission() -> None:
    resources = load("compute.yaml")["Resources"]
    rules = {
        name: json.loads(resource["Properties"]["Targets"][0]["Input"])["job"]
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Events::Rule"
    }
    # reprocess needs a candidate rule set, so it only runs on demand.
    assert sorted(rules.values()) == sorted(set(JOBS) - {"reprocess"})
    allowed = {
        resource["Properties"]["SourceArn"]["Fn::GetAtt"][0]
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::Permission"
        and resource["Properties"]["Principal"] == "events.amazonaws.com"
    }
    assert set(rules) <= allowed
