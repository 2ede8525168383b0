"""One row per Lambda function: what its IAM role may call, and whether a failed event is kept.

Why one table: each function gets its own role with only the calls its code
makes (issue 15, item 15: the internet-facing API Lambda used to share one
policy that could create training jobs and pass the SageMaker role), and
every asynchronously invoked function gets an SQS failure queue with an alarm
(item 6: an event whose handler kept failing was dropped after Lambda's two
retries). Adding a handler is one row in :data:`FUNCTIONS`; packaging refuses
an app function without a row.

What reads this table:

- :mod:`breedline.deploy.packaging` writes each row's policy document into the
  build copy (``.chalice/policy-<name>.json``) and names it in the stage's
  ``lambda_functions``, so ``chalice package`` renders one role per function;
- :mod:`breedline.deploy.template` adds each asynchronous row's failure queue,
  its ``EventInvokeConfig`` (on-failure destination), its depth alarm, and every
  row's ``Errors`` to the handler-errors alarm;
- :mod:`breedline.deploy.redrive` finds a handler's queue and function;
- ``tests/app`` records every AWS call each handler makes under moto and fails
  on one its row does not grant; ``tests/infra`` checks the packaged roles
  against the rows.

Every resource is a ``Fn::Sub`` string with pseudo parameters only (the stack
name prefixes every name); the data prefix is the stage's, written in when the
policy is generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract import BATCH_PREFIX, BATCH_RESULTS_PREFIX

_ARN = "arn:${AWS::Partition}"
_REGIONAL = "${AWS::Region}:${AWS::AccountId}"
#: SageMaker names the app makes at run time can only be granted by prefix; the endpoint has one name.
_SAGEMAKER_NAME = {"endpoint": "${AWS::StackName}-classifier"}
BUCKET_ARN = _ARN + ":s3:::${AWS::StackName}-data-${AWS::AccountId}-${AWS::Region}"
#: Placeholder for the stage's data prefix (``datasets/``) in the grants below.
DATA_PREFIX = "{data_prefix}"


@dataclass(frozen=True)
class Grant:
    """One policy statement: these actions on these resources (``Fn::Sub`` templates)."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: dict[str, Any] | None = None

    def statement(self, data_prefix: str) -> dict[str, Any]:
        resources = [{"Fn::Sub": r.replace(DATA_PREFIX, data_prefix)} for r in self.resources]
        statement: dict[str, Any] = {
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": list(self.actions),
            "Resource": resources if len(resources) > 1 else resources[0],
        }
        if self.condition is not None:
            statement["Condition"] = _with_prefix(self.condition, data_prefix)
        return statement


def _with_prefix(node: Any, data_prefix: str) -> Any:
    if isinstance(node, dict):
        return {k: _with_prefix(v, data_prefix) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_prefix(v, data_prefix) for v in node]
    return node.replace(DATA_PREFIX, data_prefix) if isinstance(node, str) else node


def sagemaker(sid: str, *operations: str, on: tuple[str, ...]) -> Grant:
    """SageMaker ``operations`` on the stack's resources of the types ``on`` (``training-job``, ``endpoint``...)."""
    resources = tuple(
        f"{_ARN}:sagemaker:{_REGIONAL}:{kind}/{_SAGEMAKER_NAME.get(kind, '${AWS::StackName}-*')}"
        for kind in on
    )
    return Grant(sid, tuple(f"sagemaker:{op}" for op in operations), resources)


