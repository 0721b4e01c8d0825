"""The distributed store: the trie, sessions and chunks in Redis (``redis://host:port/db``).

Keys (``P`` = ``{namespace}:``; the braces keep every key in one cluster hash slot)::

    P meta           hash: uid, gen, bytes, floor, version
    P chg / P tomb   sorted sets: node id -> generation of its last change / of its deletion
    P sess           hash: session name -> "end_node n_tokens"
    P lease          sorted set: "node:token" -> expiry (open readers)
    P n:<id>         hash: one node (parent, tokens, refs, weight, recompute_s, nbytes, crc, ...)
    P p:<id>         string: the node's chunk

Every change is one Lua script that first checks the generation the writer planned on (the
optimistic check WATCH would give, without a round trip) and that no node it deletes is pinned,
then applies everything: Redis runs a script atomically, so other writers and a server killed
mid-run never see half a session. Scripts that only delete run with ``allow-oom``, so a full
server (``maxmemory``) still accepts deletions; scripts that add data are refused before they
write anything and the store raises :class:`StoreUnavailableError`.

The server must not evict our keys on its own: ``maxmemory-policy`` has to be ``noeviction`` (or
a ``volatile-*`` policy, since we set no TTLs); the store refuses ``allkeys-*`` servers.
"""
from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..checksum import crc32
from ..errors import CorruptDataError, SeqKVError, StoreFullError, StoreUnavailableError
from .base import SessionStore
from .records import Conflict, NodeRow, SplitFn, WritePlan

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOMBSTONES_KEPT = 10_000
_FIELDS = ("parent", "tokens", "refs", "weight", "recompute_s", "nbytes", "crc", "hits", "last_use")

_INIT = """#!lua flags=allow-oom
local meta = KEYS[1]
if redis.call('HEXISTS', meta, 'uid') == 0 then
  redis.call('HSET', meta, 'uid', ARGV[2], 'gen', 0, 'bytes', 0, 'floor', 0, 'version', ARGV[3])
end
return redis.call('HGET', meta, 'version')
"""

_APPLY = """
local P = ARGV[1]
local meta = KEYS[1]
local gen = tonumber(redis.call('HGET', meta, 'gen') or '-1')
if gen ~= tonumber(ARGV[2]) then return {0, 'generation moved'} end
local now = ARGV[3]
local leased = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', P .. 'lease', '(' .. now, '+inf')) do
  leased[string.match(member, '^(%d+):')] = true
end
local arity = {I = 11, U = 10, D = 1, T = 1, S = 3, X = 1, B = 1}
local i = 4
while i <= #ARGV do  -- validate everything before the first write: scripts do not roll back
  local op, id = ARGV[i], ARGV[i + 1]
  local exists = (op == 'I' or op == 'U' or op == 'D') and redis.call('EXISTS', P .. 'n:' .. id)
  if op == 'I' and exists == 1 then return {0, 'id taken'} end
  if (op == 'U' or op == 'D') and exists == 0 then return {0, 'node gone'} end
  if op == 'D' and leased[id] then return {0, 'node pinned'} end
  i = i + 1 + arity[op]
end
local newgen = gen + 1
local delta = 0
i = 4
while i <= #ARGV do
  local op, a = ARGV[i], ARGV[i + 1]
  local node = P .. 'n:' .. a
  if op == 'I' then
    redis.call('HSET', node, 'parent', ARGV[i + 2], 'tokens', ARGV[i + 3], 'refs', ARGV[i + 4],
      'weight', ARGV[i + 5], 'recompute_s', ARGV[i + 6], 'nbytes', ARGV[i + 7], 'crc', ARGV[i + 8],
      'hits', ARGV[i + 9], 'last_use', ARGV[i + 10])
    redis.call('SET', P .. 'p:' .. a, ARGV[i + 11])
    redis.call('ZADD', P .. 'chg', newgen, a)
    redis.call('ZREM', P .. 'tomb', a)
  elseif op == 'U' then
    redis.call('HSET', node, 'parent', ARGV[i + 2], 'tokens', ARGV[i + 3], 'refs', ARGV[i + 4],
      'weight', ARGV[i + 5], 'recompute_s', ARGV[i + 6], 'nbytes', ARGV[i + 7], 'crc', ARGV[i + 8])
    if ARGV[i + 9] == '1' then redis.call('SET', P .. 'p:' .. a, ARGV[i + 10]) end
    redis.call('ZADD', P .. 'chg', newgen, a)
  elseif op == 'D' then
    redis.call('DEL', node, P .. 'p:' .. a)
    redis.call('ZREM', P .. 'chg', a)
    redis.call('ZADD', P .. 'tomb', newgen, a)
  elseif op == 'T' then
    if redis.call('EXISTS', node) == 1 then
      redis.call('HINCRBY', node, 'hits', 1)
      redis.call('HSET', node, 'last_use', now)
    end
  elseif op == 'S' then
    redis.call('HSET', P .. 'sess', a, ARGV[i + 2] .. ' ' .. ARGV[i + 3])
  elseif op == 'X' then
    redis.call('HDEL', P .. 'sess', a)
  elseif op == 'B' then
    delta = tonumber(a)
  end
  i = i + 1 + arity[op]
end
redis.call('HSET', meta, 'gen', newgen)
local total = redis.call('HINCRBY', meta, 'bytes', delta)
return {1, newgen, total}
"""

