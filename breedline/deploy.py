"""Deploy one Breedline stage to AWS as one CloudFormation stack, and tear it down.

    python -m breedline.deploy deploy  --stage dev [--dry-run] [--region R] [--alert-email E]
    python -m breedline.deploy destroy --stage dev [--delete-bucket]
    (make deploy STAGE=dev [DRY_RUN=1], make destroy STAGE=dev [DELETE_BUCKET=1])

What ``deploy`` does, in order, and why:

1. Resolves the PyTorch training/inference images and the Debugger rule image
   for the region with ``sagemaker-core`` (:mod:`breedline.images`): the ECR
   account differs per region, so no table is written by hand.
2. Copies ``chalice_app/`` to a build folder and writes those images into the
   stage's environment there (the tracked ``config.json`` stays clean). Names
   only the stack knows (bucket, role ARN, topic, alarms, name prefix) are
   removed from the stage environment: the merge template's SAM ``Globals``
   set them from the stack's own resources.
3. Builds ``sourcedir.tar.gz`` (:func:`breedline.packaging.build_sourcedir`);
   its digest goes into the key, so every code change is a new, immutable URI.
4. ``chalice package --merge-template`` with ``infra/breedline.yaml`` plus the
   DynamoDB tables generated from ``chalicelib.state.TABLE_DEFINITIONS``, then
   applies the stage's API auth (API key or IAM; ``/status`` always IAM) to
   the packaged Swagger.
5. Uploads the Lambda zip and template to a small deploy-artifacts bucket,
   creates a CloudFormation change set (what ``aws cloudformation deploy``
   does), prints it, executes it, and uploads ``sourcedir.tar.gz``.

``--dry-run`` stops after step 4: it needs no AWS at all, transforms the SAM
template locally (``aws-sam-translator``) and prints the change set it would
create, resource by resource, with the parameters.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from breedline.images import ImageSet, resolve_images

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_DIR = REPO_ROOT / "chalice_app"
MERGE_TEMPLATE = REPO_ROOT / "infra" / "breedline.yaml"
BUILD_ROOT = REPO_ROOT / "build" / "deploy"

#: Environment variables the stack sets (SAM Globals in infra/breedline.yaml).
#: A value for them in the stage's config.json would win over the stack's and
#: point the Lambda at resources its policy does not cover, so it is removed.
STACK_OWNED_VARIABLES: tuple[str, ...] = (
    "BREEDLINE_BUCKET",
    "BREEDLINE_DATA_PREFIX",
    "BREEDLINE_OUTPUT_PREFIX",
    "BREEDLINE_SOURCEDIR_URI",
    "BREEDLINE_NAME_PREFIX",
    "BREEDLINE_ROLE_ARN",
    "BREEDLINE_STATE_TABLE",
    "BREEDLINE_IDEMPOTENCY_TABLE",
    "BREEDLINE_ALERT_TOPIC_ARN",
    "BREEDLINE_ENDPOINT_NAME",
    "BREEDLINE_ROLLBACK_ALARMS",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
)

#: Logical IDs of the generated tables, keyed like TABLE_DEFINITIONS / Settings.
TABLE_RESOURCES = {"state_table": "StateTable", "idempotency_table": "IdempotencyTable"}
#: Env var that carries each table's name (see chalicelib/config.py).
TABLE_ENV = {"state_table": "BREEDLINE_STATE_TABLE", "idempotency_table": "BREEDLINE_IDEMPOTENCY_TABLE"}

#: BREEDLINE_API_AUTH values a deployed stage may use ("none" is for the local runtime only:
#: the issue requires an API key or IAM in front of the predict API).
API_AUTH_MODES = ("api_key", "iam")
#: Routes that are never reachable with an API key alone.
IAM_ONLY_PATHS = ("/status",)
SECURITY_DEFINITIONS = {
    "api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"},
    "sigv4": {"type": "apiKey", "name": "Authorization", "in": "header", "x-amazon-apigateway-authtype": "awsSigv4"},
}
#: Production variant name under which autoscaling is switched on by itself (see build_parameters).
STABLE_VARIANT = "AllTraffic"
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
#: The app's name-prefix limit (chalicelib/naming.py PREFIX_MAX): the stack name is the prefix.
STACK_NAME_MAX = 20
_STACK_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class DeployError(RuntimeError):
    """A deploy precondition failed; the message says what to change."""


# --------------------------------------------------------------------------- stage config


@dataclass
class Stage:
    """One stage of ``chalice_app/.chalice/config.json``, as far as deploying needs it."""

    name: str
    environment: dict[str, str]
    api_auth: str = "api_key"
    api_gateway_stage: str = "api"
    raw: dict[str, Any] = field(default_factory=dict)

    def get(self, variable: str) -> str:
        """The stage's value, else the documented default from chalicelib/config.py."""
        if variable in self.environment:
            return self.environment[variable]
        return _config_defaults()[variable]


