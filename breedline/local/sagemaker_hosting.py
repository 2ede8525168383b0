"""Models, endpoint configs and endpoints of the local SageMaker service.

Why the API side is apart from :mod:`.endpoints`: these methods check and
record the resources as SageMaker does; an endpoint's model servers, its
deployments and its blue/green swap live in :class:`.endpoints.EndpointHost`.
"""

from __future__ import annotations

import copy

from .sagemaker_state import BackendState
from .sagemaker_wire import now, validation


class HostingOperations(BackendState):
    """Create/Describe/Delete/List of models, endpoint configs and endpoints, and UpdateEndpoint."""

    # ------------------------------------------------------------------- models
    def CreateModel(self, p: dict) -> dict:
        name = p["ModelName"]
        with self.lock:
            if name in self.models:
                raise validation(f'Cannot create already existing model "{self.arn("model", name)}".')
            container = p.get("PrimaryContainer") or (p.get("Containers") or [None])[0]
            if container is None or not container.get("ModelDataUrl"):
                raise validation("The model needs a PrimaryContainer with a ModelDataUrl locally")
            arn = self.arn("model", name)
            model = copy.deepcopy(p)
            model.pop("Tags", None)
            model.update(ModelArn=arn, CreationTime=now())
            self.models[name] = model
            self._add_tags(arn, p.get("Tags"))
        return {"ModelArn": arn}

    def DescribeModel(self, p: dict) -> dict:
        with self.lock:
            model = self.models.get(p["ModelName"])
            if model is None:
                raise validation(f"Could not find model \"{self.arn('model', p['ModelName'])}\".")
            return copy.deepcopy(model)

    def DeleteModel(self, p: dict) -> dict:
        with self.lock:
            if self.models.pop(p["ModelName"], None) is None:
                raise validation(f"Could not find model \"{self.arn('model', p['ModelName'])}\".")
        return {}

    def ListModels(self, p: dict) -> dict:
        with self.lock:
            picked = self._listing(list(self.models.values()), p, "ModelName", "ModelName",
                                   {"Name": "ModelName", "CreationTime": "CreationTime"})
            return {"Models": [{k: m[k] for k in ("ModelName", "ModelArn", "CreationTime")} for m in picked]}

    # --------------------------------------------------------- endpoint configs
    def CreateEndpointConfig(self, p: dict) -> dict:
        name = p["EndpointConfigName"]
        with self.lock:
            if name in self.endpoint_configs:
                raise validation(
                    f'Cannot create already existing endpoint configuration "{self.arn("endpoint-config", name)}".')
            for variant in p["ProductionVariants"]:
                if variant.get("ModelName") not in self.models:
                    raise validation(f"Could not find model \"{self.arn('model', str(variant.get('ModelName')))}\".")
            arn = self.arn("endpoint-config", name)
            config = copy.deepcopy(p)
            config.pop("Tags", None)
            config.update(EndpointConfigArn=arn, CreationTime=now())
            self.endpoint_configs[name] = config
            self._add_tags(arn, p.get("Tags"))
        return {"EndpointConfigArn": arn}

    def DescribeEndpointConfig(self, p: dict) -> dict:
        with self.lock:
            config = self.endpoint_configs.get(p["EndpointConfigName"])
            if config is None:
                raise validation(
                    f"Could not find endpoint configuration \"{self.arn('endpoint-config', p['EndpointConfigName'])}\".")
            return copy.deepcopy(config)

    def DeleteEndpointConfig(self, p: dict) -> dict:
        with self.lock:
            if self.endpoint_configs.pop(p["EndpointConfigName"], None) is None:
                raise validation(
                    f"Could not find endpoint configuration \"{self.arn('endpoint-config', p['EndpointConfigName'])}\".")
        return {}

    # ---------------------------------------------------------------- endpoints
    def CreateEndpoint(self, p: dict) -> dict:
        from .endpoints import EndpointHost

        name = p["EndpointName"]
        with self.lock:
            if name in self.endpoints:
                raise validation(f'Cannot create already existing endpoint "{self.arn("endpoint", name)}".')
            if p["EndpointConfigName"] not in self.endpoint_configs:
                raise validation(
                    f"Could not find endpoint configuration \"{self.arn('endpoint-config', p['EndpointConfigName'])}\".")
            arn = self.arn("endpoint", name)
            created = now()
            self.endpoints[name] = {
                "EndpointName": name,
                "EndpointArn": arn,
                "EndpointConfigName": p["EndpointConfigName"],
                "EndpointStatus": "Creating",
                "CreationTime": created,
                "LastModifiedTime": created,
            }
            self._add_tags(arn, p.get("Tags"))
            host = EndpointHost(self, name)
            self.hosts[name] = host
        host.emit()
        host.deploy(p["EndpointConfigName"], update=False)
        return {"EndpointArn": arn}

    def _endpoint(self, name: str) -> dict:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise validation(f"Could not find endpoint \"{self.arn('endpoint', name)}\".")
        return endpoint

    def UpdateEndpoint(self, p: dict) -> dict:
        name = p["EndpointName"]
        with self.lock:
            endpoint = self._endpoint(name)
            if endpoint["EndpointStatus"] != "InService":
                raise validation(f"Cannot update in-progress endpoint \"{endpoint['EndpointArn']}\".")
            if p["EndpointConfigName"] not in self.endpoint_configs:
                raise validation(
                    f"Could not find endpoint configuration \"{self.arn('endpoint-config', p['EndpointConfigName'])}\".")
            endpoint["EndpointStatus"] = "Updating"
            endpoint["LastModifiedTime"] = now()
            endpoint.pop("FailureReason", None)
            if "DeploymentConfig" in p:
                endpoint["LastDeploymentConfig"] = copy.deepcopy(p["DeploymentConfig"])
            host = self.hosts[name]
        host.emit()
        host.deploy(p["EndpointConfigName"], update=True)
        return {"EndpointArn": endpoint["EndpointArn"]}

    def DescribeEndpoint(self, p: dict) -> dict:
        with self.lock:
            return copy.deepcopy(self._endpoint(p["EndpointName"]))

    def DeleteEndpoint(self, p: dict) -> dict:
        with self.lock:
            endpoint = self._endpoint(p["EndpointName"])
            host = self.hosts.pop(p["EndpointName"], None)
            self.endpoints.pop(p["EndpointName"])
            self.tags.pop(endpoint["EndpointArn"], None)
        if host is not None:
            host.shutdown()
        return {}

    def ListEndpoints(self, p: dict) -> dict:
        keys = ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus")
        with self.lock:
            picked = self._listing(list(self.endpoints.values()), p, "EndpointName", "EndpointStatus",
                                   {"Name": "EndpointName", "CreationTime": "CreationTime", "Status": "EndpointStatus"})
            return {"Endpoints": [{k: e[k] for k in keys} for e in picked]}

