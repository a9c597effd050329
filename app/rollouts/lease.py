"""A lease in the registry's database: of several controllers, the one holding it decides;
another takes it over once it has not been renewed for its length."""

from datetime import UTC, datetime, timedelta

from app.registry import Registry


def hold(registry: Registry, name: str, holder: str, seconds: float) -> bool:
    """Take or renew the lease for `seconds`; False while another holder's is unexpired."""
    at = datetime.now(UTC)
    stamp = at.isoformat(timespec="microseconds")
    with registry.transaction() as tx:  # serialized: two takers cannot both win
        rows = tx.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,))
        if rows and rows[0]["holder"] != holder and rows[0]["expires_at"] > stamp:
            return False
        tx.execute("DELETE FROM leases WHERE name = ?", (name,))
        until = (at + timedelta(seconds=seconds)).isoformat(timespec="microseconds")
        tx.execute("INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)",
                   (name, holder, until))  # fmt: skip
    return True


def release(registry: Registry, name: str, holder: str) -> None:
    with registry.transaction() as tx:
        tx.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))
