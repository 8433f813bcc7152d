"""The skew scenario's simulated browsers: users with one cookie jar and 1-4 tabs each.

Theory of operation
-------------------
A *user* arrives, puts its app's session cookie (`sid`, random) in its own jar, and opens
1-4 tabs at random moments. A *tab* GETs `/`, reads the page's version and asset list
(`lb.demo.spa.parse_page`), GETs the app script at once, then each lazy chunk at a random
moment within its life (1-5 minutes by default), and calls `/api/...` every few seconds
until the run closes: tabs stay open across the deploy and the tail after it. Half the
tabs (drawn per tab) are an app that sends its page's version, `X-Lb-Version: v1`, on its
asset and API requests; the others send nothing special. All the tabs of a user share its
jar, its connections (6, as a browser's per host) and its cache: an asset answered 200 with
`immutable` is not asked for again by another tab of the same user.

The shape is drawn once (`UserPlans`, seeded) and the same plan runs against every system
under test, so lb, HAProxy and nginx see the same users at the same moments. A system's
`Service` says which versions have a node in service, as its own deploy moves nodes out and
back; a tab asks it the moment an answer arrives, to tell "a cross-version answer while my
version was still served" (a routing error) from "after it was gone" (nothing could do
better than say so).

Counted per system (`Tally`), everything bounded: asset 404s (a browser's ChunkLoadError),
failed requests (any other non-200, a wrong asset body, a connection error or timeout),
API answers from another version than the tab's page, split by header/no-header tab and by
whether the tab's version was in service, `X-Lb-Version-Gone` headers seen, requests by kind,
a 10 s timeline, and a few samples of each kind of anomaly.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import aiohttp
from yarl import URL

from lb.demo.spa import asset_body, match_asset, parse_page

REQUEST_TIMEOUT_S = 10.0
CONNECTIONS_PER_USER = 6          # a browser's connections per host
SAMPLES_PER_KIND = 12             # anomaly samples kept per kind and system
BUCKET_S = 10                     # the timeline's resolution
VERSION_HEADER = "X-Lb-Version"
GONE_HEADER = "X-Lb-Version-Gone"


# -- the shape: drawn once, run against every system -------------------------------------------

@dataclass(frozen=True)
class TabPlan:
    open_s: float                 # after the user's arrival
    header: bool                  # an app that sends its page's version
    life_s: float                 # its lazy chunks load within this long after the page
    seed: int                     # chunk moments and API gaps


@dataclass(frozen=True)
class UserPlan:
    index: int
    arrive_s: float               # after the run's start
    sid: str                      # the app's session cookie
    tabs: tuple[TabPlan, ...]


class UserPlans:
    """Users at `rate` a second from time 0, at most `limit` of them, drawn from `seed`."""

    def __init__(self, seed: int, rate: float, limit: int, tab_life_s: tuple[float, float]):
        self.rng, self.rate, self.limit, self.tab_life_s = random.Random(seed), rate, limit, tab_life_s

    def __iter__(self):
        for index in range(self.limit):
            low, high = self.tab_life_s
            tabs = tuple(TabPlan(open_s=0.0 if i == 0 else self.rng.uniform(0, high), header=self.rng.random() < 0.5,
                                 life_s=self.rng.uniform(low, high), seed=self.rng.getrandbits(48))
                         for i in range(self.rng.randint(1, 4)))
            yield UserPlan(index, index / self.rate, f"{self.rng.getrandbits(64):016x}", tabs)


# -- what a system's deploy has in service ---------------------------------------------------------

class Service:
    """Each node's version and whether it is in service, as one system's deploy moves it;
    `events` keeps the moves with their times (seconds after `t0`)."""

    def __init__(self, names: list[str], version: str, t0: float):
        self.t0 = t0
        self.version = dict.fromkeys(names, version)
        self.out: set[str] = set()
        self.events: list[dict] = []
        self.gone_at: dict[str, float] = {}       # version -> when its last node left service

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def take_out(self, node: str) -> None:
        self.out.add(node)
        self.events.append({"at": self.now(), "node": node, "what": "out"})
        old = self.version[node]
        if not self.in_service(old):
            self.gone_at.setdefault(old, self.now())

    def put_back(self, node: str, version: str) -> None:
        self.out.discard(node)
        self.version[node] = version
        self.events.append({"at": self.now(), "node": node, "what": "in", "version": version})

    def in_service(self, version: str) -> bool:
        return any(v == version and n not in self.out for n, v in self.version.items())


# -- the counts -------------------------------------------------------------------------------

def _tab_kind(header: bool) -> str:
    return "header" if header else "plain"


class Tally:
    """One system's counts: everything the report shows, bounded in size."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.requests: Counter = Counter()            # page / asset / api
        self.cache_hits = 0
        self.asset_404: Counter = Counter()           # (tab kind, "in service" | "gone")
        self.failed: Counter = Counter()              # reason
        self.api: Counter = Counter()                 # (tab kind, in service/gone): API answers
        self.cross_api: Counter = Counter()           # the same keys: from another version
        self.cross_flagged: Counter = Counter()       # the same keys: ... that said X-Lb-Version-Gone
        self.gone_headers: Counter = Counter()        # tab kind
        self.pages: Counter = Counter()               # version of the pages loaded
        self.samples: dict[str, list] = defaultdict(list)
        self.timeline: dict[int, Counter] = defaultdict(Counter)

    def at(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def count(self, kind: str) -> float:
        """Count `kind` in the timeline's bucket of now; now."""
        t = self.at()
        self.timeline[int(t // BUCKET_S) * BUCKET_S][kind] += 1
        return t

    def note(self, kind: str, **detail) -> None:
        """Count `kind` in the timeline, and keep a sample of it."""
        t = self.count(kind)
        if len(self.samples[kind]) < SAMPLES_PER_KIND:
            self.samples[kind].append({"at": t, **detail})

    def report(self) -> dict:
        def split(counter: Counter) -> dict:
            return {f"{kind}/{when}": n for (kind, when), n in sorted(counter.items())}
        return {
            "requests": sum(self.requests.values()), "requests_by_kind": dict(self.requests),
            "cache_hits": self.cache_hits, "pages_by_version": dict(self.pages),
            "asset_404": sum(self.asset_404.values()), "asset_404_by_tab": split(self.asset_404),
            "failed": sum(self.failed.values()), "failed_by_reason": dict(self.failed),
            "api_answers": split(self.api), "cross_version_api": split(self.cross_api),
            "cross_version_api_flagged_gone": split(self.cross_flagged),
            "cross_api_header_in_service": self.cross_api[("header", "in service")],
            "cross_api_header_gone": self.cross_api[("header", "gone")],
            "cross_api_plain": self.cross_api[("plain", "in service")] + self.cross_api[("plain", "gone")],
            "gone_headers": sum(self.gone_headers.values()), "gone_headers_by_tab": dict(self.gone_headers),
            "samples": dict(self.samples),
            "timeline": [{"t": t, **counts} for t, counts in sorted(self.timeline.items())],
        }


@functools.lru_cache(maxsize=256)
def expected_asset(version: str, name: str, size: int) -> bytes:
    return asset_body(version, name, size)


# -- the browser ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """What every tab shares: the app's asset size and chunk count, the API's pace."""
    asset_bytes: int
    chunks: int
    api_every_s: tuple[float, float]


class Browser:
    """One user on one system: a jar, a connection pool, a cache, and the plan's tabs."""

    def __init__(self, base: str, plan: UserPlan, shape: Shape, tally: Tally, service: Service,
                 closing: asyncio.Event):
        self.base, self.plan, self.shape = base, plan, shape
        self.tally, self.service, self.closing = tally, service, closing
        self.cache: set[str] = set()
        self.opened_at = time.monotonic()

    async def run(self) -> None:
        jar = aiohttp.CookieJar(unsafe=True)          # unsafe: cookies for an IP-address host
        jar.update_cookies({"sid": self.plan.sid}, URL(self.base + "/"))
        connector = aiohttp.TCPConnector(limit=CONNECTIONS_PER_USER)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(cookie_jar=jar, connector=connector, timeout=timeout) as http:
            await asyncio.gather(*(self.tab(http, tab) for tab in self.plan.tabs))

    async def pause(self, until: float) -> bool:
        """Wait until `until` (monotonic); False when the run closed first."""
        delay = until - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(self.closing.wait(), delay)
            except asyncio.TimeoutError:
                pass
        return not self.closing.is_set()

    async def tab(self, http, plan: TabPlan) -> None:
        if not await self.pause(self.opened_at + plan.open_s):
            return
        page = await self.page(http)
        if page is None:
            return
        version, (app, *chunks) = page
        self.tally.pages[version] += 1
        rng = random.Random(plan.seed)
        start = time.monotonic()
        due = sorted((start + plan.life_s * rng.random(), path) for path in chunks)
        headers = {VERSION_HEADER: version} if plan.header else {}
        await self.asset(http, app, version, plan.header, headers)
        next_api = start + rng.uniform(*self.shape.api_every_s)
        calls = 0
        while True:
            if due and due[0][0] <= next_api:
                at, path = due.pop(0)
                if not await self.pause(at):
                    return
                await self.asset(http, path, version, plan.header, headers)
                continue
            if not await self.pause(next_api):
                return
            calls += 1
            await self.api(http, f"/api/tab{plan.seed % 1000}/{calls}", version, plan.header, headers)
            next_api = max(time.monotonic(), next_api) + rng.uniform(*self.shape.api_every_s)

    async def fetch(self, http, kind: str, path: str, headers: dict) -> tuple[int, object, bytes] | None:
        """(status, headers, body), or None after counting a connection error or timeout."""
        self.tally.requests[kind] += 1
        self.tally.count("requests")
        try:
            async with http.get(self.base + path, headers=headers, allow_redirects=False) as resp:
                return resp.status, resp.headers, await resp.read()
        except asyncio.TimeoutError:
            reason = "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"connection error ({type(exc).__name__})"
        self.failed(reason, kind=kind, path=path)
        return None

    def failed(self, reason: str, **detail) -> None:
        self.tally.failed[reason] += 1
        self.tally.note("failed", reason=reason, **detail)

    def saw_gone(self, header: bool, answer) -> bool:
        if answer[1].get(GONE_HEADER) is None:
            return False
        self.tally.gone_headers[_tab_kind(header)] += 1
        return True

    async def page(self, http) -> tuple[str, list[str]] | None:
        answer = await self.fetch(http, "page", "/", {})
        if answer is None:
            return None
        if answer[0] != 200:
            self.failed(f"page status {answer[0]}", served_by=answer[1].get("X-Backend-Version"))
            return None
        try:
            return parse_page(answer[2])
        except ValueError as exc:
            self.failed("page unreadable", error=str(exc)[:80])
            return None

    async def asset(self, http, path: str, version: str, header: bool, headers: dict) -> None:
        if path in self.cache:
            self.tally.cache_hits += 1
            return
        answer = await self.fetch(http, "asset", path, headers)
        if answer is None:
            return
        status, response_headers, body = answer
        self.saw_gone(header, answer)
        when = "in service" if self.service.in_service(version) else "gone"
        if status == 404:
            self.tally.asset_404[(_tab_kind(header), when)] += 1
            self.tally.note("asset_404", path=path, tab=_tab_kind(header), page=version, when=when,
                            served_by=response_headers.get("X-Backend-Version"))
            return
        name = match_asset(path, version, self.shape.chunks)
        if status != 200 or name is None or body != expected_asset(version, name, self.shape.asset_bytes):
            self.failed(f"asset status {status}" if status != 200 else "asset body not the page's version's",
                        path=path, page=version, served_by=response_headers.get("X-Backend-Version"))
            return
        if "immutable" in response_headers.get("Cache-Control", ""):
            self.cache.add(path)

    async def api(self, http, path: str, version: str, header: bool, headers: dict) -> None:
        answer = await self.fetch(http, "api", path, headers)
        if answer is None:
            return
        if answer[0] != 200:
            self.failed(f"api status {answer[0]}", path=path, served_by=answer[1].get("X-Backend-Version"))
            return
        try:
            served = json.loads(answer[2])["version"]
        except (ValueError, KeyError, TypeError):
            self.failed("api body unreadable", path=path)
            return
        flagged = self.saw_gone(header, answer)
        key = (_tab_kind(header), "in service" if self.service.in_service(version) else "gone")
        self.tally.api[key] += 1
        if served != version:
            self.tally.cross_api[key] += 1
            self.tally.cross_flagged[key] += flagged
            self.tally.note(f"cross_api_{key[0]}_{key[1].replace(' ', '_')}", page=version, served=served,
                            gone_header=flagged)


# -- one load for several systems ------------------------------------------------------------

class Crowd:
    """The users of `plans`, each run against every system in `targets` ({name: (base URL,
    Tally, Service)}), arriving until `stop_arriving` is set; every tab closes on `closing`."""

    def __init__(self, plans: UserPlans, shape: Shape, targets: dict, t0: float):
        self.plans, self.shape, self.targets, self.t0 = plans, shape, targets, t0
        self.stop_arriving = asyncio.Event()
        self.closing = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.arrived = 0
        self.errors: Counter = Counter()              # a browser that raised: a bug in this file

    async def arrive(self) -> None:
        for plan in self.plans:
            delay = self.t0 + plan.arrive_s - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stop_arriving.wait(), delay)
                except asyncio.TimeoutError:
                    pass
            if self.stop_arriving.is_set() or self.closing.is_set():
                return
            self.arrived += 1
            for base, tally, service in self.targets.values():
                task = asyncio.create_task(Browser(base, plan, self.shape, tally, service, self.closing).run())
                self.tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors[repr(task.exception())[:200]] += 1

    async def close(self, grace_s: float = REQUEST_TIMEOUT_S + 5) -> int:
        """Close every tab; cancel what is still running after `grace_s`. The tabs cancelled."""
        self.stop_arriving.set()
        self.closing.set()
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        return len(pending)
