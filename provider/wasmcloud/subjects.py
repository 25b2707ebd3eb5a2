"""The provider control subjects (protocol spec §2.1). Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControlSubjects:
    """The five plain (not queue-grouped) subscriptions of a provider."""

    link_put: str
    link_delete: str
    health: str
    shutdown: str
    config_update: str

    @classmethod
    def for_provider(cls, lattice: str, provider_id: str, xkey_public: str | None) -> ControlSubjects:
        """Link puts come on the provider's public xkey subject when the host sent xkeys
        (host ≥ 1.1), else on its id; everything else is keyed by the provider id."""
        base = f"wasmbus.rpc.{lattice}.{provider_id}"
        put_key = xkey_public or provider_id
        return cls(
            link_put=f"wasmbus.rpc.{lattice}.{put_key}.linkdefs.put",
            link_delete=f"{base}.linkdefs.del",
            health=f"{base}.health",
            shutdown=f"{base}.default.shutdown",
            config_update=f"{base}.config.update",
        )
