"""Steps 1-4 of a deploy: everything that needs no AWS account (see :mod:`breedline.deploy`).

The result is a :class:`Package`: the SAM template, the Lambda zip, the
``sourcedir.tar.gz`` and the stack parameters, all written under
``build/deploy/<stack>/``. A dry run stops here and prints
:func:`planned_change_set`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from breedline.build.image_uris import ImageSet, resolve_images
from breedline.build.lambda_app import keep_deps_cache, make_build_copy
from breedline.build.paths import APP_DIR, BUILD_DIR
from breedline.build.sourcedir import build_sourcedir
from breedline.deploy.functions import FUNCTIONS, policy_document
from breedline.deploy.serverless import check_serverless_memory
from breedline.deploy.stage import (
    NEEDS_MAKE_DEPLOY,
    DeployError,
    Stage,
    check_policy_prefixes,
    check_stack_name,
    data_bucket_name,
    default_stack_name,
    load_stage,
    stage_settings,
    with_slash,
)
from breedline.deploy.template import (
    CAPABILITIES,
    add_failure_queues,
    apply_api_auth,
    apply_cors,
    build_merge_template,
    check_every_function_has_a_row,
    evaluate_conditions,
    name_functions_and_log_groups,
    point_code_at,
    sam_to_cloudformation,
)

BUILD_ROOT = BUILD_DIR / "deploy"

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
#: Production variant name under which autoscaling is switched on by itself (see build_parameters).
STABLE_VARIANT = "AllTraffic"

Log = Callable[[str], Any]


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
    log: Log = print,
) -> Package:
    """Steps 1-4 of :mod:`breedline.deploy`. Needs no AWS credentials or network.

    1. resolve the stage's images; 2. make the build copy with the stage's
    environment; 3. build ``sourcedir.tar.gz``; 4. ``chalice package`` with the
    merge template, then apply the stage's API auth. The stack parameters
    follow from all four.

    ``account`` goes into the data bucket's name, which ``app.py`` bakes into
    its S3 event pattern; ``deploy`` passes the caller's real account, a dry
    run a placeholder unless told.
    """
    stage = load_stage(stage_name, app_dir)
    stack = check_stack_name(stack_name or default_stack_name(stage_name))
    check_policy_prefixes(stage, app_dir)
    check_serverless_memory(stage_settings(stage))
    out = Path(out_dir) if out_dir else BUILD_ROOT / stack
    out.mkdir(parents=True, exist_ok=True)

    images = resolve_stage_images(stage, region, log)
    build_app, removed = prepare_build_copy(out, app_dir, stage, images, stack=stack, account=account,
                                            region=region, log=log)
    sourcedir, sourcedir_key = build_code(out)
    template, template_path, zip_path = chalice_package(build_app, out, stage, region)
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
        zip_path=zip_path,
        sourcedir_path=sourcedir,
        sourcedir_key=sourcedir_key,
        images=images,
        parameters=parameters,
        removed_variables=removed,
    )


# --------------------------------------------------------------------------- step 1: images


def resolve_stage_images(stage: Stage, region: str, log: Log) -> ImageSet:
    """Step 1: the PyTorch training/inference images and the Debugger rule image for the stage's instances."""
    images = resolve_images(
        region,
        training_instance_type=stage.get("BREEDLINE_TRAINING_INSTANCE_TYPE"),
        endpoint_instance_type=stage.get("BREEDLINE_ENDPOINT_INSTANCE_TYPE"),
        serverless_memory_mb=int(stage.get("BREEDLINE_SERVERLESS_MEMORY_MB") or 0),
    )
    log(f"images for {region}: training {images.training}")
    log(f"                    inference {images.inference}")
    log(f"                    debugger rules {images.debugger_rule}")
    return images


# --------------------------------------------------------------------------- step 2: build copy


