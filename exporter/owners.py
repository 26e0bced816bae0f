"""Which workload a Kubernetes pod belongs to, as a name stable across the pod's restarts:
`namespace/<controller>` from its owner references (a Deployment's pods name the Deployment), read
through the Kubernetes API with a short timeout; when that cannot be read, a name that is never wrong."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import orjson

from exporter.ipman import WORKLOAD_LEN

ReplicaSetReader = Callable[[str, str], "dict | None"]


def workload_of(pod: dict, read_replica_set: ReplicaSetReader) -> str:
    """The pod's controller names it, except that a ReplicaSet whose own controller is a Deployment
    gives the Deployment; no controller: the pod itself. pod: the Pod object as the API returns it
    (JSON); read_replica_set(namespace, name) returns the ReplicaSet object, or None when it is gone
    or cannot be read. An unreadable ReplicaSet gives the pod's own name, not the ReplicaSet's: that
    could equal some other Deployment's name."""
    metadata = pod["metadata"]
    namespace = metadata["namespace"]
    owner = controller(metadata)
    if owner is None:
        return pod_name(namespace, metadata["name"])
    if owner["kind"] == "ReplicaSet" and owner.get("apiVersion", "").startswith("apps/"):
        replica_set = read_replica_set(namespace, owner["name"])
        if replica_set is None or replica_set["metadata"].get("uid") != owner.get("uid"):
            return pod_name(namespace, metadata["name"])
        parent = controller(replica_set["metadata"])
        if parent is not None and parent["kind"] == "Deployment":
            return fit(f"{namespace}/{parent['name']}")
    return fit(f"{namespace}/{owner['name']}")


def controller(metadata: dict) -> dict | None:
    for reference in metadata.get("ownerReferences") or []:
        if reference.get("controller"):
            return reference
    return None


def pod_name(namespace: str, name: str) -> str:
    """A pod without a controller, or whose controller could not be read: the pod itself. `pod/`
    keeps it apart from every controller name (names hold no '/'), so it can never be mistaken for
    another workload; it is only less stable (it changes when the pod is replaced)."""
    return fit(f"{namespace}/pod/{name}")


def fit(name: str) -> str:
    """The maps hold 63 bytes: a longer name keeps its start and gets a hash of the whole, so two
    long names never collide into one."""
    raw = name.encode()
    if len(raw) < WORKLOAD_LEN:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return raw[: WORKLOAD_LEN - 1 - 13].decode(errors="ignore") + "~" + digest


class KubernetesOwners:
    """Reads pods and ReplicaSets with the official client: get only, each call within timeout_s."""

    def __init__(self, kubeconfig: str | None, timeout_s: float):
        from kubernetes import client, config

        configuration = client.Configuration()
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
        # One try per call: urllib3's default retries with backoff would spend seconds of a pod's
        # set-up on an API server that is away.
        configuration.retries = False
        self._api = client.ApiClient(configuration)
        self._timeout = (timeout_s, timeout_s)  # connect, read

    def workload(self, namespace: str, name: str, uid: str | None) -> tuple[str, str]:
        """(workload, how): how is "api", or why the pod's own name was used."""
        try:
            pod = self._read("/api/v1/namespaces/{namespace}/pods/{name}", namespace, name)
        except Exception as e:  # any failure of the API call: the never-wrong name
            return pod_name(namespace, name), f"fallback: {type(e).__name__}: {e}"[:200]
        if uid and pod["metadata"].get("uid") != uid:
            # Another pod of that name (the one being set up was deleted and recreated).
            return pod_name(namespace, name), "fallback: pod uid differs"
        return workload_of(pod, self._replica_set), "api"

    def _replica_set(self, namespace: str, name: str) -> dict | None:
        try:
            return self._read("/apis/apps/v1/namespaces/{namespace}/replicasets/{name}", namespace, name)
        except Exception:  # unreadable: the ReplicaSet's own name is still right
            return None

    def _read(self, path: str, namespace: str, name: str) -> dict:
        # The client's generic call rather than CoreV1Api/AppsV1Api: importing those generated
        # modules alone takes over a second, on every pod's set-up. Raw JSON, the shape of
        # `kubectl get -o json`, instead of the client's model objects.
        request = self._api.param_serialize(
            "GET", path, path_params={"namespace": namespace, "name": name},
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*request, _request_timeout=self._timeout)
        body = response.read()
        if response.status != 200:
            raise LookupError(f"GET {path.format(namespace=namespace, name=name)}: HTTP {response.status}")
        return orjson.loads(body)
