"""The stack's template: merge template, generated tables, API auth, SAM expansion.

``infra/breedline.yaml`` is the hand-written part; the DynamoDB tables are
generated from the app's own definitions, the API auth is applied per stage
to the Swagger that ``chalice package`` writes, and the SAM transform can be
expanded locally for a dry run or for moto.
"""

from __future__ import annotations

import copy
from typing import Any

from samtranslator.yaml_helper import yaml_parse

from breedline.build.paths import REPO_ROOT
from breedline.deploy.functions import FUNCTIONS, Function, queue_name
from breedline.deploy.stage import API_AUTH_MODES, DeployError

MERGE_TEMPLATE = REPO_ROOT / "infra" / "breedline.yaml"

#: Logical IDs of the generated tables, keyed like TABLE_DEFINITIONS / Settings.
TABLE_RESOURCES = {"state_table": "StateTable", "idempotency_table": "IdempotencyTable"}
#: Env var that carries each table's name (see chalicelib/config.py).
TABLE_ENV = {"state_table": "BREEDLINE_STATE_TABLE", "idempotency_table": "BREEDLINE_IDEMPOTENCY_TABLE"}
#: ``create_table`` keys copied as they are into the table's Properties.
_TABLE_PASSTHROUGH = (
    "KeySchema",
    "AttributeDefinitions",
    "BillingMode",
    "ProvisionedThroughput",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "StreamSpecification",
)

#: Routes that are never reachable with an API key alone.
IAM_ONLY_PATHS = ("/status",)
SECURITY_DEFINITIONS = {
    "api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"},
    "sigv4": {"type": "apiKey", "name": "Authorization", "in": "header", "x-amazon-apigateway-authtype": "awsSigv4"},
}
#: What the template needs CloudFormation to accept: IAM roles, named ones, and the SAM transform.
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


def table_resources(
    definitions: dict[str, dict[str, Any]], ttl_attributes: dict[str, str] | None = None
) -> dict[str, Any]:
    """CloudFormation tables from ``create_table`` kwargs (minus TableName), one per definition.

    Why generated: the local runtime creates the same tables from the same
    definitions, so the two can never disagree on keys or indexes.
    """
    resources: dict[str, Any] = {}
    for key, kwargs in definitions.items():
        if key not in TABLE_RESOURCES:
            raise DeployError(f"TABLE_DEFINITIONS has {key!r}; infra knows {sorted(TABLE_RESOURCES)}")
        unknown = set(kwargs) - set(_TABLE_PASSTHROUGH) - {"SSESpecification", "Tags", "TableClass"}
        if unknown:
            raise DeployError(f"TABLE_DEFINITIONS[{key!r}] has keys infra cannot map: {sorted(unknown)}")
        props: dict[str, Any] = {k: copy.deepcopy(kwargs[k]) for k in _TABLE_PASSTHROUGH if k in kwargs}
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
    try:
        from chalicelib import state
    except ImportError as exc:
        raise DeployError(f"chalicelib.state is not importable: {exc}") from exc
    return state.TABLE_DEFINITIONS, dict(getattr(state, "TTL_ATTRIBUTES", {}))


def build_merge_template() -> dict[str, Any]:
    """``infra/breedline.yaml`` plus the generated tables and their env vars.

    The YAML is read with SAM's own loader, which turns the short-form
    intrinsics (``!Sub``, ``!Ref``, ``!GetAtt a.b``) into their JSON form.
    """
    template = yaml_parse(MERGE_TEMPLATE.read_text())
    definitions, ttl = table_definitions()
    template["Resources"].update(table_resources(definitions, ttl))
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


#: API Gateway's own answers (a missing API key, throttling, its timeout) that reach no Lambda, by type.
GATEWAY_RESPONSE_TYPES = ("DEFAULT_4XX", "DEFAULT_5XX")