def table(sid: str, name: str, *operations: str, leading_keys: tuple[str, ...] = ()) -> Grant:
    """DynamoDB ``operations`` on exactly ``table/<stack>-<name>``; ``leading_keys`` limits the partition keys."""
    condition = (
        {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": list(leading_keys)}} if leading_keys else None
    )
    return Grant(
        sid,
        tuple(f"dynamodb:{op}" for op in operations),
        (f"{_ARN}:dynamodb:{_REGIONAL}:table/${{AWS::StackName}}-{name}",),
        condition,
    )


#: The state table's item operations (chalicelib/state.py; it deletes nothing), without Scan.
STATE_ITEMS = ("GetItem", "PutItem", "UpdateItem")
#: Powertools' idempotency records (DynamoDBPersistenceLayer).
IDEMPOTENCY = table("IdempotencyRecords", "idempotency", "GetItem", "PutItem", "UpdateItem", "DeleteItem")
ALERTS = Grant("Alerts", ("sns:Publish",), (f"{_ARN}:sns:{_REGIONAL}:${{AWS::StackName}}-alerts",))
PASS_ROLE = Grant(
    "PassOnlyTheExecutionRoleOnlyToSageMaker",
    ("iam:PassRole",),
    (_ARN + ":iam::${AWS::AccountId}:role/${AWS::StackName}-sagemaker",),
    {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
)
LIST_DATA_SETS = Grant(
    "ListDataSets", ("s3:ListBucket",), (BUCKET_ARN,), {"StringLike": {"s3:prefix": [DATA_PREFIX + "*"]}}
)
READ_DATA_SETS = Grant("ReadDataSets", ("s3:GetObject",), (f"{BUCKET_ARN}/{DATA_PREFIX}*",))
ROLLBACK_ALARMS = Grant(
    "RollbackAlarms",
    ("cloudwatch:DescribeAlarms",),
    tuple(
        f"{_ARN}:cloudwatch:{_REGIONAL}:alarm:${{AWS::StackName}}-endpoint-{a}" for a in ("5xx", "latency")
    ),
)
# Batch predictions: the prefixes' one home is contract.py (the app, the CLI and these grants read it).
#: A batch's marker: list its images, write its manifest (or a refusal's summary), start its transform job.
#: CreateTransformJob takes no role (the job runs as the model's), so no iam:PassRole.
START_BATCH = (
    Grant("ListBatches", ("s3:ListBucket",), (BUCKET_ARN,), {"StringLike": {"s3:prefix": [BATCH_PREFIX + "*"]}}),
    Grant("WriteBatchManifests", ("s3:PutObject",), (f"{BUCKET_ARN}/{BATCH_RESULTS_PREFIX}*",)),
    sagemaker("TransformJobs", "CreateTransformJob", "AddTags", on=("transform-job",)),
)
#: A transform job's end: read its manifest and outputs, write results.jsonl and summary.json.
FINISH_BATCH = (
    Grant("ListBatchResults", ("s3:ListBucket",), (BUCKET_ARN,),
          {"StringLike": {"s3:prefix": [BATCH_RESULTS_PREFIX + "*"]}}),
    Grant("ReadAndWriteBatchResults", ("s3:GetObject", "s3:PutObject"), (f"{BUCKET_ARN}/{BATCH_RESULTS_PREFIX}*",)),
    sagemaker("TransformJobs", "DescribeTransformJob", "ListTags", on=("transform-job",)),
)
#: What starting a tuning job takes (both upload handlers: the marker and the quiet check).
START_TUNING = (
    # Describe and Stop: the cost guard (chalicelib/budget.py) stops a superseded job, checks a lost end
    sagemaker(
        "TuningJobs",
        "CreateHyperParameterTuningJob",
        "DescribeHyperParameterTuningJob",
        "StopHyperParameterTuningJob",
        "AddTags",
        on=("hyper-parameter-tuning-job",),
    ),
    PASS_ROLE,
)

#: What deploying a model takes: the training handler after the gate, the endpoint handler re-driving the queue.
DEPLOY_MODEL = (
    sagemaker("Models", "CreateModel", "AddTags", on=("model",)),
    sagemaker("EndpointConfigs", "CreateEndpointConfig", "AddTags", on=("endpoint-config",)),
    sagemaker(
        "TheEndpoint",
        "CreateEndpoint",
        "UpdateEndpoint",
        "DescribeEndpoint",
        "AddTags",
        on=("endpoint", "endpoint-config"),
    ),
    ROLLBACK_ALARMS,
    PASS_ROLE,
)


@dataclass(frozen=True)
class Function:
    """One Lambda function of ``chalice_app/app.py``.

    ``name`` is Chalice's handler name; ``asynchronous`` says EventBridge invokes
    it (a failure queue, an on-failure destination and a depth alarm);
    ``grants`` are what its code calls, besides writing its own log group
    (and, when asynchronous, sending to its own failure queue).
    """

    name: str
    grants: tuple[Grant, ...]
    asynchronous: bool = True
    logical_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.logical_id:
            object.__setattr__(self, "logical_id", _camel(self.name))

    @property
    def role(self) -> str:
        """The logical ID of the role ``chalice package`` makes for it (``<name>_role``)."""
        return _camel(self.name + "_role")

    @property
    def queue(self) -> str:
        """Logical ID of its failure queue (and of the queue's alarm, ``<queue>Alarm``)."""
        return f"{self.logical_id}Failures"

    @property
    def policy_file(self) -> str:
        return f"policy-{self.name}.json"


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_"))


FUNCTIONS: tuple[Function, ...] = (
    # The internet-facing API: predict, /labels and /status read; nothing else. /status
    # reads the LATEST and JOB# items, /labels and predict's model name the LIVE item.
    Function(
        "api_handler",
        logical_id="APIHandler",
        asynchronous=False,
        grants=(
            sagemaker("TheEndpoint", "InvokeEndpoint", "DescribeEndpoint", on=("endpoint",)),
            table("ReadLiveModelAndLatestJobs", "state", "GetItem", leading_keys=("LIVE", "LATEST", "JOB#*")),
        ),
    ),
    Function(
        "on_dataset_upload",
        grants=(
            LIST_DATA_SETS,
            READ_DATA_SETS,
            table("StateItems", "state", *STATE_ITEMS),
            IDEMPOTENCY,
            ALERTS,
            *START_TUNING,
            *START_BATCH,
        ),
    ),
    Function(
        "check_quiet_datasets",
        grants=(
            LIST_DATA_SETS,
            READ_DATA_SETS,
            table("StateItems", "state", *STATE_ITEMS, "Scan"),
            IDEMPOTENCY,
            ALERTS,
            *START_TUNING,
        ),
    ),
    Function(
        "on_tuning_state_change",
        grants=(
            sagemaker(
                "TuningJobs",
                "DescribeHyperParameterTuningJob",
                "ListTags",
                # the cost guard's queue mode starts the waiting version when a job ends
                "CreateHyperParameterTuningJob",
                "AddTags",
                on=("hyper-parameter-tuning-job",),
            ),
            # DescribeTrainingJob: the champion channel of a live record from before issue 13 (its artifacts)
            sagemaker("FinalTrainingJob", "CreateTrainingJob", "DescribeTrainingJob", "AddTags", on=("training-job",)),
            PASS_ROLE,
            table("StateItems", "state", *STATE_ITEMS),
            IDEMPOTENCY,
            ALERTS,
        ),
    ),
    Function(
        "on_training_state_change",
        grants=(
            sagemaker("TrainingJobs", "DescribeTrainingJob", "ListTags", on=("training-job",)),
            *DEPLOY_MODEL,
            # the deploy queue's slot is claimed by deleting it (chalicelib/state.py)
            table("StateItems", "state", *STATE_ITEMS, "DeleteItem"),
            IDEMPOTENCY,
            ALERTS,
        ),
    ),
    # The endpoint's own state changes: LIVE from what DescribeEndpoint serves; a queued
    # deployment is re-driven (the same model, config and endpoint calls as a deployment).
    Function(
        "on_endpoint_state_change",
        grants=(*DEPLOY_MODEL, table("StateItems", "state", *STATE_ITEMS, "DeleteItem"), ALERTS),
    ),
    # A batch's transform job ended: its outputs joined into results.jsonl and summary.json, notified.
    Function(
        "on_transform_state_change",
        grants=(*FINISH_BATCH, table("StateItems", "state", *STATE_ITEMS), IDEMPOTENCY, ALERTS),
    ),
)


def by_name() -> dict[str, Function]:
    return {f.name: f for f in FUNCTIONS}


def log_group_grant(function: Function) -> Grant:
    """Its own log group only (the stack creates it: no ``logs:CreateLogGroup``)."""
    return Grant(
        "OwnLogs",
        ("logs:CreateLogStream", "logs:PutLogEvents"),
        (f"{_ARN}:logs:{_REGIONAL}:log-group:/aws/lambda/${{AWS::StackName}}-{function.logical_id}:*",),
    )


def queue_name(function: Function) -> str:
    """``Fn::Sub`` name of its failure queue: ``<stack>-<LogicalId>-failures`` (never another stack's)."""
    return "${AWS::StackName}-" + function.logical_id + "-failures"


def failure_queue_grant(function: Function) -> Grant:
    """Lambda sends the on-failure record with the function's own role."""
    return Grant("OwnFailureQueue", ("sqs:SendMessage",), (f"{_ARN}:sqs:{_REGIONAL}:{queue_name(function)}",))


def all_grants(function: Function) -> tuple[Grant, ...]:
    extra = (failure_queue_grant(function),) if function.asynchronous else ()
    return (*function.grants, log_group_grant(function), *extra)


def policy_document(function: Function, data_prefix: str) -> dict[str, Any]:
    """The IAM policy of ``function``'s role, with the stage's data prefix (``datasets/``)."""
    return {"Version": "2012-10-17", "Statement": [g.statement(data_prefix) for g in all_grants(function)]}


def granted_actions() -> dict[str, set[str]]:
    """Every function's allowed actions, by Chalice handler name."""
    return {f.name: {a for g in all_grants(f) for a in g.actions} for f in FUNCTIONS}