_CHANGES = """#!lua flags=no-writes
local P = ARGV[1]
local since = tonumber(ARGV[2])
local m = redis.call('HMGET', KEYS[1], 'uid', 'gen', 'bytes', 'floor')
local full = since < 0 or since < tonumber(m[4] or '0')
local ids
if full then
  ids = redis.call('ZRANGE', P .. 'chg', 0, -1)
else
  ids = redis.call('ZRANGEBYSCORE', P .. 'chg', '(' .. since, '+inf')
end
local rows = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', P .. 'n:' .. id, 'parent', 'tokens', 'refs')
  table.insert(rows, id)
  table.insert(rows, f[1] or '')
  table.insert(rows, f[2] or '')
  table.insert(rows, f[3] or '')
end
local deleted = {}
if not full then deleted = redis.call('ZRANGEBYSCORE', P .. 'tomb', '(' .. since, '+inf') end
return {m[1] or '', m[2] or '-1', m[3] or '0', full and '1' or '0', rows, deleted}
"""

_ROWS = """#!lua flags=no-writes
local P = ARGV[1]
local ids = {}
if ARGV[2] == 'some' then for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else ids = redis.call('ZRANGE', P .. 'chg', 0, -1) end
local tokens = 'tokens'
if ARGV[2] == 'stats' then tokens = 'no-such-field' end  -- eviction needs no tokens
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', P .. 'n:' .. id, 'parent', tokens, 'refs', 'weight',
    'recompute_s', 'nbytes', 'crc', 'hits', 'last_use')
  if f[1] then
    table.insert(out, id)
    for k = 1, 9 do table.insert(out, f[k] or '0') end
  end
end
return {redis.call('HGET', KEYS[1], 'bytes') or '0', out}
"""

_READ = """#!lua flags=allow-oom
local P = ARGV[1]
local now = ARGV[2]
local out = {}
for i = 4, #ARGV do
  local node = P .. 'n:' .. ARGV[i]
  local f = redis.call('HMGET', node, 'nbytes', 'crc')
  if f[1] then
    if ARGV[3] == '1' then
      redis.call('HINCRBY', node, 'hits', 1)
      redis.call('HSET', node, 'last_use', now)
    end
    table.insert(out, redis.call('GET', P .. 'p:' .. ARGV[i]) or '')
    table.insert(out, f[1])
    table.insert(out, f[2])
  else
    table.insert(out, '')
    table.insert(out, '-1')
    table.insert(out, '0')
  end
end
return out
"""

_LEASE = """#!lua flags=allow-oom
local lease = ARGV[1] .. 'lease'
redis.call('ZREMRANGEBYSCORE', lease, '-inf', ARGV[2])
for i = 4, #ARGV do redis.call('ZADD', lease, ARGV[3], ARGV[i]) end
return 1
"""