def apply_cors(template: dict[str, Any], origins: tuple[str, ...]) -> dict[str, Any]:
    """The stage's CORS in API Gateway: the preflight methods when origins are set, none otherwise.

    Why here: the app always has its ``OPTIONS`` views (Chalice packages them as
    Lambda proxy methods without auth, and the Lambda answers each preflight for
    the origins of ``BREEDLINE_CORS_ORIGINS``); a stage without origins gets no
    open ``OPTIONS`` methods at all. API Gateway's own errors never reach the
    Lambda, so for one origin its gateway responses carry that origin; a static
    header cannot pick one of several, so with several they carry only
    ``Vary: Origin`` and a browser sees those few errors as network failures
    (docs/app.md, "CORS").
    """
    api = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]
    if not origins:
        for methods in api.get("paths", {}).values():
            methods.pop("options", None)
        api.pop("x-amazon-apigateway-gateway-responses", None)
        return template
    headers = {"gatewayresponse.header.Vary": "'Origin'"}
    if len(origins) == 1:
        headers["gatewayresponse.header.Access-Control-Allow-Origin"] = f"'{origins[0]}'"
    api["x-amazon-apigateway-gateway-responses"] = {
        kind: {"responseParameters": dict(headers)} for kind in GATEWAY_RESPONSE_TYPES
    }
    return template


#: The parameter of infra/breedline.yaml that every log group's retention comes from.
LOG_RETENTION_PARAMETER = "LogRetentionDays"


def function_log_group(logical_id: str) -> str:
    """The ``Fn::Sub`` log group name of one Lambda: ``/aws/lambda/<stack>-<LogicalId>``."""
    return "/aws/lambda/${AWS::StackName}-" + logical_id


