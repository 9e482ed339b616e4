"""Secrets named in the model (`Certificate.secret`, `Validation.ca_secret`) and filled in with their
PEM: from SDS (meshpy.xds.secrets reads Secret resources into SecretMaterial) or from the proxy's own
identity (meshpy.identity.local). What compiles then holds the PEM itself: a new version of a secret is
a new config, made live like any other (new connections get it, open ones keep theirs). Plain model
work, with nothing of the protos: a proxy that names no secret loads none of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.tls import Certificate, Pem, SanMatch, ServerTls, Validation
from meshpy.model.types import Cluster, Config, Listener

M = TypeVar("M", Listener, Cluster)


@dataclass(frozen=True, slots=True)
class SecretMaterial:
    """A certificate and its key (`chain`, `key`), or trusted CAs and SAN matchers (`ca`, `san`)."""

    chain: Pem | None = None
    key: Pem | None = None
    ca: Pem | None = None
    san: tuple[SanMatch, ...] = ()


def names(model: Listener | Cluster) -> set[str]:
    """The secrets a model names."""
    found: set[str] = set()
    for tls in _contexts(model):
        certs = (
            tls.certificates
            if isinstance(tls, ServerTls)
            else ((tls.certificate,) if tls.certificate is not None else ())
        )
        found.update(c.secret for c in certs if c.secret is not None)
        if tls.validation is not None and tls.validation.ca_secret is not None:
            found.add(tls.validation.ca_secret)
    return found


def _contexts(model: Listener | Cluster) -> list[Any]:
    if isinstance(model, Cluster):
        return [model.tls] if model.tls is not None else []
    return [c.tls for c in model.all_chains() if c.tls is not None]


def _fill_cert(cert: Certificate, secrets: Mapping[str, SecretMaterial]) -> Certificate:
    m = secrets.get(cert.secret) if cert.secret is not None else None
    if m is None:
        return cert
    if m.chain is None or m.key is None:
        raise ConfigError.at("tls", f"secret {cert.secret!r} holds no certificate")
    return Certificate(chain=m.chain, key=m.key)


def _fill_validation(v: Validation | None, secrets: Mapping[str, SecretMaterial]) -> Validation | None:
    m = secrets.get(v.ca_secret) if v is not None and v.ca_secret is not None else None
    if v is None or m is None:
        return v
    if m.ca is None:
        raise ConfigError.at("tls", f"secret {v.ca_secret!r} holds no validation context")
    # The secret's CAs and matchers join those of the context beside it (Envoy's combined context).
    return Validation(ca=m.ca, system=v.system, san=v.san + m.san)


def _fill(tls: Any, secrets: Mapping[str, SecretMaterial]) -> Any:
    if isinstance(tls, ServerTls):
        return dataclasses.replace(tls, certificates=tuple(_fill_cert(c, secrets) for c in tls.certificates),
                                   validation=_fill_validation(tls.validation, secrets))
    cert = _fill_cert(tls.certificate, secrets) if tls.certificate is not None else None
    return dataclasses.replace(tls, certificate=cert, validation=_fill_validation(tls.validation, secrets))


def filled(model: M, secrets: Mapping[str, SecretMaterial]) -> M:
    """`model` with the PEM of the secrets in `secrets` in place of their names (names not there stay:
    another source fills them, as the sidecar's own identity does)."""
    if not names(model):
        return model
    if isinstance(model, Cluster):
        return dataclasses.replace(model, tls=_fill(model.tls, secrets))
    chains = tuple(dataclasses.replace(c, tls=_fill(c.tls, secrets) if c.tls is not None else None)
                   for c in model.chains)
    tls = _fill(model.tls, secrets) if model.tls is not None else None
    return dataclasses.replace(model, tls=tls, chains=chains)


def fill_config(config: Config, secrets: Mapping[str, SecretMaterial]) -> Config:
    """Every listener and cluster of `config` filled from `secrets`; a secret named and not there is an
    error naming it (the proxy cannot serve a context without its certificate)."""
    listeners = tuple(filled(x, secrets) for x in config.listeners)
    clusters = tuple(filled(x, secrets) for x in config.clusters)
    missing = [ConfigIssue(f"listeners[{i}].tls", f"secret {name!r} has not arrived")
               for i, lis in enumerate(listeners) for name in sorted(names(lis))]
    missing += [ConfigIssue(f"clusters[{i}].tls", f"secret {name!r} has not arrived")
                for i, c in enumerate(clusters) for name in sorted(names(c))]
    if missing:
        raise ConfigError(missing)
    return dataclasses.replace(config, listeners=listeners, clusters=clusters)