class RedisStore(SessionStore):
    """Session store in a Redis server shared by any number of processes and machines.

    Args:
        url: ``redis://host:port/db`` (any URL ``redis.Redis.from_url`` takes).
        namespace: key prefix, so several stores can share one database.
        split_payload, budget_bytes: see :class:`~seqkv_edge.store.base.SessionStore`.
        timeout_s: socket timeout; an unreachable server raises StoreUnavailableError after
            about that long plus three quick reconnection attempts.
        lookup_staleness_s: see the base class; the generation check is a network round trip
            (~0.1 ms), so lookups check at most every 50 ms by default and may miss a session
            another process saved within that window. Writes always see everything.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "seqkv",
        split_payload: SplitFn | None = None,
        budget_bytes: int | None = None,
        timeout_s: float = 5.0,
        lookup_staleness_s: float = 0.05,
    ):
        super().__init__(split_payload, budget_bytes, lookup_staleness_s)
        self.url = url
        self._p = f"{{{namespace}}}:"
        self._meta_key = self._p + "meta"
        self._r = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=min(timeout_s, 2.0),
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 3),
        )
        self._scripts = {
            "apply": self._r.register_script("#!lua\n" + _APPLY),
            "apply_oom": self._r.register_script("#!lua flags=allow-oom\n" + _APPLY),
            "changes": self._r.register_script(_CHANGES),
            "rows": self._r.register_script(_ROWS),
            "read": self._r.register_script(_READ),
            "lease": self._r.register_script(_LEASE),
            "init": self._r.register_script(_INIT),
        }
        self._leases: dict[str, list[bytes]] = {}
        self._check_server()
        with self._guard("initialising the store"):
            version = int(self._run("init", uuid.uuid4().hex, SCHEMA_VERSION))
        if version != SCHEMA_VERSION:
            raise SeqKVError(
                f"{url} {self._p}* holds a version {version} store; this seqkv_edge reads "
                f"version {SCHEMA_VERSION}"
            )
        self._refresh()

    def close(self) -> None:
        self._r.close()

    # ---- plumbing ---------------------------------------------------------------------

    def _check_server(self) -> None:
        with self._guard("connecting"):
            try:
                policy = self._r.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
            except redis.exceptions.ResponseError:  # CONFIG disabled (managed Redis): trust it
                return
        if str(policy).startswith("allkeys"):
            raise SeqKVError(
                f"Redis at {self.url} evicts keys on its own (maxmemory-policy {policy}), which "
                "would corrupt the store; set maxmemory-policy noeviction and let seqkv_edge "
                "evict (budget_bytes)"
            )

    @property
    def client(self) -> "redis.Redis":
        """The Redis client (records kept beside the store, such as named sessions, use it)."""
        return self._r

    @property
    def key_prefix(self) -> str:
        """The prefix of every key of this store (its namespace, as a Redis Cluster hash tag)."""
        return self._p

    @contextmanager
    def _guard(self, what: str):
        try:
            yield
        except redis.exceptions.OutOfMemoryError as error:
            raise StoreFullError(
                f"Redis store at {self.url} is full (maxmemory reached) while {what}; delete "
                "sessions, set budget_bytes below the server's maxmemory, or raise maxmemory"
            ) from error
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
            raise StoreUnavailableError(
                f"Redis at {self.url} is unreachable while {what}: {error}; check the server "
                "is running and retry"
            ) from error
        except redis.exceptions.ResponseError as error:
            raise SeqKVError(f"Redis at {self.url} refused {what}: {error}") from error

    def _run(self, script: str, *args):
        return self._scripts[script](keys=[self._meta_key], args=[self._p, *args])

    # ---- reading --------------------------------------------------------------------------

    def _meta(self):
        with self._guard("reading the generation"):
            uid, gen, stored_bytes = self._r.hmget(self._meta_key, "uid", "gen", "bytes")
            if uid is None:  # the server lost its data (restarted without persistence)
                log.warning("Redis at %s holds no store any more; starting an empty one", self.url)
                self._run("init", uuid.uuid4().hex, SCHEMA_VERSION)
                uid, gen, stored_bytes = self._r.hmget(self._meta_key, "uid", "gen", "bytes")
        return uid.decode(), int(gen), int(stored_bytes)

    def _changes(self, since):
        with self._guard("loading the trie"):
            uid, gen, stored_bytes, full, flat, deleted = self._run(
                "changes", -1 if since is None else since
            )
        rows = [
            (int(flat[i]), int(flat[i + 1]), np.frombuffer(flat[i + 2], "<i4"), int(flat[i + 3]))
            for i in range(0, len(flat), 4)
            if flat[i + 1] != b""
        ]
        return (uid.decode(), int(gen), int(stored_bytes), rows, [int(i) for i in deleted],
                full == b"1")

    def _rows(self, node_ids=None, mode: str = "all") -> tuple[int, dict[int, NodeRow]]:
        args = [mode] if node_ids is None else ["some", *node_ids]
        with self._guard("reading nodes"):
            stored_bytes, flat = self._run("rows", *args)
        rows = {}
        for i in range(0, len(flat), 10):
            parent, tokens, refs, weight, cost, nbytes, crc, hits, last_use = flat[i + 1 : i + 10]
            node_id = int(flat[i])
            tokens = np.empty(0, np.int32) if mode == "stats" else np.frombuffer(tokens, "<i4")
            rows[node_id] = NodeRow(
                node_id, int(parent), tokens.astype(np.int32), int(refs),
                float(weight), float(cost), int(nbytes), int(crc), int(hits), float(last_use),
            )
        return int(stored_bytes), rows

    def _node_rows(self, node_ids):
        return self._rows([int(i) for i in node_ids])[1]

    def _session(self, name):
        with self._guard("reading a session"):
            value = self._r.hget(self._p + "sess", name)
        if value is None:
            return None
        end, n_tokens = value.split()
        return int(end), int(n_tokens)

    def _all_sessions(self) -> dict[str, tuple[int, int]]:
        with self._guard("listing sessions"):
            raw = self._r.hgetall(self._p + "sess")
        return {
            name.decode(): tuple(int(x) for x in value.split()) for name, value in raw.items()
        }

    def _sessions(self):
        with self._guard("listing sessions"):
            return [name.decode() for name in self._r.hkeys(self._p + "sess")]

    def _session_count(self):
        with self._guard("counting sessions"):
            return int(self._r.hlen(self._p + "sess"))

    def _sessions_ending_at(self, node_ids):
        wanted = {int(i) for i in node_ids}
        found: dict[int, list[str]] = {}
        for name, (end, _) in self._all_sessions().items():
            if end in wanted:
                found.setdefault(end, []).append(name)
        return found

    def _all_stats(self):
        _, rows = self._rows(mode="stats")
        ordered = list(rows.values())
        return {
            "ids": np.array([r.id for r in ordered], np.int64),
            "weight": np.array([r.weight for r in ordered], np.float64),
            "hits": np.array([r.hits for r in ordered], np.float64),
            "last_use": np.array([r.last_use for r in ordered], np.float64),
            "nbytes": np.array([r.nbytes for r in ordered], np.float64),
            "recompute_s": np.array([r.recompute_s for r in ordered], np.float64),
        }

    def _snapshot(self):
        stored_bytes, rows = self._rows()
        return stored_bytes, list(rows.values()), self._all_sessions()

    def _payloads(self, node_ids, touch_at):
        with self._guard("reading chunks"):
            flat = self._run("read", touch_at or 0, "0" if touch_at is None else "1", *node_ids)
        out, missing = [], []
        for k, node_id in enumerate(node_ids):
            data, nbytes, crc = flat[3 * k], int(flat[3 * k + 1]), int(flat[3 * k + 2])
            if nbytes < 0:
                missing.append(node_id)
            elif len(data) != nbytes or crc32(data) != crc:
                raise CorruptDataError(
                    f"chunk of node {node_id} in {self.url}: {len(data)} bytes, crc "
                    f"{crc32(data):08x}; its node says {nbytes} bytes, crc {crc:08x}"
                )
            out.append(data)
        if missing:
            raise KeyError(f"trie nodes {missing} are not stored (evicted or deleted)")
        return out

    def _verify_payloads(self, rows):
        problems = []
        for start in range(0, len(rows), 256):
            part = rows[start : start + 256]
            with self._guard("reading chunks"):
                chunks = self._r.mget([f"{self._p}p:{r.id}" for r in part])
            bad = [
                row for row, data in zip(part, chunks)
                if data is None or len(data) != row.nbytes or crc32(data) != row.crc
            ]
            # another writer may have re-sliced or deleted a node since the snapshot
            now = self._node_rows([row.id for row in bad])
            problems += [
                f"chunk of node {row.id} is missing or fails its length or CRC"
                for row in bad if row.id in now and now[row.id].crc == row.crc
            ]
        return problems

    def _backend_problems(self):
        """Keys of nodes or chunks that no live node accounts for."""
        with self._guard("scanning keys"):
            live = {int(i) for i in self._r.zrange(self._p + "chg", 0, -1)}
            stray = []
            for key in self._r.scan_iter(match=f"{self._p}[np]:*", count=1000):
                node_id = int(key.rsplit(b":", 1)[1])
                # a node created after the listing is in the change log by now
                if node_id not in live and self._r.zscore(self._p + "chg", node_id) is None:
                    stray.append(key.decode())
        return [f"stray keys without a node: {stray[:5]}"] if stray else []

    # ---- writing --------------------------------------------------------------------------

    def _commit(self, plan: WritePlan):
        args = [plan.expected_gen, plan.now]
        for node_id, (row, payload) in plan.inserts.items():
            args += ["I", node_id, *_structure(row), row.hits, row.last_use, payload]
        for node_id, (row, payload) in plan.updates.items():
            args += ["U", node_id, *_structure(row), 0 if payload is None else 1, payload or b""]
        for node_id in plan.deletes:
            args += ["D", node_id]
        for node_id in plan.touches - set(plan.deletes):
            args += ["T", node_id]
        for name in plan.del_sessions:
            args += ["X", name]
        for name, (end, n_tokens) in plan.put_sessions.items():
            args += ["S", name, end, n_tokens]
        args += ["B", plan.bytes_delta]
        only_frees = not plan.inserts and all(p is None for _, p in plan.updates.values())
        with self._guard("saving"):
            result = self._run("apply_oom" if only_frees else "apply", *args)
        if int(result[0]) == 0:
            raise Conflict(result[1])
        return int(result[1]), int(result[2])

    # ---- leases -------------------------------------------------------------------------

    def _live_leases(self):
        with self._guard("reading leases"):
            members = self._r.zrangebyscore(self._p + "lease", f"({time.time()}", "+inf")
        return {int(m.split(b":", 1)[0]) for m in members}

    def _lease(self, node_ids, token, expires):
        members = [f"{i}:{token}".encode() for i in node_ids]
        with self._guard("pinning nodes"):
            self._run("lease", time.time(), expires, *members)
        self._leases[token] = members

    def _release(self, token):
        members = self._leases.pop(token, [])
        if members:
            with self._guard("unpinning nodes"):
                self._r.zrem(self._p + "lease", *members)

    def _housekeeping(self) -> None:
        with self._guard("cleaning up"):
            self._r.zremrangebyscore(self._p + "lease", "-inf", time.time())
            gen, floor = (int(x or 0) for x in self._r.hmget(self._meta_key, "gen", "floor"))
            if gen - floor > TOMBSTONES_KEPT:
                floor = gen - TOMBSTONES_KEPT
                pipe = self._r.pipeline(transaction=True)
                pipe.zremrangebyscore(self._p + "tomb", "-inf", floor)
                pipe.hset(self._meta_key, "floor", floor)
                pipe.execute()


def _structure(row: NodeRow) -> list:
    return [
        row.parent, np.ascontiguousarray(row.tokens, "<i4").tobytes(), row.refs, repr(row.weight),
        repr(row.recompute_s), row.nbytes, row.crc,
    ]
