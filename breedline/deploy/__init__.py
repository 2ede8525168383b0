"""Deploy one Breedline stage to AWS as one CloudFormation stack, and tear it down.

    python -m breedline.deploy deploy  --stage dev [--dry-run] [--region R] [--alert-email E]
    python -m breedline.deploy destroy --stage dev [--delete-bucket]
    python -m breedline.deploy redrive --stage dev [--handler NAME] [--dry-run] [--max N]
    (make deploy STAGE=dev [DRY_RUN=1], make destroy STAGE=dev [DELETE_BUCKET=1])

What ``deploy`` does, in order, and why:

1. Resolves the PyTorch training/inference images and the Debugger rule image
   for the region with ``sagemaker-core`` (:mod:`breedline.build.image_uris`):
   the ECR account differs per region, so no table is written by hand.
2. Copies ``chalice_app/`` to a build folder (:mod:`breedline.build.lambda_app`,
   which also puts ``contract.py`` into the zip) and writes those images into
   the stage's environment there (the tracked ``config.json`` stays clean).
   Names only the stack knows (bucket, role ARN, topic, alarms, name prefix)
   are removed from the stage environment: the merge template's SAM
   ``Globals`` set them from the stack's own resources.
3. Builds ``sourcedir.tar.gz`` (:func:`breedline.build.sourcedir.build_sourcedir`);
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

Modules: :mod:`~breedline.deploy.stage` (the stage's settings and names),
:mod:`~breedline.deploy.template` (merge template, tables, API auth, SAM),
:mod:`~breedline.deploy.serverless` (a serverless memory size the model cannot
load in is refused before step 1, as are settings the Lambda would refuse),
:mod:`~breedline.deploy.packaging` (steps 1-4), :mod:`~breedline.deploy.stack`
(step 5), :mod:`~breedline.deploy.teardown` (destroy),
:mod:`~breedline.deploy.functions` (one row per Lambda: its role, its failure
queue), :mod:`~breedline.deploy.redrive` (re-drive a failure queue) and
:mod:`~breedline.deploy.cli`.
"""

from breedline.deploy.packaging import Package, build_parameters, package, planned_change_set, stack_value
from breedline.deploy.stack import deploy, failure_events
from breedline.deploy.stage import DeployError, Stage, check_policy_prefixes, check_stack_name, load_stage
from breedline.deploy.teardown import destroy
from breedline.deploy.template import (
    TABLE_RESOURCES,
    apply_api_auth,
    apply_cors,
    point_code_at,
    sam_to_cloudformation,
    table_resources,
)

__all__ = [
    "TABLE_RESOURCES",
    "DeployError",
    "Package",
    "Stage",
    "apply_api_auth",
    "apply_cors",
    "build_parameters",
    "check_policy_prefixes",
    "check_stack_name",
    "deploy",
    "destroy",
    "failure_events",
    "load_stage",
    "package",
    "planned_change_set",
    "point_code_at",
    "sam_to_cloudformation",
    "stack_value",
    "table_resources",
]