def _config_defaults() -> dict[str, str]:
    _app_on_path()
    from chalicelib.config import VARIABLES

    return {v.name: v.default for v in VARIABLES}


def _app_on_path() -> None:
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))


def load_stage(stage: str, app_dir: Path = APP_DIR) -> Stage:
    """Read top-level + stage settings the way Chalice layers them."""
    path = app_dir / ".chalice" / "config.json"
    if not path.exists():
        raise DeployError(f"{path} does not exist")
    config = json.loads(path.read_text())
    stages = config.get("stages", {})
    if stage not in stages:
        raise DeployError(f"stage {stage!r} is not in {path} (stages: {', '.join(sorted(stages)) or 'none'})")
    stage_cfg = stages[stage]
    env = dict(config.get("environment_variables", {}))
    env.update(stage_cfg.get("environment_variables", {}))
    auth = env.get("BREEDLINE_API_AUTH") or _config_defaults()["BREEDLINE_API_AUTH"]
    if auth not in API_AUTH_MODES:
        raise DeployError(
            f"BREEDLINE_API_AUTH={auth!r} in stage {stage!r}: a deployed API needs one of {API_AUTH_MODES}"
        )
    api_stage = stage_cfg.get("api_gateway_stage", config.get("api_gateway_stage", "api"))
    return Stage(name=stage, environment=env, api_auth=auth, api_gateway_stage=api_stage, raw=config)


def default_stack_name(stage: str) -> str:
    return f"breedline-{stage}"


def check_stack_name(name: str) -> str:
    """The stack name prefixes every SageMaker name and the bucket: keep it short and lowercase."""
    if len(name) > STACK_NAME_MAX or not _STACK_NAME.match(name):
        raise DeployError(
            f"stack name {name!r} must be 1-{STACK_NAME_MAX} lowercase letters, digits and single hyphens, "
            "starting with a letter: it is the SageMaker name prefix (tuning job names are at most 32 "
            "characters) and part of the bucket name"
        )
    return name


def check_policy_prefixes(stage: Stage, app_dir: Path = APP_DIR) -> None:
    """Refuse a stage without the written policy, or whose data prefix the policy does not name."""
    stage_cfg = stage.raw.get("stages", {}).get(stage.name, {})
    autogen = stage_cfg.get("autogen_policy", stage.raw.get("autogen_policy", True))
    policy_file = stage_cfg.get("iam_policy_file", stage.raw.get("iam_policy_file"))
    if autogen is not False or not policy_file:
        raise DeployError(
            "config.json must set autogen_policy: false and iam_policy_file: the Lambda policy is written, "
            "not generated (chalice_app/.chalice/policy.json)"
        )
    policy = (app_dir / ".chalice" / policy_file).read_text()
    prefix = stage.get("BREEDLINE_DATA_PREFIX")
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    if f"/{prefix}*" not in policy:
        raise DeployError(
            f"BREEDLINE_DATA_PREFIX={prefix!r} but {policy_file} grants S3 access to another prefix; "
            "change both together"
        )


