"""Step 5 of a deploy: upload the package and run a CloudFormation change set.

What ``aws cloudformation package`` + ``deploy`` do, done with boto3 so that
the same code runs against moto in the tests: the Lambda zip and the template
go to a private deploy-artifacts bucket, a change set is created, printed and
executed, and ``sourcedir.tar.gz`` goes to the data bucket.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from breedline.build.paths import APP_DIR
from breedline.deploy.packaging import STABLE_VARIANT, Log, Package, package
from breedline.deploy.stage import (
    STAGE_TAG,
    DeployError,
    artifacts_bucket_name,
    check_no_overlap,
    check_stack_name,
    data_bucket_name,
    default_stack_name,
)
from breedline.deploy.template import CAPABILITIES, point_code_at

#: A template rewrite applied before upload (the tests expand SAM for moto).
Expand = Callable[[dict[str, Any], dict[str, str]], dict[str, Any]]
#: Stack states a change set cannot leave: the stack must be destroyed first.
_FAILED_STATES = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED")


@dataclass
class DeployTarget:
    """Where one deploy goes: the account's stack and its two buckets."""

    stage_name: str
    stack: str
    account: str
    region: str
    cfn: Any
    s3: Any

    @property
    def data_bucket(self) -> str:
        return data_bucket_name(self.stack, self.account, self.region)

    @property
    def artifacts_bucket(self) -> str:
        return artifacts_bucket_name(self.stack, self.account, self.region)


def deploy(
    stage_name: str,
    *,
    region: str,
    stack_name: str | None = None,
    alert_email: str = "",
    overrides: dict[str, str] | None = None,
    session: Any = None,
    expand: Expand | None = None,
    app_dir: Path = APP_DIR,
    out_dir: Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Package, then create and execute a change set; return the stack's outputs.

    Before packaging it reads what the account already has (a live stack, a
    data bucket kept by an earlier destroy, the endpoint's variant), because
    the stack parameters depend on it. Then it uploads the artifacts, creates,
    prints and executes the change set, and uploads ``sourcedir.tar.gz``:
    before the change set when the data bucket exists already, so that the
    Lambdas never point at missing code, otherwise right after it.

    ``expand`` rewrites the template before it is uploaded; only the tests use
    it, to expand SAM locally (moto's CloudFormation has no SAM transform).
    AWS expands SAM itself.
    """
    import boto3

    session = session or boto3.session.Session(region_name=region)
    stack = check_stack_name(stack_name or default_stack_name(stage_name))
    account = session.client("sts").get_caller_identity()["Account"]
    cfn, s3 = session.client("cloudformation"), session.client("s3")
    target = DeployTarget(stage_name, stack, account, region, cfn, s3)
    check_no_overlap(stack, breedline_stacks(cfn))
    existing = existing_stack(target)
    bucket_exists = data_bucket_exists(target, existing, log)
    variant = endpoint_variant(session.client("sagemaker"), stack, log)
    pkg = package(
        stage_name,
        region=region,
        account=account,
        stack_name=stack,
        alert_email=alert_email,
        data_bucket_exists=bucket_exists,
        endpoint_variant=variant,
        overrides=overrides,
        app_dir=app_dir,
        out_dir=out_dir,
        log=log,
    )
    body, template_url = upload_artifacts(target, pkg, expand)
    code_first = bool(existing or bucket_exists)
    if code_first:
        upload_code(target, pkg)
    run_change_set(target, pkg, body, template_url, update=existing is not None, log=log)
    if not code_first:
        upload_code(target, pkg)
    return stack_outputs(target, log)


def breedline_stacks(cfn: Any) -> list[str]:
    """Names of the live stacks of this account and region that ``make deploy`` created (tagged :data:`STAGE_TAG`)."""
    names = []
    for page in cfn.get_paginator("describe_stacks").paginate():
        for stack in page["Stacks"]:
            tags = {t["Key"] for t in stack.get("Tags", [])}
            if STAGE_TAG in tags and stack["StackStatus"] != "DELETE_COMPLETE":
                names.append(stack["StackName"])
    return names


def existing_stack(target: DeployTarget) -> dict[str, Any] | None:
    """The live stack (None: this deploy creates it); refuses one an earlier deploy left failed."""
    existing = stack_exists(target.cfn, target.stack)
    if existing and existing["StackStatus"] in _FAILED_STATES:
        raise DeployError(
            f"stack {target.stack} is {existing['StackStatus']} (an earlier deploy failed): read its events "
            f"in the CloudFormation console, then `make destroy STAGE={target.stage_name}` and deploy again"
        )
    return existing


def data_bucket_exists(target: DeployTarget, existing: dict[str, Any] | None, log: Log) -> bool:
    """Whether the data bucket exists already: the live stack's parameter, else a bucket kept by destroy."""
    if existing:
        previous = {p["ParameterKey"]: p["ParameterValue"] for p in existing.get("Parameters", [])}
        return previous.get("DataBucketExists") == "true"
    kept = _bucket_exists(target.s3, target.data_bucket)
    if kept:
        log(f"reusing the data bucket kept by an earlier destroy: {target.data_bucket}")
    return kept


def endpoint_variant(sm: Any, stack: str, log: Log) -> str | None:
    """The live endpoint's production variant (it decides whether autoscaling goes on)."""
    variant = _current_variant(sm, f"{stack}-classifier")
    if variant and variant != STABLE_VARIANT:
        log(
            f"endpoint variant {variant!r} is named per model: autoscaling stays off, because SageMaker "
            "refuses to update an endpoint whose autoscaled variant the new config removes "
            "(--parameter EnableEndpointAutoscaling=true forces it; see docs/aws.md)"
        )
    return variant


def upload_artifacts(target: DeployTarget, pkg: Package, expand: Expand | None) -> tuple[str, str]:
    """Upload the Lambda zip and the template that points at it; return the template body and its URL."""
    s3, artifacts = target.s3, target.artifacts_bucket
    _ensure_artifacts_bucket(s3, artifacts, target.region)
    zip_bytes = pkg.zip_path.read_bytes()
    zip_key = f"{target.stack}/lambda-{hashlib.sha256(zip_bytes).hexdigest()[:16]}.zip"
    s3.put_object(Bucket=artifacts, Key=zip_key, Body=zip_bytes)
    template = copy.deepcopy(pkg.template)
    point_code_at(template, artifacts, zip_key)
    if expand is not None:
        template = expand(template, pkg.parameters)
    body = json.dumps(template)
    template_key = f"{target.stack}/template-{hashlib.sha256(body.encode()).hexdigest()[:16]}.json"
    s3.put_object(Bucket=artifacts, Key=template_key, Body=body.encode())
    return body, f"https://{artifacts}.s3.{target.region}.amazonaws.com/{template_key}"


def upload_code(target: DeployTarget, pkg: Package) -> None:
    """Upload ``sourcedir.tar.gz`` to the data bucket under its digest key."""
    target.s3.upload_file(str(pkg.sourcedir_path), target.data_bucket, pkg.sourcedir_key)


def run_change_set(
    target: DeployTarget, pkg: Package, body: str, template_url: str, *, update: bool, log: Log
) -> None:
    """Create the change set, print it, execute it and wait for the stack (nothing to do: say so)."""
    from botocore.exceptions import WaiterError

    cfn, stack = target.cfn, target.stack
    name = f"breedline-{hashlib.sha256((body + json.dumps(pkg.parameters)).encode()).hexdigest()[:12]}"
    cfn.create_change_set(
        StackName=stack,
        ChangeSetName=name,
        ChangeSetType="UPDATE" if update else "CREATE",
        TemplateURL=template_url,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in pkg.parameters.items()],
        Capabilities=CAPABILITIES,
        Tags=[{"Key": STAGE_TAG, "Value": target.stage_name}],
    )
    described = _wait_change_set(cfn, stack, name)
    if described is None:
        log("no changes to deploy")
        return
    for change in described.get("Changes", []):
        rc = change.get("ResourceChange", {})
        log(f"  {rc.get('Action', '?'):8} {rc.get('LogicalResourceId')} ({rc.get('ResourceType')})")
    cfn.execute_change_set(StackName=stack, ChangeSetName=name)
    waiter = "stack_update_complete" if update else "stack_create_complete"
    try:
        cfn.get_waiter(waiter).wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 360})
    except WaiterError as exc:
        raise DeployError(f"stack {stack} did not deploy:\n" + "\n".join(failure_events(cfn, stack))) from exc


