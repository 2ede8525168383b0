"""Pipeline state in DynamoDB: uploads per data set, jobs, the live model.

Why a table: Lambdas are stateless and events arrive duplicated and out of
order. The debounce needs "when was the last upload", the quality gate needs
"what is live and how good is it", and ``/status`` needs "which jobs ran".

:data:`TABLE_DEFINITIONS` is the contract with the local runtime and
``infra/``: the ``create_table`` kwargs (minus ``TableName``) of each table,
keyed by the :class:`~chalicelib.config.Settings` attribute holding its name.

Items of the state table (``pk``, ``sk``):

========================  ================  ==============================================
pk                        sk                attributes
========================  ================  ==============================================
``DATASET#<name>``        ``UPLOADS``       last_upload, last_key, pending, settled_at,
                                            settled_version, outcome, reasons,
                                            problem, problem_at (why the quiet check
                                            skips it; alerted once), sniff (listing
                                            digest, sampled, unreadable)
``DATASET#<name>``        ``VERSION#<v>``   classes, image_count, class_counts (split ->
                                            class -> images), tuning_job, created_at,
                                            budget_status, budget_note, budget_day (the
                                            cost guard's word on it: :meth:`note_version`)
``DATASET#<name>``        ``BUDGET``        day, started, running, running_version, queued,
                                            queued_version, rev (:mod:`chalicelib.budget`;
                                            written only by :meth:`put_budget`)
``JOB#<job name>``        ``JOB``           stage, dataset, version, status, reason, updated_at,
                                            event_ms, alerted (status moves only forward:
                                            :meth:`record_job`), superseded_by
``LATEST``                ``tuning`` /      job, dataset, started_at
                          ``training``
``LIVE``                  ``MODEL``         model, training_job, accuracy, metrics (headline
                                            test figures), artifacts (model.tar.gz URI, the
                                            next final job's champion), labels, dataset,
                                            version, endpoint, endpoint_config, deployed_at,
                                            previous_model, live_since (written only from
                                            what DescribeEndpoint says it serves)
``CONFIG#<config name>``  ``DEPLOYMENT``    the LIVE fields of the model that config
                                            serves, deploy_status (Pending, Live,
                                            RolledBack, Failed), deploy_reason
``ENDPOINT``              ``PENDING``       endpoint_config, model, training_job,
                                            requested_at: the update not yet confirmed
``ENDPOINT``              ``QUEUED``        training_job, model, dataset, version,
                                            artifacts, accuracy, order_ms, queued_at:
                                            the newest approved model waiting for
                                            the endpoint to be InService
========================  ================  ==============================================
"""

from __future__ import annotations

import time
from decimal import Decimal
from enum import Enum
from typing import Any, Iterable

from contract import COMPLETED, FAILED, IN_PROGRESS, STOPPED, TERMINAL_STATUSES

from chalicelib.deployment_items import DeploymentItems

TABLE_DEFINITIONS: dict[str, dict[str, Any]] = {
    "state_table": {
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    },
    # Powertools idempotency layout: partition key "id"; enable TTL on "expiration".
    "idempotency_table": {
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    },
}
#: TTL attribute per table (UpdateTimeToLive is not part of create_table).
TTL_ATTRIBUTES: dict[str, str] = {"idempotency_table": "expiration"}

UPLOADS = "UPLOADS"
BUDGET = "BUDGET"


class JobChange(str, Enum):
    """What :meth:`StateStore.record_job` did."""

    MOVED = "moved"  # a new job, or its status moved forward
    SAME = "same"  # the status was already this one; other fields refreshed
    REFUSED = "refused"  # the record is further on: nothing written

STAGES = ("tuning", "training")


