"""Training-job records in Redis: state, progress, cancellation flag and an event stream.

Torch-free and Celery-free: the API reads and creates records, the training task updates
them. Each record is a Redis hash whose field values are JSON; state changes that race
between the two (start vs cancel, resume) are compare-and-set Lua scripts.

Keys:
    cosmogan:job:<id>          the record (hash)
    cosmogan:job:<id>:events   progress and state events (stream, trimmed)
    cosmogan:job:<id>:lock     held by the one live run of the job (TTL, renewed)
    cosmogan:jobs              every job id, scored by creation time (sorted set)
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import redis

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

JOB_ID_RE = re.compile(r"^[a-f0-9]{32}$")
EVENTS_MAXLEN = 2000

# Fields stored JSON-encoded in the record; anything else is ignored on write.
FIELDS = (
    "job_id",
    "preset",
    "data",
    "overrides",
    "config",
    "activate",
    "state",
    "epoch",
    "epochs",
    "step",
    "total_steps",
    "losses",
    "eta_s",
    "metrics",
    "samples",
    "error",
    "model",
    "cancel_requested",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "heartbeat_at",
)

# Set state to ARGV[2] only if the current state is one of ARGV[3..]; returns the old state.
_CAS_STATE = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return false end
local want = cjson.decode(cur)
for i = 3, #ARGV do
  if want == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', cjson.encode(ARGV[2]), 'updated_at', ARGV[1])
    return want
  end
end
return '!' .. want
"""


def new_job_id() -> str:
    return uuid.uuid4().hex


def record_key(job_id: str) -> str:
    return f"cosmogan:job:{job_id}"


def events_key(job_id: str) -> str:
    return f"cosmogan:job:{job_id}:events"


def lock_key(job_id: str) -> str:
    return f"cosmogan:job:{job_id}:lock"


INDEX_KEY = "cosmogan:jobs"


class JobNotFound(LookupError):
    """No job with that id."""


class JobStateError(RuntimeError):
    """The job is not in a state that allows the operation (e.g. resuming a running job)."""


def decode_record(raw: dict[Any, Any]) -> dict[str, Any]:
    """A hash as returned by HGETALL → a plain dict of decoded JSON values."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = key.decode() if isinstance(key, bytes) else key
        out[k] = json.loads(value)
    return out


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in fields.items() if k in FIELDS}


class JobStore:
    """Read and write job records through a synchronous Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._cas = client.register_script(_CAS_STATE)

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10))

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        if not JOB_ID_RE.match(job_id):
            raise JobNotFound(f"no training job {job_id!r}")
        raw = self.r.hgetall(record_key(job_id))
        if not raw:
            raise JobNotFound(f"no training job {job_id!r}")
        return decode_record(raw)

    def field(self, job_id: str, name: str) -> Any:
        raw = self.r.hget(record_key(job_id), name)
        return None if raw is None else json.loads(raw)

    def list(self, limit: int = 50, state: str | None = None) -> list[dict[str, Any]]:
        """Newest first; with `state`, only jobs in that state (scans up to 10x `limit`)."""
        ids = self.r.zrevrange(INDEX_KEY, 0, (limit * 10 if state else limit) - 1)
        pipe = self.r.pipeline()
        for jid in ids:
            pipe.hgetall(record_key(jid.decode()))
        out = []
        for raw in pipe.execute():
            if not raw:
                continue
            rec = decode_record(raw)
            if state is None or rec.get("state") == state:
                out.append(rec)
            if len(out) >= limit:
                break
        return out

    def count_by_state(self) -> dict[str, int]:
        ids = self.r.zrange(INDEX_KEY, 0, -1)
        pipe = self.r.pipeline()
        for jid in ids:
            pipe.hget(record_key(jid.decode()), "state")
        counts = dict.fromkeys(STATES, 0)
        for raw in pipe.execute():
            if raw is not None:
                st = json.loads(raw)
                counts[st] = counts.get(st, 0) + 1
        return counts

    # -- writing ---------------------------------------------------------------------------
    def create(self, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        rec = {
            "job_id": job_id,
            "state": QUEUED,
            "epoch": 0,
            "step": 0,
            "losses": {},
            "metrics": {},
            "samples": [],
            "error": None,
            "model": None,
            "cancel_requested": False,
            "attempts": 0,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "updated_at": now,
            "heartbeat_at": None,
            **fields,
        }
        pipe = self.r.pipeline()
        pipe.hset(record_key(job_id), mapping=encode_fields(rec))
        pipe.zadd(INDEX_KEY, {job_id: now})
        pipe.execute()
        self.event(job_id, {"event": "state", "state": QUEUED})
        return rec

    def update(self, job_id: str, **fields: Any) -> None:
        fields.setdefault("updated_at", time.time())
        self.r.hset(record_key(job_id), mapping=encode_fields(fields))

    def transition(self, job_id: str, new: str, allowed_from: tuple[str, ...]) -> str:
        """Atomically move to `new` from one of `allowed_from`; returns the previous state."""
        res = self._cas(keys=[record_key(job_id)], args=[time.time(), new, *allowed_from])
        if res is None:
            raise JobNotFound(f"no training job {job_id!r}")
        res = res.decode() if isinstance(res, bytes) else res
        if res.startswith("!"):
            raise JobStateError(f"job {job_id} is {res[1:]}, not {' or '.join(allowed_from)}")
        return res

    def event(self, job_id: str, payload: dict[str, Any]) -> str:
        payload = {"job_id": job_id, "time": time.time(), **payload}
        eid = self.r.xadd(
            events_key(job_id),
            {"data": json.dumps(payload)},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
        return eid.decode() if isinstance(eid, bytes) else eid

    def request_cancel(self, job_id: str) -> dict[str, Any]:
        """Cooperative cancel: a queued job is cancelled now, a running one at its next check."""
        rec = self.get(job_id)
        if rec["state"] in TERMINAL:
            raise JobStateError(f"job {job_id} already {rec['state']}")
        self.update(job_id, cancel_requested=True)
        try:
            self.transition(job_id, CANCELLED, (QUEUED,))
        except JobStateError:
            pass  # running: the run sees the flag, checkpoints and ends as cancelled
        else:
            self.update(job_id, finished_at=time.time())
            self.event(job_id, {"event": "state", "state": CANCELLED})
        return self.get(job_id)

    def requeue_for_resume(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """A cancelled or failed job goes back to `queued`, keeping its run folder."""
        self.transition(job_id, QUEUED, (CANCELLED, FAILED))
        self.update(
            job_id,
            cancel_requested=False,
            error=None,
            finished_at=None,
            attempts=0,
            **fields,
        )
        self.event(job_id, {"event": "state", "state": QUEUED})
        return self.get(job_id)