def stack_outputs(target: DeployTarget, log: Log) -> dict[str, Any]:
    """The stack's outputs, printed one per line."""
    stacks = target.cfn.describe_stacks(StackName=target.stack)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    for key, value in sorted(outputs.items()):
        log(f"{key}: {value}")
    return outputs


def failure_events(cfn: Any, stack: str, limit: int = 10) -> list[str]:
    """The newest failed resource events of a stack: what a newcomer needs to read first."""
    lines = []
    for event in cfn.describe_stack_events(StackName=stack)["StackEvents"]:
        if event.get("ResourceStatus", "").endswith("FAILED"):
            reason = event.get("ResourceStatusReason", "")
            lines.append(f"  {event['LogicalResourceId']} ({event['ResourceType']}): {reason}")
        if len(lines) >= limit:
            break
    return lines


def _wait_change_set(cfn: Any, stack: str, name: str) -> dict[str, Any] | None:
    from botocore.exceptions import WaiterError

    try:
        cfn.get_waiter("change_set_create_complete").wait(
            StackName=stack, ChangeSetName=name, WaiterConfig={"Delay": 5, "MaxAttempts": 120}
        )
    except WaiterError:
        desc = cfn.describe_change_set(StackName=stack, ChangeSetName=name)
        reason = desc.get("StatusReason", "")
        if "didn't contain changes" in reason or "No updates" in reason:
            cfn.delete_change_set(StackName=stack, ChangeSetName=name)
            return None
        raise DeployError(f"change set {name} failed: {reason}")
    return cfn.describe_change_set(StackName=stack, ChangeSetName=name)


def _ensure_artifacts_bucket(s3: Any, name: str, region: str) -> None:
    """A private, encrypted, TLS-only bucket for the Lambda zip and the template."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=name)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
    )
    s3.put_bucket_policy(Bucket=name, Policy=json.dumps(_tls_only_policy(name)))


def _tls_only_policy(bucket: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def stack_exists(cfn: Any, stack: str) -> dict[str, Any] | None:
    """The stack's description, unless it is deleted or only holds an unexecuted change set."""
    from botocore.exceptions import ClientError

    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    live = [s for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"]
    if live and live[0]["StackStatus"] == "REVIEW_IN_PROGRESS":
        return None  # only an unexecuted change set: still a CREATE
    return live[0] if live else None



def _bucket_exists(s3: Any, name: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=name)
        return True
    except ClientError:
        return False


def _current_variant(sm: Any, endpoint: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError:
        return None
    variants = desc.get("ProductionVariants") or []
    if not variants or "CurrentServerlessConfig" in variants[0]:
        return None
    return variants[0]["VariantName"]