def prepare_build_copy(
    out: Path,
    app_dir: Path,
    stage: Stage,
    images: ImageSet,
    *,
    stack: str,
    account: str,
    region: str,
    log: Log,
) -> tuple[Path, list[str]]:
    """Step 2: the build copy of the app with the stage's environment; returns it and the replaced names."""
    build_app = make_build_copy(out / "app", app_dir)
    env, removed = stage_environment(stage, images, stack=stack, account=account, region=region)
    _write_build_config(build_app, stage, env)
    if removed:
        log(f"stage {stage.name}: the stack sets {', '.join(removed)}; the config.json values are replaced")
    return build_app, removed


def stage_environment(
    stage: Stage, images: ImageSet, *, stack: str, account: str, region: str
) -> tuple[dict[str, str], list[str]]:
    """The stage's env for the build copy: images in, stack-owned names out.

    Three stack-owned names go back in with the stack's values: ``app.py``
    builds its EventBridge patterns (bucket name, data prefix, job-name
    prefix) when Chalice loads it for packaging, with this environment.
    The ``BREEDLINE_NEEDS_MAKE_DEPLOY`` marker goes: this environment is the
    one the marker asks for, so the build copy's ``app.py`` loads.
    """
    env = dict(stage.raw.get("stages", {}).get(stage.name, {}).get("environment_variables", {}))
    env.pop(NEEDS_MAKE_DEPLOY, None)
    removed = sorted(
        name for name in env
        if name in STACK_OWNED_VARIABLES and env[name] != stack_value(name, stack, account, region, stage)
    )
    for name in [n for n in env if n in STACK_OWNED_VARIABLES]:
        del env[name]
    env.update(images.as_env())
    env["BREEDLINE_BUCKET"] = data_bucket_name(stack, account, region)
    env["BREEDLINE_NAME_PREFIX"] = stack
    env["BREEDLINE_DATA_PREFIX"] = with_slash(stage.get("BREEDLINE_DATA_PREFIX"))
    return env, removed


def stack_value(name: str, stack: str, account: str, region: str, stage: Stage) -> str | None:
    """What the stack sets a variable to, where that is known before deploying."""
    known = {
        "BREEDLINE_BUCKET": data_bucket_name(stack, account, region),
        "BREEDLINE_NAME_PREFIX": stack,
        "BREEDLINE_DATA_PREFIX": with_slash(stage.get("BREEDLINE_DATA_PREFIX")),
        "BREEDLINE_OUTPUT_PREFIX": with_slash(stage.get("BREEDLINE_OUTPUT_PREFIX")),
        "BREEDLINE_ENDPOINT_NAME": f"{stack}-classifier",
        "POWERTOOLS_METRICS_NAMESPACE": "Breedline",
    }
    return known.get(name)


def _write_build_config(build_app: Path, stage: Stage, env: dict[str, str]) -> None:
    config = copy.deepcopy(stage.raw)
    top_env = config.get("environment_variables", {})
    for name in list(top_env):
        if name in STACK_OWNED_VARIABLES or name == NEEDS_MAKE_DEPLOY:
            del top_env[name]
    config["stages"][stage.name]["environment_variables"] = env
    write_function_policies(build_app, config, stage.name, with_slash(stage.get("BREEDLINE_DATA_PREFIX")))
    (build_app / ".chalice" / "config.json").write_text(json.dumps(config, indent=2) + "\n")


#: The policy of a function without a row in FUNCTIONS: denies everything, and the
#: packaged template is then refused naming it (template.check_every_function_has_a_row).
UNLISTED_POLICY = "policy-unlisted.json"


