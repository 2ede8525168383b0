"""The state table's deployment items: what each endpoint config serves, the pending update, the queue.

Why apart from :mod:`chalicelib.state`: these items belong to the endpoint's
own life (issue 15, items 1 and 2), and :class:`~chalicelib.state.StateStore`
takes them in as this base class, so callers keep one store. The methods use
the store's plumbing (``_client``, ``_table``, ``_values``, ``_get``, ``_item``).
"""

from __future__ import annotations

import time
from typing import Any


class DeploymentItems:
    """``CONFIG#<config>``/``DEPLOYMENT``, ``ENDPOINT``/``PENDING`` and ``ENDPOINT``/``QUEUED``."""

    _client: Any
    _table: str

    def save_deployment(self, record: dict[str, Any]) -> None:
        """The LIVE record a config would make, written before the endpoint is pointed at it.

        Why before: the endpoint's InService event may be handled before
        ``deploy()`` returns; LIVE is then looked up here by the served config.
        """
        item = {"pk": f"CONFIG#{record['endpoint_config']}", "sk": "DEPLOYMENT", **record,
                "deploy_status": "Pending", "deploy_reason": ""}
        self._client.put_item(TableName=self._table, Item=self._values(item))

    def deployment(self, config_name: str) -> dict[str, Any] | None:
        return self._get(f"CONFIG#{config_name}", "DEPLOYMENT")

    def mark_deployment(self, config_name: str, status: str, reason: str = "") -> None:
        """What became of a deployment (only an existing record is marked)."""
        self._update(f"CONFIG#{config_name}", "DEPLOYMENT", "SET deploy_status = :s, deploy_reason = :r",
                     {":s": status, ":r": reason[:500]}, "attribute_exists(pk)")

    def set_pending(self, config_name: str, model: str, training_job: str) -> None:
        """The endpoint was asked to serve ``config_name``; its InService event will say whether it does."""
        self._update("ENDPOINT", "PENDING", "SET endpoint_config = :c, model = :m, training_job = :j, requested_at = :t",
                     {":c": config_name, ":m": model, ":j": training_job, ":t": int(time.time())})

    def pending(self) -> dict[str, Any] | None:
        return self._get("ENDPOINT", "PENDING")

    def clear_pending(self, config_name: str) -> bool:
        """Forget the pending update, only if it is still ``config_name`` (a newer one stays)."""
        try:
            self._client.delete_item(
                TableName=self._table, Key=self._key("ENDPOINT", "PENDING"),
                ConditionExpression="endpoint_config = :c", ExpressionAttributeValues=self._values({":c": config_name}),
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def queue_deployment(self, item: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        """Queue an approved deployment unless a newer one (larger ``order_ms``) is queued already.

        Returns (queued, the item it displaced). The same training job may be
        queued again (a retry). A conditional put, so two Lambdas queueing at
        once keep the newest whatever their order.
        """
        values = {":o": int(item["order_ms"]), ":j": item["training_job"]}
        try:
            old = self._client.put_item(
                TableName=self._table, Item=self._values({"pk": "ENDPOINT", "sk": "QUEUED", **item}),
                ConditionExpression="attribute_not_exists(pk) OR order_ms < :o OR training_job = :j",
                ExpressionAttributeValues=self._values(values), ReturnValues="ALL_OLD",
            ).get("Attributes")
        except self._client.exceptions.ConditionalCheckFailedException:
            return False, None
        displaced = self._item(old)
        if displaced and displaced.get("training_job") == item["training_job"]:
            displaced = None
        return True, displaced

    def queued_deployment(self) -> dict[str, Any] | None:
        return self._get("ENDPOINT", "QUEUED")

    def claim_queued(self, item: dict[str, Any]) -> bool:
        """Take ``item`` off the queue; False when another handler took it or a newer one replaced it."""
        try:
            self._client.delete_item(
                TableName=self._table, Key=self._key("ENDPOINT", "QUEUED"),
                ConditionExpression="training_job = :j AND order_ms = :o",
                ExpressionAttributeValues=self._values({":j": item["training_job"], ":o": int(item["order_ms"])}),
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True
