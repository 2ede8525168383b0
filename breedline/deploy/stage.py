"""One stage of ``chalice_app/.chalice/config.json`` and the names derived from it.

Why checked before anything is built: the stack name prefixes every SageMaker
name and both buckets, and the stage's data prefix must be the one the written
Lambda policy grants; a wrong value would only fail once CloudFormation or the
pipeline runs, far from its cause.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breedline.build.paths import APP_DIR

#: BREEDLINE_API_AUTH values a deployed stage may use ("none" is for the local runtime only:
#: the issue requires an API key or IAM in front of the predict API).
API_AUTH_MODES = ("api_key", "iam")
#: The app's name-prefix limit (chalicelib/naming.py PREFIX_MAX): the stack name is the prefix.
STACK_NAME_MAX = 20
_STACK_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class DeployError(RuntimeError):
    """A deploy precondition failed; the message says what to change."""


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
    from chalicelib.config import VARIABLES

    return {v.name: v.default for v in VARIABLES}


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


#: Set in config.json's AWS stages so that a raw ``chalice package`` refuses to run
#: (``app.py``); the build copy's environment leaves it out (:mod:`breedline.deploy.packaging`).
NEEDS_MAKE_DEPLOY = "BREEDLINE_NEEDS_MAKE_DEPLOY"


def stage_settings(stage: Stage) -> Any:
    """The stage's :class:`chalicelib.config.Settings`, or a one-line DeployError naming the bad variable.

    Why before anything is built: the Lambda parses the same settings at cold
    start, and ``chalice package`` would fail on them with a traceback.
    """
    from chalicelib.config import Settings

    try:
        return Settings.from_env(stage.environment)
    except ValueError as exc:
        raise DeployError(f"stage {stage.name}: {exc}") from exc


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


#: The tag ``make deploy`` puts on every Breedline stack (through the change set).
STAGE_TAG = "breedline:stage"


def names_overlap(a: str, b: str) -> bool:
    """Whether one stack's ``<name>-*`` SageMaker grants and event patterns also match the other's names.

    Why only this shape: the app names every job, model and config
    ``<stack>-<...>``, and those names are made at run time, so IAM can only grant
    them as ``<stack>-*``. That pattern reaches another stack exactly when that
    stack's name is this one plus ``-`` plus more (``breedline-prod`` and
    ``breedline-prod-eu``). ``breedline-prodx`` does not overlap: its names start
    ``breedline-prodx-``, which ``breedline-prod-*`` does not match.
    """
    return a != b and (a.startswith(b + "-") or b.startswith(a + "-"))


def check_no_overlap(stack: str, others: list[str]) -> None:
    """Refuse a stack name that overlaps an existing Breedline stack of the same account and region."""
    clashes = sorted(o for o in others if names_overlap(stack, o))
    if clashes:
        raise DeployError(
            f"stack name {stack!r} overlaps the Breedline stack(s) {', '.join(clashes)}: one is the other plus "
            "'-...', so the SageMaker permissions and job events scoped to '<stack>-*' would reach across "
            "(docs/reliability.md, 'Least privilege and abuse'); choose a name that is not a '-' extension of "
            "the other (e.g. breedline-prodeu)"
        )


def artifacts_bucket_name(stack: str, account: str, region: str) -> str:
    return f"{stack}-deploy-{account}-{region}"


def data_bucket_name(stack: str, account: str, region: str) -> str:
    """Must match DataBucket's BucketName in infra/breedline.yaml."""
    return f"{stack}-data-{account}-{region}"


def with_slash(prefix: str) -> str:
    """An S3 prefix as the stack and the policy write it: ending in ``/``."""
    return prefix if prefix.endswith("/") else prefix + "/"


def check_policy_prefixes(stage: Stage, app_dir: Path = APP_DIR) -> None:
    """Refuse a stage that asks Chalice to generate the Lambda policy.

    Why: each function's role is written per function from
    :data:`breedline.deploy.functions.FUNCTIONS` (with the stage's data prefix)
    into the build copy; ``autogen_policy`` would replace them with one
    policy guessed from the code for all functions.
    """
    stage_cfg = stage.raw.get("stages", {}).get(stage.name, {})
    autogen = stage_cfg.get("autogen_policy", stage.raw.get("autogen_policy", True))
    if autogen is not False:
        raise DeployError(
            "config.json must set autogen_policy: false: every Lambda's policy is written per function from "
            "breedline/deploy/functions.py, not generated by Chalice"
        )