def write_function_policies(build_app: Path, config: dict[str, Any], stage_name: str, data_prefix: str) -> None:
    """One policy file per row of :data:`breedline.deploy.functions.FUNCTIONS`, named in the stage's ``lambda_functions``.

    Why per function: ``chalice package`` makes one role per function from its
    ``iam_policy_file`` (``autogen_policy: false``), so each Lambda gets only
    what its own code calls (issue 15, item 15). Rows for functions the app
    does not have are harmless: Chalice ignores their ``lambda_functions`` entry.
    """
    chalice_dir = build_app / ".chalice"
    config["autogen_policy"] = False
    config["iam_policy_file"] = UNLISTED_POLICY
    deny = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}
    (chalice_dir / UNLISTED_POLICY).write_text(json.dumps(deny, indent=2) + "\n")
    stage_cfg = config["stages"][stage_name]
    functions_cfg = stage_cfg.setdefault("lambda_functions", {})
    for function in FUNCTIONS:
        document = policy_document(function, data_prefix)
        (chalice_dir / function.policy_file).write_text(json.dumps(document, indent=2) + "\n")
        entry = functions_cfg.setdefault(function.name, {})
        entry["autogen_policy"] = False
        entry["iam_policy_file"] = function.policy_file


# --------------------------------------------------------------------------- step 3: code


def build_code(out: Path) -> tuple[Path, str]:
    """Step 3: ``sourcedir.tar.gz`` and its S3 key.

    The digest in the key makes every code change a new, immutable URI.
    """
    sourcedir = build_sourcedir(out / "sourcedir.tar.gz")
    digest = hashlib.sha256(sourcedir.read_bytes()).hexdigest()[:16]
    return sourcedir, f"code/{digest}/sourcedir.tar.gz"


# --------------------------------------------------------------------------- step 4: chalice package


def chalice_package(
    build_app: Path, out: Path, stage: Stage, region: str
) -> tuple[dict[str, Any], Path, Path]:
    """Step 4: ``chalice package --merge-template`` in the build copy, then the stage's API auth.

    Returns the template, where it was written, and the Lambda zip.
    """
    merge_path = out / "merge-template.json"
    merge_path.write_text(json.dumps(build_merge_template(), indent=2))
    chalice_out = out / "chalice"
    if chalice_out.exists():
        shutil.rmtree(chalice_out)
    cmd = _chalice_command() + [
        "package",
        "--stage",
        stage.name,
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
    keep_deps_cache(build_app)

    template = json.loads((chalice_out / "sam.json").read_text())
    apply_api_auth(template, stage.api_auth)
    check_every_function_has_a_row(template)
    apply_cors(template, stage_settings(stage).cors_origins)
    name_functions_and_log_groups(template)
    add_failure_queues(template)
    template["Description"] = f"Breedline stage {stage.name} (packaged by breedline.deploy)"
    template_path = out / "template.json"
    template_path.write_text(json.dumps(template, indent=2))
    return template, template_path, chalice_out / "deployment.zip"


def _chalice_command() -> list[str]:
    local = Path(sys.executable).parent / "chalice"
    if local.exists():
        return [str(local)]
    found = shutil.which("chalice")
    if not found:
        raise DeployError("the chalice CLI is not installed (make venv)")
    return [found]


# --------------------------------------------------------------------------- parameters and the plan


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
        "DataPrefix": with_slash(stage.get("BREEDLINE_DATA_PREFIX")),
        "OutputPrefix": with_slash(stage.get("BREEDLINE_OUTPUT_PREFIX")),
        "SourceDirKey": sourcedir_key,
        "EcrRepositoryArns": ",".join(images.ecr_repository_arns(partition)),
        # A scaling target needs an existing instance-backed endpoint.
        "EnableEndpointAutoscaling": "true" if scale else "false",
        "EndpointVariantName": endpoint_variant or "AllTraffic",
    }
    params.update(overrides or {})
    return params


def partition_for(region: str) -> str:
    import boto3

    return boto3.session.Session().get_partition_for_region(region)


def planned_change_set(pkg: Package, *, change_set_type: str = "CREATE") -> dict[str, Any]:
    """The change set ``deploy`` would create, computed offline from the expanded template."""
    template = copy.deepcopy(pkg.template)
    point_code_at(template, "deploy-artifacts-bucket", "lambda.zip")  # placeholder: nothing is uploaded
    expanded = sam_to_cloudformation(template, pkg.parameters, pkg.region)
    conditions = evaluate_conditions(expanded, pkg.parameters)
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