def name_functions_and_log_groups(template: dict[str, Any]) -> dict[str, Any]:
    """Give every Lambda the exact name ``<stack>-<LogicalId>`` and a stack-owned log group with a retention.

    Why exact names: CloudFormation's generated names (``<stack>-<LogicalId>-<random>``)
    can only be granted as ``<stack>-*``, which also matches the functions of a stack
    named ``<stack>-eu``. Stack names are lowercase and every logical ID starts
    uppercase, so ``<stack>-<LogicalId>`` never names another stack's function
    (chalice_app/.chalice/policy.json grants these exact log groups). Why the stack
    creates the log group: Lambda's own one never expires, and the function no longer
    needs ``logs:CreateLogGroup``; the function depends on its group so that no
    invocation can come first.
    """
    functions = [k for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"]
    for logical_id in functions:
        group_id = f"{logical_id}LogGroup"
        if group_id in template["Resources"]:
            raise DeployError(f"the template already has a resource {group_id}")
        function = template["Resources"][logical_id]
        function["Properties"]["FunctionName"] = {"Fn::Sub": "${AWS::StackName}-" + logical_id}
        deps = function.get("DependsOn", [])
        function["DependsOn"] = sorted({*(deps if isinstance(deps, list) else [deps]), group_id})
        template["Resources"][group_id] = {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Delete",
            "Properties": {
                "LogGroupName": {"Fn::Sub": function_log_group(logical_id)},
                "RetentionInDays": {"Ref": LOG_RETENTION_PARAMETER},
            },
        }
    return template


def check_every_function_has_a_row(template: dict[str, Any]) -> None:
    """Refuse a packaged function that :data:`breedline.deploy.functions.FUNCTIONS` does not list.

    Why: its role would be the deny-all fallback, it would get no failure queue,
    and the handler-errors alarm would not watch it.
    """
    known = {f.logical_id for f in FUNCTIONS}
    missing = sorted(k for k, r in template["Resources"].items()
                     if r["Type"] == "AWS::Serverless::Function" and k not in known)
    if missing:
        raise DeployError(f"the app's function(s) {', '.join(missing)} have no row in breedline/deploy/functions.py "
                          "FUNCTIONS: add one with the calls the handler makes")


#: Days an unprocessed failure stays in its queue: SQS's maximum, 14 days.
FAILURE_RETENTION_SECONDS = 14 * 24 * 3600
#: Lambda's own default; written down so that the template says what happens.
ASYNC_RETRIES = 2


def packaged_functions(template: dict[str, Any]) -> list[Function]:
    """The rows of FUNCTIONS whose function the packaged template has, in table order."""
    return [f for f in FUNCTIONS if template["Resources"].get(f.logical_id, {}).get("Type") == "AWS::Serverless::Function"]


def add_failure_queues(template: dict[str, Any]) -> dict[str, Any]:
    """Per asynchronous function: an SQS failure queue, its on-failure destination and a depth alarm.

    Why ``DestinationConfig.OnFailure`` and not ``DeadLetterConfig``: the
    on-failure record keeps the original event (``requestPayload``) together with
    the error (``responsePayload``) and why it gave up (``requestContext.condition``,
    ``approximateInvokeCount``); a dead-letter queue keeps only the event. Also
    puts every function's ``Errors`` (the API's too) in the handler-errors alarm
    and every Lambda role in the customer-key policy, both from the same table.
    """
    resources = template["Resources"]
    functions = packaged_functions(template)
    for function in functions:
        if not function.asynchronous:
            continue
        for logical_id in (function.queue, f"{function.queue}Alarm", f"{function.logical_id}EventInvokeConfig"):
            if logical_id in resources:
                raise DeployError(f"the template already has a resource {logical_id}")
        resources[function.queue] = {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": {"Fn::Sub": queue_name(function)},
                "MessageRetentionPeriod": FAILURE_RETENTION_SECONDS,
                "KmsMasterKeyId": {"Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"}, {"Ref": "AWS::NoValue"}]},
                "SqsManagedSseEnabled": {"Fn::If": ["HasKmsKey", {"Ref": "AWS::NoValue"}, True]},
            },
        }
        resources[f"{function.logical_id}EventInvokeConfig"] = {
            "Type": "AWS::Lambda::EventInvokeConfig",
            "Properties": {
                "FunctionName": {"Ref": function.logical_id},
                "Qualifier": "$LATEST",
                "MaximumRetryAttempts": ASYNC_RETRIES,
                "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [function.queue, "Arn"]}}},
            },
        }
        resources[f"{function.queue}Alarm"] = {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": {"Fn::Sub": queue_name(function)},
                "AlarmDescription": (
                    f"{function.logical_id} gave up on an event after {ASYNC_RETRIES} retries; it waits in its failure "
                    "queue for 14 days. Read the error in the message, fix the cause, then: "
                    f"python -m breedline.deploy redrive --handler {function.name}"
                ),
                "Namespace": "AWS/SQS",
                "MetricName": "ApproximateNumberOfMessagesVisible",
                "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": [function.queue, "QueueName"]}}],
                "Statistic": "Maximum",
                "Period": 300,
                "EvaluationPeriods": 1,
                "Threshold": 0,
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching",
                "AlarmActions": [{"Ref": "AlertTopic"}],
            },
        }
    _watch_handler_errors(resources, functions)
    key_use = resources.get("CustomerKeyUse")
    if key_use is not None:
        roles = key_use["Properties"]["Roles"]
        roles.extend({"Ref": f.role} for f in functions if {"Ref": f.role} not in roles)
    return template


def _watch_handler_errors(resources: dict[str, Any], functions: list[Function]) -> None:
    """The handler-errors alarm sums ``AWS/Lambda Errors`` of every function of the table."""
    alarm = resources.get("HandlerErrorsAlarm")
    if alarm is None:
        return
    metrics: list[dict[str, Any]] = [
        {
            "Id": function.logical_id[:1].lower() + function.logical_id[1:],
            "ReturnData": False,
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/Lambda",
                    "MetricName": "Errors",
                    "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": function.logical_id}}],
                },
                "Period": 300,
                "Stat": "Sum",
            },
        }
        for function in functions
    ]
    total = " + ".join(f"FILL({m['Id']}, 0)" for m in metrics)
    metrics.append({"Id": "errors", "Label": "Lambda handler errors", "Expression": total, "ReturnData": True})
    alarm["Properties"]["Metrics"] = metrics


def point_code_at(template: dict[str, Any], bucket: str, key: str) -> None:
    """Replace Chalice's local ``./deployment.zip`` with the uploaded object (what ``aws cloudformation package`` does)."""
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function" and props.get("CodeUri") == "./deployment.zip":
            props["CodeUri"] = f"s3://{bucket}/{key}"


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


def evaluate_conditions(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, bool]:
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
