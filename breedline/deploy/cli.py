"""The ``python -m breedline.deploy`` command line: ``deploy`` (or a dry run), ``destroy``, ``api-key``, ``redrive``.

Every failure a user can fix (a precondition, missing credentials, an AWS
refusal) ends as one ``error:`` line and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import breedline.deploy
from breedline.deploy import api_keys
from breedline.deploy.api_keys import ClientLimits
from breedline.deploy.packaging import package, planned_change_set
from breedline.deploy.redrive import redrive
from breedline.deploy.stack import deploy
from breedline.deploy.stage import DeployError, check_stack_name, default_stack_name
from breedline.deploy.teardown import destroy


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from botocore.exceptions import ClientError, NoCredentialsError, ProfileNotFound

    try:
        region = _region(args.region, dry_run=args.command == "deploy" and args.dry_run)
        if args.command == "deploy" and args.dry_run:
            _dry_run(args, region)
        elif args.command == "api-key":
            _api_key(args, region)
        elif args.command == "redrive":
            _redrive(args, region)
        elif args.command == "deploy":
            deploy(args.stage, region=region, stack_name=args.stack_name, alert_email=args.alert_email,
                   overrides=_parse_overrides(args.parameter))
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


def _parser() -> argparse.ArgumentParser:
    description = (breedline.deploy.__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m breedline.deploy", description=description)
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
    key = sub.add_parser("api-key", help="per-client API keys, each in its own usage plan (api_key auth)")
    key.add_argument("action", choices=["create", "revoke", "list"])
    key.add_argument("--client", help="client name (create, revoke): 1-32 lowercase letters, digits, hyphens")
    key.add_argument("--stage", default="dev")
    key.add_argument("--region")
    key.add_argument("--stack-name")
    red = sub.add_parser("redrive", help="re-invoke each event a handler gave up on, from its failure queue")
    red.add_argument("--handler", help="one handler (e.g. on_dataset_upload); default: every event handler")
    red.add_argument("--stage", default="dev")
    red.add_argument("--region")
    red.add_argument("--stack-name")
    red.add_argument("--dry-run", action="store_true", help="print what would be re-driven; invoke and delete nothing")
    red.add_argument("--max", type=int, dest="max_messages", help="at most this many messages in all")
    defaults = ClientLimits()
    key.add_argument("--rate", type=float, default=defaults.rate, help="requests per second (create)")
    key.add_argument("--burst", type=int, default=defaults.burst, help="burst (create)")
    key.add_argument("--quota", type=int, default=defaults.quota, help="requests per --period (create)")
    key.add_argument("--period", choices=["DAY", "WEEK", "MONTH"], default=defaults.period)
    return parser


def _api_key(args: argparse.Namespace, region: str) -> None:
    """``api-key create|revoke|list``: one JSON document on stdout (create shows the key value once)."""
    import boto3

    session = boto3.session.Session(region_name=region)
    stack = check_stack_name(args.stack_name or default_stack_name(args.stage))
    apigw = session.client("apigateway")
    if args.action == "list":
        print(json.dumps(api_keys.list_client_keys(apigw, stack), indent=2))
        return
    if not args.client:
        raise DeployError(f"api-key {args.action} needs --client NAME")
    if args.action == "revoke":
        api_keys.revoke_client_key(apigw, stack, args.client)
        print(json.dumps({"client": args.client, "revoked": True}))
        return
    api_id, stage = api_keys.api_stage(session.client("cloudformation"), stack)
    limits = ClientLimits(rate=args.rate, burst=args.burst, quota=args.quota, period=args.period)
    print(json.dumps(api_keys.create_client_key(apigw, stack, args.client, api_id, stage, limits), indent=2))


def _redrive(args: argparse.Namespace, region: str) -> None:
    """``redrive``: one line per message on stdout; exit 0 even when some were kept (the lines say why)."""
    import boto3

    stack = check_stack_name(args.stack_name or default_stack_name(args.stage))
    redrive(boto3.session.Session(region_name=region), stack, handler=args.handler, dry_run=args.dry_run,
            max_messages=args.max_messages)


def _dry_run(args: argparse.Namespace, region: str) -> None:
    """Steps 1-4 only, then the change set that deploy would create, as JSON on stdout."""
    pkg = package(
        args.stage,
        region=region,
        account=args.account_id,
        stack_name=args.stack_name,
        out_dir=args.out_dir,
        alert_email=args.alert_email,
        overrides=_parse_overrides(args.parameter),
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(json.dumps(planned_change_set(pkg), indent=2))
    print(
        "dry run: nothing was sent to AWS. Against an existing stack the change set would be an "
        "UPDATE listing only the differences.",
        file=sys.stderr,
    )


#: Region of a dry run when none is configured: a dry run calls no AWS API, so any
#: region packages the same stack (only the image URIs and bucket names name it).
DRY_RUN_REGION = "us-east-1"


def _region(explicit: str | None, *, dry_run: bool = False) -> str:
    """``--region``, else the environment, else the AWS config; a dry run falls back to :data:`DRY_RUN_REGION`."""
    region = explicit or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        import boto3

        region = boto3.session.Session().region_name
    if not region and dry_run:
        print(f"dry run: no region configured; packaging for {DRY_RUN_REGION} (pass --region or REGION=)",
              file=sys.stderr)
        return DRY_RUN_REGION
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
