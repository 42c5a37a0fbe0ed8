"""Where the API server is and how to log in to it, read without the Kubernetes client library.

In a pod: the ServiceAccount's token and CA, and `$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`
(client-go's in-cluster rules). Out of cluster: the current context of `$KUBECONFIG` (its files
merged, the first value winning, as kubectl does; else `~/.kube/config`): the cluster's server, CA
(file or data) and `insecure-skip-tls-verify`, and the user's client certificate and key (file or
data), token or `tokenFile`, or user name and password.

A kubeconfig whose user runs an `exec` plugin or an `auth-provider` (EKS, GKE, OIDC) is read by the
Kubernetes client library (`kubernetes.config`), imported only then: importing it costs the
operator about 60 MiB (its thousand generated models), which is why the rest of the operator does
not use it. `needs_client()` says whether it is needed; `modelops-operator` keeps it (and kopf's
optional use of it) out of the process when it is not.

The credentials are read again when the API server answers 401 (a rotated ServiceAccount token, an
expired exec token).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class LoginError(Exception):
    """Neither a ServiceAccount nor a usable kubeconfig was found."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Credentials:
    """One API server and how to authenticate to it (the field names are kopf's `ConnectionInfo`'s)."""

    server: str
    ca_path: str | None = None
    ca_data: str | None = None  # PEM, or base64 of PEM as a kubeconfig holds it
    insecure: bool = False
    certificate_path: str | None = None
    certificate_data: str | None = None
    private_key_path: str | None = None
    private_key_data: str | None = None
    token: str | None = None
    username: str | None = None
    password: str | None = None
    proxy_url: str | None = None
    default_namespace: str | None = None
    tls_server_name: str | None = None

    def headers(self) -> dict[str, str]:
        """The Authorization header, if any."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username and self.password:
            basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {basic}"}
        return {}

    def ssl_context(self) -> ssl.SSLContext:
        """Verification against the CA (or none, for `insecure`) and the client certificate."""
        context = ssl.create_default_context(cafile=self.ca_path, cadata=_pem(self.ca_data) if self.ca_data else None)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        with contextlib.ExitStack() as stack:
            # Python's ssl loads a client certificate only from files: data goes to a private
            # temporary file for the moment it is read.
            cert = self.certificate_path or _file(stack, self.certificate_data)
            key = self.private_key_path or _file(stack, self.private_key_data)
            if cert:
                context.load_cert_chain(cert, key)
        return context


def _pem(data: str) -> str:
    return data if data.lstrip().startswith("-----BEGIN ") else base64.b64decode(data).decode("ascii")


def _file(stack: contextlib.ExitStack, data: str | None) -> str | None:
    if not data:
        return None
    f = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".pem"))  # noqa: SIM115 - mode 0600, closed by the stack
    f.write(_pem(data))
    f.flush()
    return f.name


def in_cluster() -> Credentials | None:
    """The pod's ServiceAccount, or None outside a pod."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT / "token"
    if not (host and port and token.exists()):
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    ca, ns = SERVICE_ACCOUNT / "ca.crt", SERVICE_ACCOUNT / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_path=str(ca) if ca.exists() else None,
        token=token.read_text().strip() or None,
        default_namespace=ns.read_text().strip() if ns.exists() else None,
    )


def _kubeconfig_paths() -> list[Path]:
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    default = Path("~/.kube/config").expanduser()
    return [default] if default.exists() else []


#: A kubeconfig's sections, each a list of named entries, and the key of an entry's contents.
_SECTIONS = {"contexts": "context", "clusters": "cluster", "users": "user"}


def _current(paths: list[Path]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The current context, its cluster and its user, their relative paths read against the file
    that holds each."""
    current: str | None = None
    found: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {section: {} for section in _SECTIONS}
    for path in paths:
        if not path.exists():
            continue
        config = yaml.safe_load(path.read_text()) or {}
        current = current or config.get("current-context")
        for section, items in found.items():
            for item in config.get(section) or []:
                items.setdefault(item["name"], (item.get(_SECTIONS[section]) or {}, path))
    if not current:
        raise LoginError(f"no current-context in the kubeconfig ({os.pathsep.join(map(str, paths)) or 'none found'})")
    if current not in found["contexts"]:
        raise LoginError(f"the kubeconfig's current-context {current!r} is not among its contexts")
    context, _ = found["contexts"][current]
    try:
        cluster, cluster_file = found["clusters"][context["cluster"]]
        user, user_file = found["users"].get(context.get("user", ""), ({}, cluster_file))
    except KeyError as e:
        raise LoginError(f"the kubeconfig's context {current!r} names no known cluster") from e
    return context, _relative(cluster, cluster_file), _relative(user, user_file)


def _relative(section: dict[str, Any], origin: Path) -> dict[str, Any]:
    out = dict(section)
    for key in ("certificate-authority", "client-certificate", "client-key", "tokenFile"):
        if out.get(key):
            out[key] = str((origin.parent / Path(out[key]).expanduser()).resolve())
    return out


def _runs_plugin(user: dict[str, Any]) -> bool:
    """Whether a kubeconfig user gets its credentials from an exec plugin or an auth-provider."""
    return bool(user.get("exec") or user.get("auth-provider"))


def needs_client() -> bool:
    """Whether logging in takes the Kubernetes client library: out of cluster, with a kubeconfig
    user that runs an exec plugin or an auth-provider."""
    if in_cluster() is not None:
        return False
    try:
        _, _, user = _current(_kubeconfig_paths())
    except (LoginError, OSError, yaml.YAMLError, KeyError, TypeError):
        return False
    return _runs_plugin(user)


def from_kubeconfig() -> Credentials:
    """The kubeconfig's current context."""
    context, cluster, user = _current(_kubeconfig_paths())
    if _runs_plugin(user):
        return _via_client()
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    if not cluster.get("server"):
        raise LoginError("the kubeconfig's cluster has no server")
    return Credentials(
        server=str(cluster["server"]),
        ca_path=cluster.get("certificate-authority"),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        certificate_path=user.get("client-certificate"),
        certificate_data=user.get("client-certificate-data"),
        private_key_path=user.get("client-key"),
        private_key_data=user.get("client-key-data"),
        token=token or None,
        username=user.get("username"),
        password=user.get("password"),
        proxy_url=cluster.get("proxy-url"),
        default_namespace=context.get("namespace"),
        tls_server_name=cluster.get("tls-server-name"),
    )


def _via_client() -> Credentials:
    """An exec plugin's or auth-provider's credentials, as the Kubernetes client library gets them."""
    import kubernetes.client  # noqa: PLC0415 - 60 MiB, only for these kubeconfigs
    import kubernetes.config  # noqa: PLC0415

    config = kubernetes.client.Configuration()
    try:
        # The files named now: the library's default is $KUBECONFIG as it was when it was imported.
        files = os.pathsep.join(str(p) for p in _kubeconfig_paths())
        kubernetes.config.load_kube_config(config_file=files, client_configuration=config)
    except kubernetes.config.ConfigException as e:
        raise LoginError(f"the kubeconfig's exec plugin or auth-provider: {e}") from e
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    token = header.split(" ", 1)[-1] if header else None
    return Credentials(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        token=token,
        proxy_url=config.proxy,
        tls_server_name=getattr(config, "tls_server_name", None),
    )


def load() -> Credentials:
    """The ServiceAccount's credentials in a pod, else the kubeconfig's (read anew at each call)."""
    try:
        return in_cluster() or from_kubeconfig()
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise LoginError(f"cannot read the credentials: {e}") from e
