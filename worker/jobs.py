"""Job records in Redis (training, emulation, dataset builds): state, progress, cancellation
flag, an event stream, and for jobs fanned out in chunks the chunks done and their leases.

Torch-free and Celery-free: the API reads and creates records, the tasks update them. Each
record is a Redis hash whose field values are JSON; state changes that race between the two
(start vs cancel, resume) are compare-and-set Lua scripts. Every kind of job (`kind`: train,
emulate, dataset) has one state machine (queued → running → succeeded/failed/cancelled), one
heartbeat rule for "stalled" (`is_stalled`) and one reaper (`app.reaper`).

Keys:
    cosmogan:job:<id>          the record (hash)
    cosmogan:job:<id>:events   progress and state events (stream, trimmed)
    cosmogan:job:<id>:lease    held by the one live run of the job (TTL, renewed)
    cosmogan:jobs              every job id, scored by creation time (sorted set)
    cosmogan:job:<id>:done     indices of the chunks finished (set; fanned-out jobs)
    cosmogan:job:<id>:chunk:<k>:lease   held by the one live run of chunk k (TTL, renewed)

A run owns its job through the lease: a token under the lock key with a short TTL that the
run's heartbeat renews. A `running` job whose lease is gone has no live run (its process died,
or was cut off from Redis for longer than the TTL and has not taken it back): it can be
cancelled or resumed at once, and the reaper (`app.reaper`) puts it back in the queue.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from enum import IntEnum
from pathlib import Path
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

TRAIN, EMULATE, DATASET = "train", "emulate", "dataset"
KINDS = (TRAIN, EMULATE, DATASET)
KIND_NAMES = {TRAIN: "training job", EMULATE: "emulate job", DATASET: "dataset job"}

JOB_ID_RE = re.compile(r"^[a-f0-9]{32}$")
EVENTS_MAXLEN = 2000

# The lease: renewed every HEARTBEAT_S, lost LEASE_TTL_S after the last renewal. A job whose
# heartbeat is older than STALE_AFTER_S is reported stalled.
LEASE_TTL_S = 30.0
HEARTBEAT_S = 5.0
STALE_AFTER_S = 3 * HEARTBEAT_S

# A chunk of a fanned-out job is short (seconds): its lease is short too, so that a chunk
# whose worker died is redone within seconds rather than half a minute.
CHUNK_LEASE_TTL_S = 10.0
CHUNK_HEARTBEAT_S = 2.0

# hash: dataset name → the job that makes it (a build, or an emulation job whose result it is)
DATASET_JOBS_KEY = "cosmogan:datasets"
# key per dataset name: held by the one request that checks the name is free and claims it
NAME_HOLD_PREFIX = "cosmogan:dataset-hold:"

# Fields stored JSON-encoded in the record; anything else is ignored on write.
FIELDS = (
    "job_id",
    "kind",
    "preset",
    "target",  # the model name the job registers its version under
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
    "lease",
    # fanned-out jobs (emulate, dataset)
    "name",
    "simulator",
    "seed",
    "draw_seed",
    "rows",
    "chunk_rows",
    "chunks_total",
    "chunks_done",
    "rows_done",
    "rows_total",
    "version",
    "samples",
    "input_format",
    "output_format",
    "seconds",
    "result",
    "result_dataset",  # an emulation job whose result is a dataset: its name
)

# Set state to ARGV[2] if the current state is one of ARGV[4..], or if ARGV[3] is '1' and the
# job is `running` without a lease (KEYS[2] absent: no live run). Returns the old state, or
# '!' and the state that refused. One script, so no run can take the lease in between.
_CAS_STATE = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return false end
local have = cjson.decode(cur)
local ok = ARGV[3] == '1' and have == 'running' and redis.call('EXISTS', KEYS[2]) == 0
for i = 4, #ARGV do
  if have == ARGV[i] then ok = true end
end
if not ok then return '!' .. have end
redis.call('HSET', KEYS[1], 'state', cjson.encode(ARGV[2]), 'updated_at', ARGV[1])
return have
"""

# Renew the lease of token ARGV[1] for ARGV[2] ms while the job is `running`, taking it back
# if it expired meanwhile (Redis was unreachable longer than the TTL) and no other run took
# it; the heartbeat time ARGV[3] is written only if ARGV[4] is '1' (the training loop is
# alive). Returns 1 renewed, 2 taken back, 0 lost (the job moved on, or another run has it).
_RENEW = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur or cjson.decode(cur) ~= 'running' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[3]) end
if holder then return 1 end
return 2
"""

# Delete the lock KEYS[1] only if it still holds token ARGV[1].
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Renewal(IntEnum):
    """What renewing a lease found (the codes of `_RENEW`)."""

    LOST = 0  # the job moved on, or another run holds the lease
    RENEWED = 1
    TAKEN_BACK = 2  # it had expired (Redis was unreachable) and no other run took it


# Count chunk ARGV[1] (ARGV[2] rows) as done, once: a chunk redone after its worker died, or
# run twice by duplicate messages, adds its rows only the first time. Returns the chunks done.
_CHUNK_DONE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'rows_done', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[3], 'heartbeat_at', ARGV[3])
end
return redis.call('SCARD', KEYS[2])
"""

