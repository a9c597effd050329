"""Create a Secret from inside a pod, with the pod's service account: one REST call with
httpx, which the gateway image has, rather than the Kubernetes client library and its
dependencies for it."""

import os
import ssl
from pathlib import Path

from app.errors import SparsegateError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def create_secret(name: str, data: dict[str, str], account: Path = SERVICE_ACCOUNT) -> bool:
    """Create it; False if one of that name already exists (it is left as it is)."""
    import httpx

    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host or not (account / "token").is_file():
        raise SparsegateError("--kubernetes-secret runs in a pod with a service account token")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    namespace = (account / "namespace").read_text().strip()
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "sparsegate"}},
        "type": "Opaque",
        "stringData": data,
    }
    try:
        response = httpx.post(
            f"https://{host}:{port}/api/v1/namespaces/{namespace}/secrets",
            json=body,
            headers={"Authorization": f"Bearer {(account / 'token').read_text().strip()}"},
            verify=ssl.create_default_context(cafile=account / "ca.crt"),
            timeout=30,
        )
    except httpx.HTTPError as e:
        raise SparsegateError(f"cannot reach the Kubernetes API at {host}:{port}: {e}") from None
    if response.status_code == 409:
        return False
    if response.status_code != 201:
        raise SparsegateError(
            f"the Kubernetes API refused to create Secret {namespace}/{name}: "
            f"{response.status_code} {_reason(response)}".strip()
        )
    return True


def _reason(response) -> str:
    try:
        return str(response.json().get("message", ""))
    except ValueError:
        return response.text[:200]