# --------------------------------------------------------------------------- templates


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that turns ``!Sub x`` into ``{"Fn::Sub": x}`` (and ``!Ref``, ``!GetAtt a.b``...)."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    tag = suffix
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    key = tag if tag in ("Ref", "Condition") else f"Fn::{tag}"
    return {key: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_cfn_yaml(path: Path) -> dict[str, Any]:
    """Load a CloudFormation YAML template with short-form intrinsics as plain JSON-able data."""
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def table_resources(
    definitions: dict[str, dict[str, Any]], ttl_attributes: dict[str, str] | None = None
) -> dict[str, Any]:
    """CloudFormation tables from ``create_table`` kwargs (minus TableName), one per definition.

    Why generated: the local runtime creates the same tables from the same
    definitions, so the two can never disagree on keys or indexes.
    """
    passthrough = (
        "KeySchema",
        "AttributeDefinitions",
        "BillingMode",
        "ProvisionedThroughput",
        "GlobalSecondaryIndexes",
        "LocalSecondaryIndexes",
        "StreamSpecification",
    )
    resources: dict[str, Any] = {}
    for key, kwargs in definitions.items():
        if key not in TABLE_RESOURCES:
            raise DeployError(f"TABLE_DEFINITIONS has {key!r}; infra knows {sorted(TABLE_RESOURCES)}")
        unknown = set(kwargs) - set(passthrough) - {"SSESpecification", "Tags", "TableClass"}
        if unknown:
            raise DeployError(f"TABLE_DEFINITIONS[{key!r}] has keys infra cannot map: {sorted(unknown)}")
        props: dict[str, Any] = {k: copy.deepcopy(kwargs[k]) for k in passthrough if k in kwargs}
        props.setdefault("BillingMode", "PAY_PER_REQUEST")
        props["TableName"] = {"Fn::Sub": "${AWS::StackName}-" + key.replace("_table", "")}
        props["SSESpecification"] = {"SSEEnabled": True}
        props["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": True}
        if key in (ttl_attributes or {}):
            props["TimeToLiveSpecification"] = {"AttributeName": ttl_attributes[key], "Enabled": True}
        if "TableClass" in kwargs:
            props["TableClass"] = kwargs["TableClass"]
        resources[TABLE_RESOURCES[key]] = {"Type": "AWS::DynamoDB::Table", "Properties": props}
    return resources


def table_definitions() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``chalicelib.state``'s TABLE_DEFINITIONS and TTL_ATTRIBUTES (the app owns both)."""
    _app_on_path()
    try:
        from chalicelib import state
    except ImportError as exc:
        raise DeployError(f"chalicelib.state is not importable: {exc}") from exc
    return state.TABLE_DEFINITIONS, dict(getattr(state, "TTL_ATTRIBUTES", {}))


def build_merge_template() -> dict[str, Any]:
    """``infra/breedline.yaml`` plus the generated tables and their env vars."""
    template = load_cfn_yaml(MERGE_TEMPLATE)
    definitions, ttl = table_definitions()
    tables = table_resources(definitions, ttl)
    template["Resources"].update(tables)
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    for key, logical_id in TABLE_RESOURCES.items():
        if key in definitions:
            env[TABLE_ENV[key]] = {"Ref": logical_id}
    return template


def apply_api_auth(template: dict[str, Any], mode: str) -> dict[str, Any]:
    """Protect every route of the packaged Swagger: API key or IAM; /status always IAM.

    Why here and not in ``app.py``: the choice is per stage, and Chalice's
    route decorators are the same for all stages.
    """
    if mode not in API_AUTH_MODES:
        raise DeployError(f"unknown API auth {mode!r}")
    api = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]
    api.setdefault("securityDefinitions", {}).update(copy.deepcopy(SECURITY_DEFINITIONS))
    default = [{"api_key": []}] if mode == "api_key" else [{"sigv4": []}]
    for path, methods in api.get("paths", {}).items():
        for method, operation in methods.items():
            if not isinstance(operation, dict) or method == "options":
                continue  # CORS preflight stays open, as browsers send it unsigned
            operation["security"] = [{"sigv4": []}] if path in IAM_ONLY_PATHS else copy.deepcopy(default)
    return template


def sam_to_cloudformation(template: dict[str, Any], parameters: dict[str, str], region: str) -> dict[str, Any]:
    """Expand the SAM transform locally, as CloudFormation does on the server.

    Used by ``--dry-run`` to list the resources the change set would add, and by
    the tests to create the stack in moto (which has no SAM transform).
    """
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    # Chalice gives every function its own role, so there are no managed-policy
    # names to look up in IAM: the map stays empty and nothing leaves the machine.
    translator = Translator({}, Parser(), boto_session=boto3.session.Session(region_name=region))
    return translator.translate(copy.deepcopy(template), parameter_values=dict(parameters),
                                get_managed_policy_map=lambda: {})


# --------------------------------------------------------------------------- packaging


@dataclass
class Package:
    """What ``package`` produced: the template to deploy and its artifacts."""

    stage: Stage
    stack_name: str
    region: str
    out_dir: Path
    template: dict[str, Any]
    template_path: Path
    zip_path: Path
    sourcedir_path: Path
    sourcedir_key: str
    images: ImageSet
    parameters: dict[str, str]
    removed_variables: list[str]


def _chalice_command() -> list[str]:
    local = Path(sys.executable).parent / "chalice"
    if local.exists():
        return [str(local)]
    found = shutil.which("chalice")
    if not found:
        raise DeployError("the chalice CLI is not installed (make venv)")
    return [found]


#: Chalice caches the Lambda's built dependencies in .chalice/deployments/, keyed
#: by the requirements' hash; keeping that cache across builds means the
#: registry is only asked when chalice_app/requirements.txt changes.
DEPS_CACHE = REPO_ROOT / "build" / "deploy-cache"


