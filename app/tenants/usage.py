"""Usage per tenant key in the registry's database: the rows each gateway process adds
every few seconds, and their sums (`sparsegate keys usage`, billing, budgets)."""

from dataclasses import asdict, dataclass, fields

from app.registry import Registry
from app.registry.store import now

COUNTS = ("requests", "errors", "prompt_tokens", "completion_tokens", "output_bytes",
          "dollars", "unpriced")  # fmt: skip


@dataclass
class Usage:
    """What one key used of one variant: requests it sent there, of which errors (engine
    errors, timeouts, requests the client left); tokens and output bytes served; dollars
    on the equal-work cost model (app/metrics/equal_work.py) and requests left unpriced
    (served before the variant's engine had a step fit)."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    output_bytes: int = 0
    dollars: float = 0.0
    unpriced: int = 0

    def add(self, other: "Usage") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def add_rows(registry: Registry, rows: dict[tuple[str, str], Usage]) -> None:
    """One row per (key name, variant), in one transaction: all of them, or none."""
    stamp = now()
    with registry.transaction() as tx:
        for (name, variant), u in rows.items():
            tx.execute(
                f"INSERT INTO key_usage (at, name, variant, {', '.join(COUNTS)}) "
                f"VALUES (?, ?, ?{', ?' * len(COUNTS)})",
                (stamp, name, variant, *(getattr(u, c) for c in COUNTS)),
            )


def spent(registry: Registry, since: dict[str, str]) -> dict[str, float]:
    """Dollars each key spent since its given time (ISO 8601, UTC)."""
    out = {}
    for name, at in since.items():
        rows = registry.query(
            "SELECT COALESCE(SUM(dollars), 0) AS d FROM key_usage WHERE name = ? AND at >= ?",
            (name, at),
        )
        out[name] = float(rows[0]["d"])
    return out


def summed(registry: Registry, name: str | None, since: str | None, by: str) -> list[dict]:
    """Usage summed per key and `by` (variant, day or none), since a time if given."""
    group = {"variant": ["name", "variant"], "day": ["name", "SUBSTR(at, 1, 10)"],
             "key": ["name"]}[by]  # fmt: skip
    where, params = [], []
    if name:
        where.append("name = ?")
        params.append(name)
    if since:
        where.append("at >= ?")
        params.append(since)
    cols = ", ".join(f"SUM({c}) AS {c}" for c in COUNTS)
    keys = ", ".join(f"{g} AS g{i}" for i, g in enumerate(group))
    sql = (f"SELECT {keys}, {cols} FROM key_usage "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} "
           f"GROUP BY {', '.join(group)} ORDER BY {', '.join(group)}")  # fmt: skip
    out = []
    for r in registry.query(sql, params):
        row = dict(r)
        head = {"name": row.pop("g0")} | ({by: row.pop("g1")} if len(group) > 1 else {})
        counts = {c: (float if c == "dollars" else int)(row[c] or 0) for c in COUNTS}
        out.append(head | asdict(Usage(**counts)))
    return out