def _to_ddb(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_ddb(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_ddb(v) for v in value]
    return value


def _from_ddb(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, dict):
        return {k: _from_ddb(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_ddb(v) for v in value]
    return value


class StateStore(DeploymentItems):
    """Small typed API over the state table (a low-level DynamoDB client)."""

    def __init__(self, client: Any, table: str) -> None:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self._client = client
        self._table = table
        self._ser = TypeSerializer()
        self._de = TypeDeserializer()

    # -- plumbing ---------------------------------------------------------
    def _key(self, pk: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def _values(self, values: dict[str, Any]) -> dict[str, Any]:
        return {k: self._ser.serialize(_to_ddb(v)) for k, v in values.items()}

    def _item(self, raw: dict[str, Any] | None) -> dict[str, Any] | None:
        if not raw:
            return None
        return _from_ddb({k: self._de.deserialize(v) for k, v in raw.items()})

    def _get(self, pk: str, sk: str) -> dict[str, Any] | None:
        resp = self._client.get_item(TableName=self._table, Key=self._key(pk, sk), ConsistentRead=True)
        return self._item(resp.get("Item"))

    def _update(
        self,
        pk: str,
        sk: str,
        expression: str,
        values: dict[str, Any],
        condition: str | None = None,
        names: dict[str, str] | None = None,
    ) -> bool:
        """UpdateItem; False when the condition failed (that is a decision, not an error)."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": self._key(pk, sk),
            "UpdateExpression": expression,
            "ExpressionAttributeValues": self._values(values),
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            self._client.update_item(**kwargs)
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    # -- uploads and debounce ---------------------------------------------
    def record_upload(self, dataset: str, key: str, event_epoch: float) -> bool:
        """Note one uploaded object; returns True when it re-opened the data set.

        ``last_upload`` only moves forward (events arrive out of order). The
        data set becomes pending unless it was already settled after this
        object was written (S3 listings are strongly consistent, so that
        settlement saw the object).
        """
        pk = f"DATASET#{dataset}"
        self._update(
            pk,
            UPLOADS,
            "SET last_upload = :t, last_key = :k",
            {":t": int(event_epoch), ":k": key, ":n": "N"},
            # a last_upload that is not a number (a damaged item) is repaired by the next upload
            "attribute_not_exists(last_upload) OR NOT attribute_type(last_upload, :n) OR last_upload < :t",
        )
        return self._update(
            pk,
            UPLOADS,
            "SET pending = :p",
            {":p": True, ":t": int(event_epoch)},
            "attribute_not_exists(settled_at) OR settled_at <= :t",
        )

    def pending_datasets(self) -> list[dict[str, Any]]:
        """Every data set with uploads not yet settled (a scan: the table is small)."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "sk = :u AND pending = :p",
            "ExpressionAttributeValues": self._values({":u": UPLOADS, ":p": True}),
        }
        while True:
            resp = self._client.scan(**kwargs)
            for raw in resp.get("Items", []):
                item = self._item(raw) or {}
                item["dataset"] = item["pk"].split("#", 1)[1]
                items.append(item)
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def uploads(self, dataset: str) -> dict[str, Any] | None:
        return self._get(f"DATASET#{dataset}", UPLOADS)

    def settle(
        self,
        dataset: str,
        version: str,
        outcome: str,
        listed_at: float,
        reasons: Iterable[str] = (),
        sniff: dict[str, Any] | None = None,
    ) -> None:
        """Record what a listing led to; clear ``pending`` unless newer uploads arrived since.

        ``sniff`` (the listing's digest and what reading its sampled images
        found) lets the next settlement of an unchanged listing skip the GETs.
        """
        pk = f"DATASET#{dataset}"
        values = {":v": version, ":o": outcome, ":s": int(listed_at), ":r": list(reasons)[:20], ":n": sniff or {}}
        self._update(
            pk,
            UPLOADS,
            "SET settled_version = :v, outcome = :o, settled_at = :s, reasons = :r, sniff = :n "
            "REMOVE problem, problem_at",
            values,
        )
        self._update(
            pk,
            UPLOADS,
            "SET pending = :f",
            {":f": False, ":s": int(listed_at)},
            "attribute_not_exists(last_upload) OR last_upload < :s",
        )

    def note_problem(self, dataset: str, problem: str, now: float) -> bool:
        """Remember why a pending data set could not be checked; True only when this problem is new.

        Why: the quiet check runs every minute. Alerting only on a new or
        changed problem tells the operator once, not 1,440 times a day; a
        successful settlement clears it (:meth:`settle`), so a recurrence alerts again.
        """
        return self._update(
            f"DATASET#{dataset}",
            UPLOADS,
            "SET problem = :p, problem_at = :t",
            {":p": problem[:500], ":t": int(now)},
            "attribute_not_exists(problem) OR problem <> :p",
        )

    # -- data set versions -------------------------------------------------
    def save_version(
        self, dataset: str, version: str, classes: Iterable[str], image_count: int, tuning_job: str,
        class_counts: dict[str, dict[str, int]] | None = None,
    ) -> None:
        """The version's classes (the model's output order) and, when known, its per-split class counts."""
        self._update(
            f"DATASET#{dataset}",
            f"VERSION#{version}",
            "SET classes = :c, image_count = :n, tuning_job = :j, class_counts = :k, "
            "created_at = if_not_exists(created_at, :t)",
            {":c": list(classes), ":n": image_count, ":j": tuning_job, ":k": class_counts or {}, ":t": int(time.time())},
        )

    def version(self, dataset: str, version: str) -> dict[str, Any] | None:
        return self._get(f"DATASET#{dataset}", f"VERSION#{version}")

    def note_version(self, dataset: str, version: str, status: str, note: str, day: str) -> bool:
        """The cost guard's word on a version (rejected, queued, dropped...); True only when it is new.

        Why conditional: a duplicate marker of an over-budget version must not
        alert twice the same day, while the same version rejected again on a
        later day (its uploader retried too early) does alert.
        """
        return self._update(
            f"DATASET#{dataset}",
            f"VERSION#{version}",
            "SET budget_status = :s, budget_note = :n, budget_day = :d",
            {":s": status, ":n": note[:500], ":d": day},
            "attribute_not_exists(budget_status) OR budget_status <> :s OR budget_day <> :d",
        )

    # -- the cost guard (chalicelib.budget) -----------------------------------
    def budget(self, dataset: str) -> dict[str, Any] | None:
        return self._get(f"DATASET#{dataset}", BUDGET)

    def put_budget(self, dataset: str, item: dict[str, Any], expected_rev: int | None) -> bool:
        """Write the data set's budget item whole, only if it is still at ``expected_rev``; False when it moved.

        Why compare-and-set: two Lambdas settling two versions at once each read
        the item, decide, and write; the one whose item moved underneath it
        loses, reads again and decides again, so two cannot both take the slot.
        """
        body = {k: v for k, v in item.items() if v is not None and k not in ("pk", "sk", "rev")}
        record = {"pk": f"DATASET#{dataset}", "sk": BUDGET, **body, "rev": (expected_rev or 0) + 1}
        kwargs: dict[str, Any] = {"TableName": self._table, "Item": self._values(record)}
        if expected_rev is None:
            kwargs["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            kwargs["ConditionExpression"] = "rev = :rev"
            kwargs["ExpressionAttributeValues"] = self._values({":rev": expected_rev})
        try:
            self._client.put_item(**kwargs)
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    # -- jobs -----------------------------------------------------------------
    def record_job(
        self,
        name: str,
        *,
        stage: str,
        dataset: str,
        version: str,
        status: str,
        reason: str = "",
        debugger: str = "",
        event_ms: int | None = None,
    ) -> JobChange:
        """Move a job's record forward; :attr:`JobChange.REFUSED` (nothing written) when that would rewrite history.

        Why a conditional write: events arrive late and duplicated, and two
        Lambdas may handle two of them at once. DynamoDB decides atomically:

        - a terminal status (Completed, Failed, Stopped) is final: only the
          same status may be written again (to refresh ``reason``), never a
          different terminal status, never InProgress;
        - a non-terminal status is written only over a non-terminal one, and,
          when both carry an event time (``event_ms``), not over a newer one.

        :attr:`JobChange.SAME` says the status was already this one (a duplicate
        event, or a retry refreshing ``reason``), read atomically from the old item.
        A new InProgress job also becomes the stage's latest. ``debugger``: the
        Debugger mode the job really runs with (``auto`` may fall back), kept once set.
        """
        now = int(time.time())
        values: dict[str, Any] = {":st": stage, ":d": dataset, ":v": version, ":s": status, ":r": reason, ":t": now}
        values.update({":c": COMPLETED, ":f": FAILED, ":x": STOPPED})
        expression = (
            "SET stage = :st, dataset = :d, version = :v, #s = :s, reason = :r, updated_at = :t, "
            "created_at = if_not_exists(created_at, :t)"
        )
        if debugger:
            expression += ", debugger = :dbg"
            values[":dbg"] = debugger
        not_terminal = "NOT #s IN (:c, :f, :x)"
        if status in TERMINAL_STATUSES:
            condition = f"attribute_not_exists(#s) OR #s = :s OR {not_terminal}"
        else:
            condition = f"attribute_not_exists(#s) OR ({not_terminal}"
            condition += " AND (attribute_not_exists(event_ms) OR event_ms <= :et))" if event_ms is not None else ")"
        if event_ms is not None:
            expression += ", event_ms = :et"
            values[":et"] = int(event_ms)
        try:
            old = self._client.update_item(
                TableName=self._table, Key=self._key(f"JOB#{name}", "JOB"), UpdateExpression=expression,
                ConditionExpression=condition, ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=self._values(values), ReturnValues="ALL_OLD",
            ).get("Attributes") or {}
        except self._client.exceptions.ConditionalCheckFailedException:
            return JobChange.REFUSED
        if status == IN_PROGRESS:
            self._update("LATEST", stage, "SET job = :j, dataset = :d, started_at = :t", {":j": name, ":d": dataset, ":t": now})
        previous = (self._item(old) or {}).get("status")
        return JobChange.SAME if previous == status else JobChange.MOVED

    def mark_superseded(self, name: str, version: str) -> None:
        """Remember that tuning job ``name`` was stopped for ``version``: its end then alerts nothing and starts nothing."""
        self._update(f"JOB#{name}", "JOB", "SET superseded_by = :v", {":v": version})

    def mark_alerted(self, name: str, status: str) -> None:
        """Remember that ``status`` of job ``name`` was alerted (a later duplicate then is not)."""
        self._update(f"JOB#{name}", "JOB", "SET alerted = :s", {":s": status})

    def job(self, name: str) -> dict[str, Any] | None:
        return self._get(f"JOB#{name}", "JOB")

    def latest_jobs(self) -> dict[str, dict[str, Any] | None]:
        """The most recently started job of each stage, with its current status."""
        result: dict[str, dict[str, Any] | None] = {}
        for stage in STAGES:
            latest = self._get("LATEST", stage)
            if latest is None:
                result[stage] = None
                continue
            job = self.job(latest["job"]) or {}
            result[stage] = {
                "name": latest["job"],
                "dataset": latest.get("dataset"),
                "status": job.get("status", "Unknown"),
                "reason": job.get("reason", ""),
                "started_at": latest.get("started_at"),
                "updated_at": job.get("updated_at"),
            }
        return result

    # -- live model -----------------------------------------------------------
    def live_model(self) -> dict[str, Any] | None:
        return self._get("LIVE", "MODEL")

    def set_live_model(self, record: dict[str, Any], expected_previous: str | None) -> bool:
        """Replace the live model record, only if it is still ``expected_previous``.

        Two deployments racing cannot both win: the loser sees False.
        """
        item = {"pk": "LIVE", "sk": "MODEL", **record, "previous_model": expected_previous or ""}
        condition = "attribute_not_exists(pk)" if expected_previous is None else "model = :prev"
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Item": self._values(item),
            "ConditionExpression": condition,
        }
        if expected_previous is not None:
            kwargs["ExpressionAttributeValues"] = self._values({":prev": expected_previous})
        try:
            self._client.put_item(**kwargs)
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True