def _copy_app(dest: Path, app_dir: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(
        app_dir,
        dest,
        symlinks=False,  # metric_definitions.py is a symlink into ml_scripts/: ship the file
        ignore=shutil.ignore_patterns("deployments", "__pycache__", "*.pyc", ".pytest_cache"),
    )
    cached = dest / ".chalice" / "deployments"
    cached.mkdir(parents=True, exist_ok=True)
    for source in (DEPS_CACHE, app_dir / ".chalice" / "deployments"):
        if source.is_dir():
            for zipped in source.glob("*-python*.zip"):
                if not (cached / zipped.name).exists():
                    _atomic_copy(zipped, cached / zipped.name)


def _keep_deps_cache(build_app: Path) -> None:
    DEPS_CACHE.mkdir(parents=True, exist_ok=True)
    for zipped in (build_app / ".chalice" / "deployments").glob("*-python*.zip"):
        if not (DEPS_CACHE / zipped.name).exists():
            _atomic_copy(zipped, DEPS_CACHE / zipped.name)


def _atomic_copy(source: Path, target: Path) -> None:
    """Copy then rename, so a parallel build never reads half a zip."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    shutil.copy2(source, tmp)
    os.replace(tmp, target)


def stage_environment(
    stage: Stage, images: ImageSet, *, stack: str, account: str, region: str
) -> tuple[dict[str, str], list[str]]:
    """The stage's env for the build copy: images in, stack-owned names out.

    Three stack-owned names go back in with the stack's values: ``app.py``
    builds its EventBridge patterns (bucket name, data prefix, job-name
    prefix) when Chalice loads it for packaging, with this environment.
    """
    env = dict(stage.raw.get("stages", {}).get(stage.name, {}).get("environment_variables", {}))
    removed = sorted(
        name for name in env if name in STACK_OWNED_VARIABLES and env[name] != _stack_value(name, stack, account, region, stage)
    )
    for name in [n for n in env if n in STACK_OWNED_VARIABLES]:
        del env[name]
    env.update(images.as_env())
    env["BREEDLINE_BUCKET"] = data_bucket_name(stack, account, region)
    env["BREEDLINE_NAME_PREFIX"] = stack
    env["BREEDLINE_DATA_PREFIX"] = _slash(stage.get("BREEDLINE_DATA_PREFIX"))
    return env, removed


def _stack_value(name: str, stack: str, account: str, region: str, stage: Stage) -> str | None:
    """What the stack sets a variable to, where that is known before deploying."""
    known = {
        "BREEDLINE_BUCKET": data_bucket_name(stack, account, region),
        "BREEDLINE_NAME_PREFIX": stack,
        "BREEDLINE_DATA_PREFIX": _slash(stage.get("BREEDLINE_DATA_PREFIX")),
        "BREEDLINE_OUTPUT_PREFIX": _slash(stage.get("BREEDLINE_OUTPUT_PREFIX")),
        "BREEDLINE_ENDPOINT_NAME": f"{stack}-classifier",
        "POWERTOOLS_METRICS_NAMESPACE": "Breedline",
    }
    return known.get(name)


def _write_build_config(build_app: Path, stage: Stage, env: dict[str, str]) -> None:
    config = copy.deepcopy(stage.raw)
    top_env = config.get("environment_variables", {})
    for name in list(top_env):
        if name in STACK_OWNED_VARIABLES:
            del top_env[name]
    config["stages"][stage.name]["environment_variables"] = env
    (build_app / ".chalice" / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def build_parameters(
    stage: Stage,
    *,
    images: ImageSet,
    sourcedir_key: str,
    partition: str,
    alert_email: str = "",
    data_bucket_exists: bool = False,
    endpoint_variant: str | None = None,
    overrides: dict[str, str] | None = None,
) -> dict[str, str]:
    """The stack parameters for one stage (all strings, as CloudFormation takes them)."""
    serverless = int(stage.get("BREEDLINE_SERVERLESS_MEMORY_MB") or 0) > 0
    # SageMaker refuses an UpdateEndpoint that removes a variant registered for
    # autoscaling. Only a variant name that every model keeps is safe to scale
    # automatically; otherwise the next model's deployment would fail.
    scale = bool(endpoint_variant) and not serverless and endpoint_variant == STABLE_VARIANT
    params = {
        "ApiAuth": stage.api_auth,
        "AlertEmail": alert_email,
        "DataBucketExists": "true" if data_bucket_exists else "false",
        "DataPrefix": _slash(stage.get("BREEDLINE_DATA_PREFIX")),
        "OutputPrefix": _slash(stage.get("BREEDLINE_OUTPUT_PREFIX")),
        "SourceDirKey": sourcedir_key,
        "EcrRepositoryArns": ",".join(images.ecr_repository_arns(partition)),
        # A scaling target needs an existing instance-backed endpoint.
        "EnableEndpointAutoscaling": "true" if scale else "false",
        "EndpointVariantName": endpoint_variant or "AllTraffic",
    }
    params.update(overrides or {})
    return params


def _slash(prefix: str) -> str:
    return prefix if prefix.endswith("/") else prefix + "/"


def partition_for(region: str) -> str:
    import boto3

    return boto3.session.Session().get_partition_for_region(region)


def package(
    stage_name: str,
    *,
    region: str,
    account: str = "123456789012",
    stack_name: str | None = None,
    out_dir: Path | None = None,
    app_dir: Path = APP_DIR,
    alert_email: str = "",
    data_bucket_exists: bool = False,
    endpoint_variant: str | None = None,
    overrides: dict[str, str] | None = None,
    log: Any = print,
) -> Package:
    """Steps 1-4 of the module docstring. Needs no AWS credentials or network.

    ``account`` goes into the data bucket's name, which ``app.py`` bakes into
    its S3 event pattern; ``deploy`` passes the caller's real account, a dry
    run a placeholder unless told.
    """
    stage = load_stage(stage_name, app_dir)
    stack = check_stack_name(stack_name or default_stack_name(stage_name))
    check_policy_prefixes(stage, app_dir)
    out = Path(out_dir) if out_dir else BUILD_ROOT / stack
    out.mkdir(parents=True, exist_ok=True)

    images = resolve_images(
        region,
        training_instance_type=stage.get("BREEDLINE_TRAINING_INSTANCE_TYPE"),
        endpoint_instance_type=stage.get("BREEDLINE_ENDPOINT_INSTANCE_TYPE"),
        serverless_memory_mb=int(stage.get("BREEDLINE_SERVERLESS_MEMORY_MB") or 0),
    )
    log(f"images for {region}: training {images.training}")
    log(f"                    inference {images.inference}")
    log(f"                    debugger rules {images.debugger_rule}")

    from breedline.packaging import build_sourcedir  # owned by the local runtime

    sourcedir = build_sourcedir(out / "sourcedir.tar.gz")
    digest = hashlib.sha256(sourcedir.read_bytes()).hexdigest()[:16]
    sourcedir_key = f"code/{digest}/sourcedir.tar.gz"

    build_app = out / "app"
    _copy_app(build_app, app_dir)
    env, removed = stage_environment(stage, images, stack=stack, account=account, region=region)
    _write_build_config(build_app, stage, env)
    if removed:
        log(f"stage {stage_name}: the stack sets {', '.join(removed)}; the config.json values are replaced")

    merge_path = out / "merge-template.json"
    merge_path.write_text(json.dumps(build_merge_template(), indent=2))
    chalice_out = out / "chalice"
    if chalice_out.exists():
        shutil.rmtree(chalice_out)
    cmd = _chalice_command() + [
        "package",
        "--stage",
        stage_name,
        "--merge-template",
        str(merge_path),
        "--template-format",
        "json",
        str(chalice_out),
    ]
    proc = subprocess.run(
        cmd,
        cwd=build_app,
        env={**os.environ, "AWS_DEFAULT_REGION": region},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DeployError(f"chalice package failed:\n{proc.stdout}\n{proc.stderr}")
    _keep_deps_cache(build_app)

    template = json.loads((chalice_out / "sam.json").read_text())
    apply_api_auth(template, stage.api_auth)
    template["Description"] = f"Breedline stage {stage_name} (packaged by breedline.deploy)"
    template_path = out / "template.json"
    template_path.write_text(json.dumps(template, indent=2))
    parameters = build_parameters(
        stage,
        images=images,
        sourcedir_key=sourcedir_key,
        partition=partition_for(region),
        alert_email=alert_email,
        data_bucket_exists=data_bucket_exists,
        endpoint_variant=endpoint_variant,
        overrides=overrides,
    )
    return Package(
        stage=stage,
        stack_name=stack,
        region=region,
        out_dir=out,
        template=template,
        template_path=template_path,
        zip_path=chalice_out / "deployment.zip",
        sourcedir_path=sourcedir,
        sourcedir_key=sourcedir_key,
        images=images,
        parameters=parameters,
        removed_variables=removed,
    )


def planned_change_set(pkg: Package, *, change_set_type: str = "CREATE") -> dict[str, Any]:
    """The change set ``deploy`` would create, computed offline from the expanded template."""
    template = copy.deepcopy(pkg.template)
    _point_code_at(template, "deploy-artifacts-bucket", "lambda.zip")  # placeholder: nothing is uploaded
    expanded = sam_to_cloudformation(template, pkg.parameters, pkg.region)
    conditions = _evaluate_conditions(expanded, pkg.parameters)
    changes = []
    for logical_id, resource in sorted(expanded["Resources"].items()):
        cond = resource.get("Condition")
        if cond and not conditions.get(cond, True):
            continue
        changes.append({"Action": "Add", "LogicalResourceId": logical_id, "ResourceType": resource["Type"]})
    return {
        "StackName": pkg.stack_name,
        "ChangeSetType": change_set_type,
        "Region": pkg.region,
        "Capabilities": CAPABILITIES,
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(pkg.parameters.items())],
        "Changes": changes,
        "Artifacts": {
            "template": str(pkg.template_path),
            "lambda_zip": str(pkg.zip_path),
            "lambda_zip_bytes": pkg.zip_path.stat().st_size if pkg.zip_path.exists() else None,
            "sourcedir": str(pkg.sourcedir_path),
            "sourcedir_key": pkg.sourcedir_key,
        },
        "Images": pkg.images.as_env(),
    }


def _evaluate_conditions(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, bool]:
    """Evaluate the simple Equals/Not conditions this template uses (for the dry-run listing)."""
    defaults = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
    values = {**defaults, **parameters}

    def ev(node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return values.get(arg, arg)
            if key == "Fn::Equals":
                return str(ev(arg[0])) == str(ev(arg[1]))
            if key == "Fn::Not":
                return not ev(arg[0])
            if key == "Fn::And":
                return all(ev(a) for a in arg)
            if key == "Fn::Or":
                return any(ev(a) for a in arg)
            if key == "Condition":
                return ev(template["Conditions"][arg])
        return node

    return {name: bool(ev(expr)) for name, expr in template.get("Conditions", {}).items()}


# --------------------------------------------------------------------------- AWS side


def artifacts_bucket_name(stack: str, account: str, region: str) -> str:
    return f"{stack}-deploy-{account}-{region}"


def data_bucket_name(stack: str, account: str, region: str) -> str:
    """Must match DataBucket's BucketName in infra/breedline.yaml."""
    return f"{stack}-data-{account}-{region}"


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


def _stack_exists(cfn: Any, stack: str) -> dict[str, Any] | None:
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


def deploy(
    stage_name: str,
    *,
    region: str,
    stack_name: str | None = None,
    alert_email: str = "",
    overrides: dict[str, str] | None = None,
    session: Any = None,
    expand: Callable[[dict[str, Any], dict[str, str]], dict[str, Any]] | None = None,
    app_dir: Path = APP_DIR,
    out_dir: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Package, then create and execute a change set; return the stack's outputs.

    ``expand`` rewrites the template before it is uploaded; only the tests use
    it, to expand SAM locally (moto's CloudFormation has no SAM transform).
    AWS expands SAM itself.
    """
    import boto3
    from botocore.exceptions import WaiterError

    session = session or boto3.session.Session(region_name=region)
    stack = check_stack_name(stack_name or default_stack_name(stage_name))
    account = session.client("sts").get_caller_identity()["Account"]
    cfn = session.client("cloudformation")
    s3 = session.client("s3")
    existing = _stack_exists(cfn, stack)
    if existing and existing["StackStatus"] in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"):
        raise DeployError(
            f"stack {stack} is {existing['StackStatus']} (an earlier deploy failed): read its events in the "
            f"CloudFormation console, then `make destroy STAGE={stage_name}` and deploy again"
        )
    if existing:
        previous = {p["ParameterKey"]: p["ParameterValue"] for p in existing.get("Parameters", [])}
        bucket_exists = previous.get("DataBucketExists") == "true"
    else:
        bucket_exists = _bucket_exists(s3, data_bucket_name(stack, account, region))
        if bucket_exists:
            log(f"reusing the data bucket kept by an earlier destroy: {data_bucket_name(stack, account, region)}")
    variant = _current_variant(session.client("sagemaker"), f"{stack}-classifier")
    if variant and variant != STABLE_VARIANT:
        log(
            f"endpoint variant {variant!r} is named per model: autoscaling stays off, because SageMaker "
            "refuses to update an endpoint whose autoscaled variant the new config removes "
            "(--parameter EnableEndpointAutoscaling=true forces it; see docs/aws.md)"
        )
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
    artifacts = artifacts_bucket_name(stack, account, region)
    _ensure_artifacts_bucket(s3, artifacts, region)
    zip_bytes = pkg.zip_path.read_bytes()
    zip_key = f"{stack}/lambda-{hashlib.sha256(zip_bytes).hexdigest()[:16]}.zip"
    s3.put_object(Bucket=artifacts, Key=zip_key, Body=zip_bytes)
    template = copy.deepcopy(pkg.template)
    _point_code_at(template, artifacts, zip_key)
    if expand is not None:
        template = expand(template, pkg.parameters)
    body = json.dumps(template)
    template_key = f"{stack}/template-{hashlib.sha256(body.encode()).hexdigest()[:16]}.json"
    s3.put_object(Bucket=artifacts, Key=template_key, Body=body.encode())
    template_url = f"https://{artifacts}.s3.{region}.amazonaws.com/{template_key}"

    data_bucket = data_bucket_name(stack, account, region)
    if existing or bucket_exists:  # upload the code before the Lambdas point at it
        s3.upload_file(str(pkg.sourcedir_path), data_bucket, pkg.sourcedir_key)

    change_set_name = f"breedline-{hashlib.sha256((body + json.dumps(pkg.parameters)).encode()).hexdigest()[:12]}"
    change_type = "UPDATE" if existing else "CREATE"
    cfn.create_change_set(
        StackName=stack,
        ChangeSetName=change_set_name,
        ChangeSetType=change_type,
        TemplateURL=template_url,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in pkg.parameters.items()],
        Capabilities=CAPABILITIES,
        Tags=[{"Key": "breedline:stage", "Value": stage_name}],
    )
    described = _wait_change_set(cfn, stack, change_set_name)
    if described is None:
        log("no changes to deploy")
    else:
        for change in described.get("Changes", []):
            rc = change.get("ResourceChange", {})
            log(f"  {rc.get('Action', '?'):8} {rc.get('LogicalResourceId')} ({rc.get('ResourceType')})")
        cfn.execute_change_set(StackName=stack, ChangeSetName=change_set_name)
        waiter = "stack_update_complete" if existing else "stack_create_complete"
        try:
            cfn.get_waiter(waiter).wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 360})
        except WaiterError as exc:
            raise DeployError(f"stack {stack} did not deploy:\n" + "\n".join(_failure_events(cfn, stack))) from exc
    if not (existing or bucket_exists):
        s3.upload_file(str(pkg.sourcedir_path), data_bucket, pkg.sourcedir_key)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])}
    for key, value in sorted(outputs.items()):
        log(f"{key}: {value}")
    return outputs


def _failure_events(cfn: Any, stack: str, limit: int = 10) -> list[str]:
    """The newest failed resource events of a stack: what a newcomer needs to read first."""
    lines = []
    for event in cfn.describe_stack_events(StackName=stack)["StackEvents"]:
        if event.get("ResourceStatus", "").endswith("FAILED"):
            lines.append(f"  {event['LogicalResourceId']} ({event['ResourceType']}): {event.get('ResourceStatusReason', '')}")
        if len(lines) >= limit:
            break
    return lines


def _point_code_at(template: dict[str, Any], bucket: str, key: str) -> None:
    """Replace Chalice's local ``./deployment.zip`` with the uploaded object (what ``aws cloudformation package`` does)."""
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function" and props.get("CodeUri") == "./deployment.zip":
            props["CodeUri"] = f"s3://{bucket}/{key}"


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


# --------------------------------------------------------------------------- destroy


def _paginate(client: Any, op: str, key: str, **kwargs: Any) -> Iterable[dict[str, Any]]:
    for page in client.get_paginator(op).paginate(**kwargs):
        yield from page.get(key, [])


def destroy(
    stage_name: str,
    *,
    region: str,
    stack_name: str | None = None,
    delete_bucket: bool = False,
    session: Any = None,
    log: Any = print,
) -> dict[str, list[str]]:
    """Stop this stage's running jobs, delete the stack, then the endpoint, configs and models the pipeline made.

    The data bucket is retained by the template (DeletionPolicy: Retain);
    ``delete_bucket`` empties and deletes it too. The artifacts bucket holds
    only deploy artifacts and always goes.
    """
    import boto3

    session = session or boto3.session.Session(region_name=region)
    stack = check_stack_name(stack_name or default_stack_name(stage_name))
    account = session.client("sts").get_caller_identity()["Account"]
    sm = session.client("sagemaker")
    done: dict[str, list[str]] = {"jobs_stopped": [], "endpoints": [], "endpoint_configs": [], "models": [], "buckets": []}
    prefix = f"{stack}-"

    for job in _paginate(sm, "list_hyper_parameter_tuning_jobs", "HyperParameterTuningJobSummaries",
                         NameContains=prefix, StatusEquals="InProgress"):
        name = job["HyperParameterTuningJobName"]
        if name.startswith(prefix):
            sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
            done["jobs_stopped"].append(name)
    for job in _paginate(sm, "list_training_jobs", "TrainingJobSummaries", NameContains=prefix,
                         StatusEquals="InProgress"):
        name = job["TrainingJobName"]
        if name.startswith(prefix):
            sm.stop_training_job(TrainingJobName=name)
            done["jobs_stopped"].append(name)
    cfn = session.client("cloudformation")
    if _stack_exists(cfn, stack):
        log(f"deleting stack {stack} ...")
        cfn.delete_stack(StackName=stack)
        cfn.get_waiter("stack_delete_complete").wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 360})
    else:
        log(f"stack {stack} does not exist")

    # After the stack: its Lambdas can no longer create an endpoint behind our back,
    # and the endpoint's scaling target is already deregistered.
    for ep in _paginate(sm, "list_endpoints", "Endpoints", NameContains=prefix):
        if ep["EndpointName"].startswith(prefix):
            sm.delete_endpoint(EndpointName=ep["EndpointName"])
            done["endpoints"].append(ep["EndpointName"])
    for cfg in _paginate(sm, "list_endpoint_configs", "EndpointConfigs", NameContains=prefix):
        if cfg["EndpointConfigName"].startswith(prefix):
            sm.delete_endpoint_config(EndpointConfigName=cfg["EndpointConfigName"])
            done["endpoint_configs"].append(cfg["EndpointConfigName"])
    for model in _paginate(sm, "list_models", "Models", NameContains=prefix):
        if model["ModelName"].startswith(prefix):
            sm.delete_model(ModelName=model["ModelName"])
            done["models"].append(model["ModelName"])
    for kind, names in done.items():
        if names:
            log(f"deleted {kind}: {', '.join(names)}")

    s3 = session.resource("s3")
    buckets = [artifacts_bucket_name(stack, account, region)]
    if delete_bucket:
        buckets.append(data_bucket_name(stack, account, region))
    else:
        log(f"kept the data bucket {data_bucket_name(stack, account, region)} (--delete-bucket removes it)")
    for name in buckets:
        bucket = s3.Bucket(name)
        try:
            bucket.object_versions.delete()
            bucket.objects.all().delete()
            bucket.delete()
            done["buckets"].append(name)
            log(f"deleted bucket {name}")
        except Exception as exc:  # noqa: BLE001 - a missing bucket is fine; say what happened
            if "NoSuchBucket" not in str(exc):
                raise
    return done


# --------------------------------------------------------------------------- CLI


def _region(explicit: str | None) -> str:
    region = explicit or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        import boto3

        region = boto3.session.Session().region_name
    if not region:
        raise DeployError("no region: pass --region or set AWS_DEFAULT_REGION")
    return region


def _parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise DeployError(f"--parameter wants Key=Value, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m breedline.deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dep = sub.add_parser("deploy", help="package and deploy one stage")
    dep.add_argument("--stage", default="dev")
    dep.add_argument("--region")
    dep.add_argument("--stack-name")
    dep.add_argument("--alert-email", default=os.environ.get("BREEDLINE_ALERT_EMAIL", ""))
    dep.add_argument("--parameter", action="append", default=[], metavar="Key=Value",
                     help="override a stack parameter, e.g. ApiQuotaLimit=50000")
    dep.add_argument("--dry-run", action="store_true", help="package and print the change set; no AWS calls")
    dep.add_argument("--out-dir", type=Path)
    dep.add_argument("--account-id", default="123456789012",
                     help="dry run only: the account whose bucket name goes into the S3 event pattern")
    des = sub.add_parser("destroy", help="delete the endpoints the pipeline created and the stack")
    des.add_argument("--stage", default="dev")
    des.add_argument("--region")
    des.add_argument("--stack-name")
    des.add_argument("--delete-bucket", action="store_true", help="also empty and delete the data bucket")
    args = parser.parse_args(argv)
    from botocore.exceptions import ClientError, NoCredentialsError, ProfileNotFound

    try:
        region = _region(args.region)
        if args.command == "deploy":
            overrides = _parse_overrides(args.parameter)
            if args.dry_run:
                pkg = package(
                    args.stage,
                    region=region,
                    account=args.account_id,
                    stack_name=args.stack_name,
                    out_dir=args.out_dir,
                    alert_email=args.alert_email,
                    overrides=overrides,
                    log=lambda msg: print(msg, file=sys.stderr),
                )
                print(json.dumps(planned_change_set(pkg), indent=2))
                print(
                    "dry run: nothing was sent to AWS. Against an existing stack the change set would be an "
                    "UPDATE listing only the differences.",
                    file=sys.stderr,
                )
            else:
                deploy(args.stage, region=region, stack_name=args.stack_name, alert_email=args.alert_email,
                       overrides=overrides)
        else:
            destroy(args.stage, region=region, stack_name=args.stack_name, delete_bucket=args.delete_bucket)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (NoCredentialsError, ProfileNotFound) as exc:
        print(f"error: no usable AWS credentials ({exc}); see docs/aws.md, section 1", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"error: AWS refused {exc.operation_name}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