# Renew chunk lease KEYS[1] for token ARGV[1] (ARGV[2] ms) if still ours or free again.
_RENEW_CHUNK = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'heartbeat_at', ARGV[3])
return 1
"""


def is_stalled(rec: dict[str, Any], now: float | None = None) -> bool:
    """A running job whose heartbeat (its run, or any of its chunks) is older than
    STALE_AFTER_S: the one rule every kind of job is reported stalled by."""
    if rec.get("state") != RUNNING:
        return False
    beat = rec.get("heartbeat_at") or rec.get("started_at")
    return beat is None or (now or time.time()) - beat > STALE_AFTER_S


def new_job_id() -> str:
    return uuid.uuid4().hex


def record_key(job_id: str) -> str:
    return f"cosmogan:job:{job_id}"


def events_key(job_id: str) -> str:
    return f"cosmogan:job:{job_id}:events"


def lease_key(job_id: str) -> str:
    return f"cosmogan:job:{job_id}:lease"


def done_key(job_id: str) -> str:
    return f"cosmogan:job:{job_id}:done"


def chunk_lease_key(job_id: str, chunk: int) -> str:
    return f"cosmogan:job:{job_id}:chunk:{chunk}:lease"


INDEX_KEY = "cosmogan:jobs"
DEVICES_KEY = "cosmogan:devices"  # hash: training host → {"cuda": GPUs it sees, "at": time}
DEVICE_REPORT_MAX_AGE_S = 7 * 24 * 3600
DEVICE_RE = re.compile(r"^(auto|cpu|cuda)(:([0-9]{1,2}))?$")


def check_data_path(data: str, root: Path, want: str) -> Path:
    """`data` (relative to `root`, or absolute inside it) as a resolved path to an existing
    `want` ("file" or "dir") strictly inside `root`; ValueError with a clear message if not.

    The API checks what it accepts; the worker checks again what it reads from Redis.
    """
    if "\x00" in data:
        raise ValueError("data contains a NUL byte")
    raw = Path(data)
    long = [p for p in raw.parts if len(os.fsencode(p)) > 255]
    if long:
        raise ValueError(f"data has a name longer than 255 bytes ({long[0][:32]}…)")
    root = root.resolve()
    try:
        path = (raw if raw.is_absolute() else root / raw).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"data {data!r} is outside the data root {root}")
        if path == root:
            raise ValueError("data must name a dataset inside the data root, not the root")
        if not path.exists():
            raise ValueError(f"dataset not found: {path.relative_to(root)} in the data root")
        if want == "dir" and not path.is_dir():
            raise ValueError(f"data {data!r} must be a folder of images")
        dataset = path.is_dir() and (path / "_manifest.json").is_file()  # a multi-part catalog
        if want == "file" and not (path.is_file() or dataset):
            raise ValueError(f"data {data!r} must be a catalog file (.parquet, .csv, .fits)")
    except OSError as exc:
        raise ValueError(f"data {data!r} cannot be read: {exc.strerror or exc}") from None
    except RuntimeError:  # Python 3.11's resolve() on a symlink loop
        raise ValueError(f"data {data!r} cannot be read: a symlink loop") from None
    return path


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
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._chunk_done = client.register_script(_CHUNK_DONE)
        self._renew_chunk = client.register_script(_RENEW_CHUNK)

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10))

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str, kind: str | None = TRAIN) -> dict[str, Any]:
        """The record of job `job_id` of `kind` (None: any kind); JobNotFound if none."""
        what = KIND_NAMES.get(kind or "", "job")
        if not JOB_ID_RE.match(job_id):
            raise JobNotFound(f"no {what} {job_id!r}")
        raw = self.r.hgetall(record_key(job_id))
        if not raw:
            raise JobNotFound(f"no {what} {job_id!r}")
        rec = decode_record(raw)
        rec.setdefault("kind", TRAIN)  # records written before jobs had kinds
        if kind is not None and rec["kind"] != kind:
            raise JobNotFound(f"no {what} {job_id!r}")
        return rec

    def field(self, job_id: str, name: str) -> Any:
        raw = self.r.hget(record_key(job_id), name)
        return None if raw is None else json.loads(raw)

    def list(
        self, limit: int = 50, state: str | None = None, kind: str | None = TRAIN
    ) -> list[dict[str, Any]]:
        """Newest first; with `state`, only jobs in that state; with `kind`, only that kind
        (scans up to 10x `limit`)."""
        ids = self.r.zrevrange(INDEX_KEY, 0, (limit * 10 if state or kind else limit) - 1)
        pipe = self.r.pipeline()
        for jid in ids:
            pipe.hgetall(record_key(jid.decode()))
        out = []
        for raw in pipe.execute():
            if not raw:
                continue
            rec = decode_record(raw)
            rec.setdefault("kind", TRAIN)
            if kind is not None and rec["kind"] != kind:
                continue
            if state is None or rec.get("state") == state:
                out.append(rec)
            if len(out) >= limit:
                break
        return out

    def count_by_state(self, kind: str = TRAIN) -> dict[str, int]:
        ids = self.r.zrange(INDEX_KEY, 0, -1)
        pipe = self.r.pipeline()
        for jid in ids:
            pipe.hmget(record_key(jid.decode()), "state", "kind")
        counts = dict.fromkeys(STATES, 0)
        for raw, raw_kind in pipe.execute():
            if raw is not None and (json.loads(raw_kind) if raw_kind else TRAIN) == kind:
                st = json.loads(raw)
                counts[st] = counts.get(st, 0) + 1
        return counts

    # -- writing ---------------------------------------------------------------------------
    def create(self, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        rec = {
            "job_id": job_id,
            "kind": TRAIN,
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

    def transition(
        self, job_id: str, new: str, allowed_from: tuple[str, ...], if_no_lease: bool = False
    ) -> str:
        """Atomically move to `new` from one of `allowed_from`; returns the previous state.

        With `if_no_lease`, a `running` job whose run holds no lease qualifies too.
        """
        res = self._cas(
            keys=[record_key(job_id), lease_key(job_id)],
            args=[time.time(), new, "1" if if_no_lease else "0", *allowed_from],
        )
        if res is None:
            raise JobNotFound(f"no job {job_id!r}")
        res = res.decode() if isinstance(res, bytes) else res
        if res.startswith("!"):
            live = " with a live run" if if_no_lease and res[1:] == RUNNING else ""
            raise JobStateError(f"job {job_id} is {res[1:]}{live}, not {' or '.join(allowed_from)}")
        return res

    # -- dataset names ------------------------------------------------------------------------
    def hold_name(self, name: str, ttl_s: float) -> str | None:
        """Hold dataset name `name` for one request's check and claim: a token to release
        it with, or None while another request holds it. A request that dies holding it
        frees it after `ttl_s`."""
        token = uuid.uuid4().hex
        held = self.r.set(NAME_HOLD_PREFIX + name, token, nx=True, px=int(ttl_s * 1000))
        return token if held else None

    def release_name(self, name: str, token: str) -> None:
        """Let go of `name` (only if `token` still holds it)."""
        self._release(keys=[NAME_HOLD_PREFIX + name], args=[token])

    # -- the lease ---------------------------------------------------------------------------
    def acquire_lease(self, job_id: str, token: str) -> bool:
        return bool(self.r.set(lease_key(job_id), token, nx=True, px=int(LEASE_TTL_S * 1000)))

    def renew_lease(self, job_id: str, token: str, beat: bool = True) -> Renewal:
        """Renew the lease of `token` (see `_RENEW`); `beat`: also write the heartbeat time
        (the run is making progress)."""
        keys = [record_key(job_id), lease_key(job_id)]
        args = [token, int(LEASE_TTL_S * 1000), time.time(), "1" if beat else "0"]
        return Renewal(int(self._renew(keys=keys, args=args)))

    def release_lease(self, job_id: str, token: str) -> bool:
        return bool(self._release(keys=[lease_key(job_id)], args=[token]))

    def has_lease(self, job_id: str) -> bool:
        return bool(self.r.exists(lease_key(job_id)))

    def requeue_orphan(self, job_id: str, reason: str) -> bool:
        """A `running` job without a lease back to `queued` (the caller sends it again)."""
        try:
            self.transition(job_id, QUEUED, (), if_no_lease=True)
        except JobStateError:
            return False  # a run took it back meanwhile, or it ended
        self.event(job_id, {"event": "state", "state": QUEUED, "reason": reason})
        return True

    def report_devices(self, host: str, cuda: int) -> None:
        """A training host says how many CUDA devices it sees (the API checks `device`)."""
        self.r.hset(DEVICES_KEY, host, json.dumps({"cuda": cuda, "at": time.time()}))

    def devices(self) -> dict[str, int]:
        """CUDA devices per training host that reported in the last week."""
        out = {}
        for host, raw in self.r.hgetall(DEVICES_KEY).items():
            rep = json.loads(raw)
            if time.time() - rep.get("at", 0) < DEVICE_REPORT_MAX_AGE_S:
                out[host.decode() if isinstance(host, bytes) else host] = int(rep["cuda"])
        return out

    def active(self, scan: int = 1000, kind: str = TRAIN) -> list[tuple[str, str, bool]]:
        """(job id, state, lease held) of the queued and running jobs of `kind` among the
        newest `scan`."""
        ids = [j.decode() for j in self.r.zrevrange(INDEX_KEY, 0, scan - 1)]
        pipe = self.r.pipeline(transaction=False)
        for jid in ids:
            pipe.hmget(record_key(jid), "state", "kind")
            pipe.exists(lease_key(jid))
        res = pipe.execute()
        out = []
        for jid, (raw, raw_kind), held in zip(ids, res[::2], res[1::2], strict=True):
            state = json.loads(raw) if raw is not None else None
            if (json.loads(raw_kind) if raw_kind else TRAIN) != kind:
                continue
            if state in (QUEUED, RUNNING):
                out.append((jid, state, bool(held)))
        return out

    # -- chunks of fanned-out jobs --------------------------------------------------------------
    def chunk_done(self, job_id: str, chunk: int, rows: int) -> int:
        """Count chunk `chunk` (of `rows` rows) as done, once; returns the chunks done."""
        keys = [record_key(job_id), done_key(job_id)]
        return int(self._chunk_done(keys=keys, args=[chunk, rows, time.time()]))

    def done_chunks(self, job_id: str) -> set[int]:
        return {int(k) for k in self.r.smembers(done_key(job_id))}

    def claim_chunk(self, job_id: str, chunk: int, token: str) -> bool:
        """Take chunk `chunk` for this run: its lease, if no live run holds it."""
        ttl = int(CHUNK_LEASE_TTL_S * 1000)
        return bool(self.r.set(chunk_lease_key(job_id, chunk), token, nx=True, px=ttl))

    def renew_chunk(self, job_id: str, chunk: int, token: str) -> bool:
        keys = [chunk_lease_key(job_id, chunk), record_key(job_id)]
        args = [token, int(CHUNK_LEASE_TTL_S * 1000), time.time()]
        return bool(self._renew_chunk(keys=keys, args=args))

    def release_chunk(self, job_id: str, chunk: int, token: str) -> None:
        self._release(keys=[chunk_lease_key(job_id, chunk)], args=[token])

    def chunks_leased(self, job_id: str, chunks: list[int]) -> list[bool]:
        pipe = self.r.pipeline(transaction=False)
        for k in chunks:
            pipe.exists(chunk_lease_key(job_id, k))
        return [bool(x) for x in pipe.execute()]

    def forget_chunks(self, job_id: str) -> None:
        """A fanned-out job starts over: no chunk counted."""
        pipe = self.r.pipeline()
        pipe.delete(done_key(job_id))
        pipe.hset(record_key(job_id), mapping=encode_fields({"rows_done": 0, "chunks_done": 0}))
        pipe.execute()

    def event(self, job_id: str, payload: dict[str, Any]) -> str:
        payload = {"job_id": job_id, "time": time.time(), **payload}
        eid = self.r.xadd(
            events_key(job_id),
            {"data": json.dumps(payload)},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
        return eid.decode() if isinstance(eid, bytes) else eid

    def request_cancel(self, job_id: str, kind: str = TRAIN) -> dict[str, Any]:
        """Cooperative cancel: a queued job, or a running one without a live run, is cancelled
        now; a live run sees the flag at its next check, checkpoints and ends as cancelled.
        A fanned-out job is cancelled at once: every chunk checks the state before it starts
        and before it is counted, so none runs on after its current one."""
        rec = self.get(job_id, kind)
        if rec["state"] in TERMINAL:
            raise JobStateError(f"job {job_id} already {rec['state']}")
        self.update(job_id, cancel_requested=True)
        allowed = (QUEUED,) if kind == TRAIN else (QUEUED, RUNNING)
        try:
            self.transition(job_id, CANCELLED, allowed, if_no_lease=True)
        except JobStateError:
            pass  # running: the run sees the flag, checkpoints and ends as cancelled
        else:
            self.update(job_id, finished_at=time.time())
            self.event(job_id, {"event": "state", "state": CANCELLED})
        return self.get(job_id, kind)

    def requeue_for_resume(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """A cancelled or failed job, or a running one whose run is gone (no lease), goes back
        to `queued`, keeping its run folder."""
        self.transition(job_id, QUEUED, (CANCELLED, FAILED), if_no_lease=True)
        self.update(
            job_id,
            cancel_requested=False,
            error=None,
            finished_at=None,
            attempts=0,
            **fields,
        )
        self.event(job_id, {"event": "state", "state": QUEUED})
        return self.get(job_id, None)
