"""Scheduling: admission, deadlines, fair interleaving, the two worker stages (tokenize, infer), batch planning.

:func:`plan_batches` is pure. :class:`Scheduler` takes requests from the event loop, cuts each into pieces of at
most a job, and runs them on two threads:

* the **tokenizer stage** takes every piece waiting, tokenizes them together (one batch encoding per truncation
  side and prompt) and hands them on;
* the **inference stage** takes pieces as a job, in fair-queueing order (a big request's pieces alternate with
  other requests'), runs it (the engine sorts the texts by length, cuts them into batches, pads, runs the model,
  pools) and, once every piece of a request is computed, joins and returns its result.

The stages overlap: while the model runs one job, the next pieces are tokenized. Nothing runs on the event loop
but admission (a request that would wait longer than the bound is refused at once), the deadline timers and the
hand-over of results. A failed job fails every waiter with the cause attached; a request whose caller went away
(cancelled future) or whose deadline passed is skipped before it is tokenized or computed.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedserve.errors import DeadlineExceededError, JobAbandoned, OverloadedError

log = logging.getLogger(__name__)


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    *,
    max_batch_size: int,
    max_batch_tokens: int,
    batch_overhead_tokens: int = 32,
) -> list[np.ndarray]:
    """Sort item indices by length and cut them into batches that waste the least padding.

    Every batch is padded to its longest item, so its cost is ``len(batch) * longest`` tokens plus a fixed
    ``batch_overhead_tokens`` per call. Over the sorted items, a dynamic programme picks the cut points that
    minimise the total cost: a short text is not padded to 256 tokens because one long text arrived with it
    (measured 2-3x faster than fixed batches of 32 on mixed lengths on a CPU). A batch holds at most
    ``max_batch_size`` items and at most ``max_batch_tokens`` padded tokens; an item longer than the token
    budget gets a batch of its own.

    Cut points are searched only where an optimal one can lie: where the length changes, and where a batch that
    started at another such point is full (moving a cut inside a run of equal lengths to the right never costs
    more, unless the batch before it is full). Their number grows with the distinct lengths and the limits, not
    with the number of items, so planning 1,024 short texts costs well under a millisecond.

    Returns:
        Index arrays into ``lengths``, shortest batches first.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.shape[0])
    if n == 0:
        return []
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    if n == 1 or (ordered[0] == ordered[-1] and n <= max_batch_size and n * ordered[-1] <= max_batch_tokens):
        return [order]
    cuts = _candidate_cuts(ordered, max_batch_size, max_batch_tokens)
    values = ordered.tolist()
    best = [0.0] * len(cuts)
    back = [0] * len(cuts)
    cut_array = np.asarray(cuts, dtype=np.int64)
    lo = 0
    for j in range(1, len(cuts)):
        end = cuts[j]
        longest = values[end - 1]
        fits = max(1, min(max_batch_size, max_batch_tokens // longest))
        while cuts[lo] < end - fits:  # the first candidate that can start a batch ending here (monotone in j)
            lo += 1
        lo = min(lo, j - 1)
        if j - lo > _VECTOR_WINDOW:  # a wide window: one numpy pass beats a Python loop
            window = np.asarray(best[lo:j]) + (end - cut_array[lo:j]) * longest
            k = int(np.argmin(window))
            best[j], back[j] = float(window[k]) + batch_overhead_tokens, lo + k
            continue
        choice, cost = lo, float("inf")
        for i in range(lo, j):
            candidate = best[i] + (end - cuts[i]) * longest
            if candidate < cost:
                choice, cost = i, candidate
        best[j], back[j] = cost + batch_overhead_tokens, choice
    batches: list[np.ndarray] = []
    j = len(cuts) - 1
    while j > 0:
        batches.append(order[cuts[back[j]] : cuts[j]])
        j = back[j]
    return batches[::-1]


#: Candidate starts above which one end's choice is computed with numpy instead of a Python loop.
_VECTOR_WINDOW = 48


def _candidate_cuts(ordered: np.ndarray, max_batch_size: int, max_batch_tokens: int) -> list[int]:
    """0, n, every change of length, and the end of the fullest batch starting at any candidate (closed under it).

    Every candidate ``c`` adds ``c + fits(c)``, so the nearest candidate before any candidate ``e`` starts a valid
    batch ending at ``e``.
    """
    n = int(ordered.shape[0])
    values = ordered.tolist()

    def fullest_end(start: int) -> int:
        """End of the largest batch from ``start`` within both limits (at least one item)."""
        lo, hi = 1, min(max_batch_size, n - start)
        if hi * values[start + hi - 1] <= max_batch_tokens:
            return start + hi
        while lo < hi:  # largest k with k * values[start + k - 1] <= max_batch_tokens (or 1)
            mid = (lo + hi + 1) // 2
            if mid * values[start + mid - 1] <= max_batch_tokens:
                lo = mid
            else:
                hi = mid - 1
        return start + lo

    heap = [0, n, *(np.flatnonzero(np.diff(ordered)) + 1).tolist()]
    heapq.heapify(heap)
    seen: set[int] = set()
    while heap:
        position = heapq.heappop(heap)
        if position in seen:
            continue
        seen.add(position)
        if position < n:
            heapq.heappush(heap, fullest_end(position))
    return sorted(seen)


#: Weight the throughput estimate keeps per finished job (the new job gets the rest); jobs are weighted by their
#: seconds. Only jobs of at least half the job limits (texts or units) are measured: jobs have that size when a
#: queue is waiting, which is when the estimate is used, while the one-text jobs of a quiet spell are mostly
#: per-call overhead: measuring them would refuse the next burst of small requests too early.
THROUGHPUT_DECAY = 0.9


@dataclass(eq=False)
class Request:
    """One caller's texts: cut into one or more :class:`Pending` pieces, answered through one future."""

    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    pieces: list[Pending] = field(default_factory=list)
    parts: list[Any] = field(default_factory=list)
    remaining: int = 0  # pieces not computed yet
    started: bool = False  # a piece was taken for computing: the deadline no longer applies
    failed: bool = False  # set by the thread that failed it, before the event loop sets the future
    timer: asyncio.TimerHandle | None = None

    def fail(self, exc: BaseException) -> None:
        self.failed = True  # its other pieces are skipped from now on, not from when the loop gets to it
        self.loop.call_soon_threadsafe(_set_exception, self.future, exc)


@dataclass(eq=False)
class Pending:
    """One piece of a request (at most a job's worth of its texts) moving through the stages."""

    texts: Sequence[str]
    options: Any
    request: Request
    index: int = 0  # position among the request's pieces
    units: float = 0.0  # estimated cost: the scheduler's ``cost`` summed over the texts
    round: int = 0  # fair-queueing round: pieces are taken in (round, seq) order
    seq: int = 0
    counted: bool = False  # counted as queued (for admission) until it is taken for computing or dropped
    small: bool = False  # a query, for the express threads: its request is this one piece, of at most express_units
    tokens: Any = None  # what the tokenizer stage produced
    tokenize_s: float = 0.0
    tokenized_at: float = 0.0

    @property
    def abandoned(self) -> bool:
        """The request is answered already: its caller left, its deadline passed, or a piece of it failed."""
        return self.request.failed or self.request.future.done()

    def fail(self, exc: BaseException) -> None:
        self.request.fail(exc)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _set_results(pairs: list[tuple[asyncio.Future, Any]]) -> None:
    for future, result in pairs:
        if not future.done():
            future.set_result(result)


@dataclass
class SchedulerStats:
    """Counters for ``/info`` and benchmarks.

    Attributes:
        requests: requests answered with vectors; ``texts`` their texts.
        abandoned: requests whose caller went away before they finished (their queued pieces are never computed).
        expired: requests failed at their deadline before any of their texts was computed.
        refused: requests refused at admission (:class:`OverloadedError`).
        throughput: measured cost units per second, all inference threads together (``None`` before any
            measurement); what admission divides the queue by.
    """

    jobs: int = 0
    requests: int = 0
    texts: int = 0
    failed_jobs: int = 0
    abandoned: int = 0
    expired: int = 0
    refused: int = 0
    queue_wait_s: float = 0.0
    compute_s: float = 0.0
    throughput: float | None = None


def lower_thread_priority(nice: int) -> bool:
    """Run the calling thread ``nice`` steps lower than it runs now (Linux: a thread is a task with its own
    niceness; raising it needs no privilege). False, logged once per thread, where the platform refuses."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError) as exc:  # no per-thread niceness (macOS applies it to the process)
        log.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, exc)
        return False
    return True


#: How much nicer than the express threads the other inference threads run (when there are express threads): a
#: one-job request computing beside pieces of large requests gets most of a core (CFS weights 110 vs 36 at 10/15).
EXPRESS_NICE_STEP = 5


class _Stage:
    """Pending pieces in (round, seq) order, served by ``threads`` daemon threads.

    Queries (pieces marked ``small`` by the scheduler) are kept apart from the rest (two heaps, each in
    (round, seq) order): the last ``express`` threads take only small requests, so that a query finds a thread even
    while larger requests' jobs hold all the others; the other threads take the first piece of either heap.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[bool], None],
        threads: int = 1,
        nice: int = 0,
        express: int = 0,
    ) -> None:
        self.queries: list[tuple[int, int, Pending]] = []  # heaps: queries, and the rest
        self.others: list[tuple[int, int, Pending]] = []
        self.ready = threading.Condition()
        self._work = work
        self.threads = []
        for i in range(threads):
            fast = i >= threads - express
            label = f"{name}-express-{i}" if fast else (f"{name}-{i}" if threads > 1 else name)
            thread_nice = nice if fast or not express or not nice else nice + EXPRESS_NICE_STEP
            self.threads.append(threading.Thread(target=self._loop, args=(fast, thread_nice), name=label, daemon=True))
        self.closed = False

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def put_many(self, items: Sequence[Pending]) -> None:
        with self.ready:
            for item in items:
                heap = self.queries if item.small else self.others
                heapq.heappush(heap, (item.round, item.seq, item))
            self.ready.notify_all()  # an express thread woken for a piece it may not take must not swallow a wake-up

    def _heap(self, express: bool) -> list[tuple[int, int, Pending]] | None:
        """The heap whose head comes next for this kind of thread (``None``: nothing it may take)."""
        if express or not self.others:
            return self.queries or None
        if not self.queries:
            return self.others
        return self.queries if self.queries[0][:2] < self.others[0][:2] else self.others

    def has(self, express: bool = False) -> bool:
        return self._heap(express) is not None

    def head(self, express: bool = False) -> Pending:
        heap = self._heap(express)
        assert heap is not None
        return heap[0][2]

    def pop(self, express: bool = False) -> Pending:
        heap = self._heap(express)
        assert heap is not None
        return heapq.heappop(heap)[2]

    def texts(self, express: bool = False) -> int:
        heaps = (self.queries,) if express else (self.queries, self.others)
        return sum(len(item.texts) for heap in heaps for *_, item in heap)

    def wait(self, express: bool = False) -> bool:
        """Block until items this thread may take are waiting (True) or the stage closed (False). Call with
        ``ready`` held."""
        while not self.has(express) and not self.closed:
            self.ready.wait()
        return not self.closed

    def _loop(self, express: bool, nice: int) -> None:
        if nice:
            lower_thread_priority(nice)
        while not self.closed:
            try:
                self._work(express)
            except Exception:  # a bug in a stage must not kill the thread silently
                log.exception("scheduler stage %s failed", threading.current_thread().name)

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()


class Scheduler:
    """Admission, deadlines, fair interleaving and the tokenize -> infer pipeline for one engine.

    **Pieces and fairness.** A request is cut into pieces of at most ``max_job_texts`` texts and ``max_job_units``
    estimated cost, so one job never holds more than that of any request. Pieces are queued by fair-queueing
    round: a request's k-th piece goes into round ``current + 1 + k``, where ``current`` is the round of the last
    piece taken for computing, and jobs take pieces in (round, arrival) order. A one-text request that arrives
    behind a 2,048-text one therefore waits for the job running and at most one piece of the big request, not for
    all of it; two big requests alternate piece by piece; and a stream of new requests cannot hold back a cut
    request's next piece, because newcomers join the round after the one being served, behind the pieces already
    waiting there (joining the round being served, a closed loop of clients kept 16-text requests of a soak waiting
    up to 34 s). The pieces' results are joined in order by ``merge``.

    **Admission by time.** The scheduler measures its throughput in cost units per second (jobs of at least half
    the job limits, weighted by their seconds, older jobs decayed by :data:`THROUGHPUT_DECAY`, times
    ``inference_threads``). A request's predicted
    wait is the cost queued in the rounds its pieces will go into (what will be computed before its last piece)
    divided by that throughput; above ``max_queue_wait_s`` it is refused at once with :class:`OverloadedError`,
    whose ``retry_after_s`` is the time the queue needs to drain to the bound. ``max_queue_texts`` caps the texts
    held in memory. A request finding nothing queued is always admitted, however large.

    **Deadlines and cancellation.** A request none of whose texts is computing ``deadline_s`` after admission is
    failed with :class:`DeadlineExceededError` and its pieces are dropped; once one of its pieces has started it
    runs to its end. A request whose future is done (its caller went away, it expired, or a piece of it failed)
    is released from the admission count at once, and its pieces are skipped before tokenizing and before
    computing; a job whose callers all went away stops between batches (the engine raises :class:`JobAbandoned`).

    Args:
        tokenize: ``tokenize(pieces)`` sets ``tokens`` on each piece (or fails it); on the tokenizer thread.
        infer: ``infer(pieces) -> results`` computes one job, one result per piece; on an inference thread.
        merge: ``merge(results) -> result`` joins the results of a request's pieces, in order (only for requests
            of more than one piece); on an inference thread.
        max_queue_texts: texts allowed to wait (a memory cap); past it :meth:`submit` raises :class:`OverloadedError`.
        max_job_texts: texts per piece and per job.
        max_job_units: estimated cost per piece and per job (a piece holds at least one text).
        cost: ``cost(text)``, the estimated cost of one text in any unit proportional to compute time (the engine
            estimates tokens from characters); the default counts texts.
        max_queue_wait_s: the predicted wait above which a request is refused.
        deadline_s: seconds an admitted request may wait before computing; ``inf`` for none.
        throughput: cost units per second of all inference threads together, assumed until jobs are measured (the
            engine measures it in its warm-up); ``None``: no time bound until then.
        max_wait_s: how long the inference stage waits for more requests when it has less than a job (0 = none).
        pipelined: tokenize on a stage of its own, overlapping inference (a GPU host); otherwise the inference
            thread tokenizes each job itself (a worker with one core gains nothing from a second thread and pays
            for the hand-over).
        inference_threads: threads taking jobs at once (one per model session).
        express_threads: how many of them take only small requests (one piece of at most ``express_units``): a
            query then never waits for a thread while larger requests' jobs hold the others. The throughput
            estimate counts the other threads only. With ``nice``, the other threads run
            :data:`EXPRESS_NICE_STEP` nicer.
        express_units: the largest estimated cost of a small request.
        nice: how much lower than the caller's threads the stage threads run (0-19): on a full machine the event
            loop, which admits and refuses requests, then runs first (see ``EMBEDSERVE_STAGE_NICE``).
    """

    def __init__(
        self,
        tokenize: Callable[[list[Pending]], None],
        infer: Callable[[list[Pending]], list[Any]],
        *,
        merge: Callable[[list[Any]], Any],
        max_queue_texts: int,
        max_job_texts: int,
        max_job_units: float = math.inf,
        cost: Callable[[str], float] | None = None,
        max_queue_wait_s: float = math.inf,
        deadline_s: float = math.inf,
        throughput: float | None = None,
        max_wait_s: float = 0.0,
        pipelined: bool = True,
        inference_threads: int = 1,
        express_threads: int = 0,
        express_units: float = math.inf,
        nice: int = 0,
    ) -> None:
        if not 0 <= express_threads < inference_threads:
            raise ValueError(f"express_threads={express_threads} must leave at least one of {inference_threads}")
        self._tokenize = tokenize
        self._infer = infer
        self._merge = merge
        self._cost = cost
        self.max_queue_texts = max_queue_texts
        self.max_job_texts = max_job_texts
        self.max_job_units = max_job_units
        self.max_queue_wait_s = max_queue_wait_s
        self.deadline_s = deadline_s
        self.max_wait_s = max_wait_s
        self.inference_threads = inference_threads
        self.compute_threads = inference_threads - express_threads  # what the throughput estimate counts
        self.express_threads, self.express_units = express_threads, express_units
        self.stats = SchedulerStats()
        self._lock = threading.Lock()  # admission counts, rounds, request state, stats
        self._queued_texts = 0
        self._queued_units = 0.0
        self._queued_small_units = 0.0  # of queries, which the express threads take (see _admit)
        self._rounds: dict[int, list[float]] = {}  # round -> [queued units, queued pieces]
        self._round = 0  # the round of the last piece taken for computing
        self._seq = 0
        self._measured_units = 0.0  # decayed sums over finished jobs
        self._measured_s = 0.0
        if throughput is not None:  # as one second of one thread's work
            self.observe(throughput / self.compute_threads, 1.0)
        self.pipelined = pipelined
        self._inference = _Stage("embedserve-infer", self._infer_step, inference_threads, nice, express_threads)
        self._tokenizer = _Stage("embedserve-tokenize", self._tokenize_step, 1, nice) if pipelined else self._inference
        self._inference.start()
        if pipelined:
            self._tokenizer.start()

    @property
    def queued_texts(self) -> int:
        """Texts accepted and not yet computing."""
        return self._queued_texts

    @property
    def throughput(self) -> float | None:
        """Measured cost units per second, all inference threads together (``None`` before any measurement)."""
        return self.stats.throughput

    def observe(self, units: float, seconds: float) -> None:
        """Record that one inference thread computed ``units`` of cost in ``seconds`` (a finished job); the estimate
        is that rate times ``compute_threads``."""
        if seconds <= 0 or units <= 0:
            return
        with self._lock:
            self._measured_units = self._measured_units * THROUGHPUT_DECAY + units
            self._measured_s = self._measured_s * THROUGHPUT_DECAY + seconds
            self.stats.throughput = self._measured_units / self._measured_s * self.compute_threads

    async def submit(self, texts: Sequence[str], options: Any) -> Any:
        """Queue ``texts`` and wait for their result (:meth:`enqueue`, then await its future).

        Raises:
            OverloadedError: the queue holds ``max_queue_texts`` texts, or more than ``max_queue_wait_s`` of work
                would be computed before this request; raised at once.
            DeadlineExceededError: none of the texts started computing within ``deadline_s``.
            Exception: whatever tokenization, inference or ``merge`` raised for this request.
        """
        return await self.enqueue(texts, options)

    def enqueue(self, texts: Sequence[str], options: Any) -> asyncio.Future:
        """Admit and queue ``texts`` now (on the event loop's thread); their result comes through the future.

        Admission is decided before this returns, so a refused request costs no task or callback: under overload
        most requests are refused, and refusing them is what the event loop must do quickly. Cancelling the future
        (or a task awaiting it) drops the request's pieces that have not started.

        Raises:
            OverloadedError: as :meth:`submit`, raised here.
        """
        loop = asyncio.get_running_loop()
        request = Request(future=loop.create_future(), loop=loop)
        pieces = self._cut(texts, options, request)
        request.pieces, request.parts, request.remaining = pieces, [None] * len(pieces), len(pieces)
        if self.express_threads and len(pieces) == 1 and pieces[0].units <= self.express_units:
            pieces[0].small = True
        with self._lock:
            # Newcomers start in the round after the one being served: joining that one would let a stream of new
            # requests hold back the next pieces of requests already cut for as long as the stream lasts.
            start = self._round + 1
            try:
                self._admit(len(texts), pieces, start)
            except OverloadedError:
                self.stats.refused += 1
                raise
            for k, piece in enumerate(pieces):
                piece.round, piece.seq = start + k, self._seq + k
                self._count(piece)
            self._seq += len(pieces)
        if math.isfinite(self.deadline_s):
            request.timer = loop.call_later(self.deadline_s, self._expire, request)
        request.future.add_done_callback(functools.partial(self._forget, request))
        self._tokenizer.put_many(pieces)
        return request.future  # a cancelled future: the stages skip its pieces

    def _cut(self, texts: Sequence[str], options: Any, request: Request) -> list[Pending]:
        """Cut ``texts`` into pieces of at most ``max_job_texts`` texts and ``max_job_units`` (at least one text)."""
        costs = [1.0] * len(texts) if self._cost is None else [self._cost(text) for text in texts]
        pieces: list[Pending] = []
        start, units = 0, 0.0
        for i, unit in enumerate(costs):
            if i > start and (i - start >= self.max_job_texts or units + unit > self.max_job_units):
                pieces.append(Pending(texts[start:i], options, request, index=len(pieces), units=units))
                start, units = i, 0.0
            units += unit
        pieces.append(Pending(texts[start:], options, request, index=len(pieces), units=units))
        return pieces

    def _admit(self, count: int, pieces: list[Pending], start: int) -> None:
        """Refuse a request the queue cannot take (lock held)."""
        queued, rate = self._queued_texts, self.stats.throughput
        if queued + count > self.max_queue_texts:
            excess = (queued + count - self.max_queue_texts) * self._queued_units / max(queued, 1)
            retry = excess / rate if rate else 1.0
            raise OverloadedError(
                f"server busy: {queued} texts are queued and max_queue_texts={self.max_queue_texts}; "
                f"retry after {retry:.1f} s",
                retry_after_s=retry,
            )
        if not rate or not self._queued_units:
            return
        # Units computed before this request's last piece: every round before the one after it. Not only the rounds
        # from the current one: an express thread moves the current round to the newest query while older pieces
        # still wait in earlier rounds (counting from the current round, a soak admitted far too much and 6 of its
        # requests passed their deadline).
        # A query waits only for the queries before it: the express threads take nothing else.
        end = start + len(pieces)
        if pieces[0].small:
            ahead = self._queued_small_units
        else:
            ahead = sum(units for r, (units, _) in self._rounds.items() if r < end)
        wait = ahead / rate
        if wait > self.max_queue_wait_s:
            retry = wait - self.max_queue_wait_s
            raise OverloadedError(
                f"server busy: the work queued ahead of this request would take {wait:.1f} s, above "
                f"max_queue_wait_s={self.max_queue_wait_s:g}; retry after {retry:.1f} s",
                retry_after_s=retry,
            )

    def _count(self, piece: Pending) -> None:
        """Count ``piece`` as queued (lock held)."""
        piece.counted = True
        self._queued_small_units += piece.units if piece.small else 0.0
        self._queued_texts += len(piece.texts)
        self._queued_units += piece.units
        slot = self._rounds.setdefault(piece.round, [0.0, 0])
        slot[0] += piece.units
        slot[1] += 1

    def _uncount(self, piece: Pending) -> None:
        """No longer count ``piece`` as queued, once (lock held)."""
        if not piece.counted:
            return
        piece.counted = False
        self._queued_small_units -= piece.units if piece.small else 0.0
        self._queued_texts -= len(piece.texts)
        self._queued_units -= piece.units
        slot = self._rounds[piece.round]
        slot[0] -= piece.units
        slot[1] -= 1
        if slot[1] == 0:
            del self._rounds[piece.round]
        if not self._rounds:
            self._queued_units = self._queued_small_units = 0.0  # no float residue: an empty queue admits anything

    def _expire(self, request: Request) -> None:
        """The deadline timer (event loop): fail ``request`` if none of its pieces has started."""
        with self._lock:  # the inference stage marks a request started under this lock: one of the two wins
            if request.started or request.future.done():
                return
            self.stats.expired += 1
            request.future.set_exception(
                DeadlineExceededError(
                    f"the request did not start computing within request_deadline_s={self.deadline_s:g} "
                    "(EMBEDSERVE_REQUEST_DEADLINE_S); the server is overloaded, retry later"
                )
            )

    def _forget(self, request: Request, future: asyncio.Future) -> None:
        """The future is done (event loop): release whatever of ``request`` is still queued."""
        if request.timer is not None:
            request.timer.cancel()
        with self._lock:
            for piece in request.pieces:
                self._uncount(piece)
            if future.cancelled() and request.remaining:
                self.stats.abandoned += 1

    # -- the two stages (worker threads) ----------------------------------------------------------------------

    def _take_live(self, stage: _Stage, *, job: bool, express: bool = False) -> list[Pending]:
        """Pop pieces from ``stage`` (with its condition held), dropping those of answered requests.

        ``job``: take at most a job (``max_job_texts`` texts and ``max_job_units``) and mark the pieces as
        computing; otherwise take every live piece. ``express``: only pieces of one-piece requests.
        """
        taken: list[Pending] = []
        count, units = 0, 0.0
        while stage.has(express):
            head = stage.head(express)
            if head.abandoned:
                stage.pop(express)
                with self._lock:
                    self._uncount(head)
                continue
            full = count + len(head.texts) > self.max_job_texts or units + head.units > self.max_job_units
            if job and taken and full:
                break
            stage.pop(express)
            if job:
                with self._lock:
                    if head.abandoned:  # expired since the check above
                        self._uncount(head)
                        continue
                    head.request.started = True
                    self._uncount(head)
                    self._round = max(self._round, head.round)
            taken.append(head)
            count += len(head.texts)
            units += head.units
        return taken

    def _tokenize_step(self, express: bool = False) -> None:
        stage = self._tokenizer
        with stage.ready:
            if not stage.wait():
                return
            batch = self._take_live(stage, job=False)
        ready = self._tokenized(batch)
        if ready:
            self._inference.put_many(ready)

    def _tokenized(self, batch: list[Pending]) -> list[Pending]:
        """Tokenize ``batch``; the pieces that tokenized (the others' requests were failed)."""
        if not batch:
            return batch
        self._tokenize(batch)
        now = time.perf_counter()
        ready = []
        for pending in batch:
            pending.tokenized_at = now
            if pending.tokens is None:  # tokenization failed this piece's request (it was told)
                with self._lock:
                    self._uncount(pending)
            else:
                ready.append(pending)
        return ready

    def _infer_step(self, express: bool = False) -> None:
        stage = self._inference
        with stage.ready:
            if not stage.wait(express):
                return
            if self.max_wait_s > 0 and stage.texts(express) < self.max_job_texts:
                stage.ready.wait(self.max_wait_s)
            job = self._take_live(stage, job=True, express=express)
        started = time.perf_counter()
        if not self.pipelined:
            job = self._tokenized(job)
        if not job:
            return
        computing = time.perf_counter()
        try:
            results = self._infer(job)
        except JobAbandoned:  # every caller went away (their futures are done): nobody to tell
            log.info("inference job of %d pieces stopped: every caller went away", len(job))
            return
        except Exception as exc:  # fail every waiter of this job, with the cause
            with self._lock:
                self.stats.failed_jobs += 1
            log.exception("inference job of %d pieces failed", len(job))
            for pending in job:
                pending.fail(exc)
            return
        finished = time.perf_counter()
        units = sum(p.units for p in job)
        if 2 * sum(len(p.texts) for p in job) >= self.max_job_texts or 2 * units >= self.max_job_units:
            self.observe(units, finished - started)  # see THROUGHPUT_DECAY
        complete: list[Request] = []
        with self._lock:
            stats = self.stats
            stats.jobs += 1
            stats.compute_s += finished - computing
            stats.queue_wait_s += sum(computing - p.tokenized_at for p in job)
            for pending, result in zip(job, results, strict=True):
                request = pending.request
                request.parts[pending.index] = result
                request.remaining -= 1
                if request.remaining == 0 and not request.future.done():
                    complete.append(request)
                    stats.requests += 1
                    stats.texts += sum(len(p.texts) for p in request.pieces)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
        for request in complete:
            try:
                result = request.parts[0] if len(request.parts) == 1 else self._merge(request.parts)
            except Exception as exc:
                log.exception("joining the %d pieces of a request failed", len(request.parts))
                request.fail(exc)
                continue
            request.parts = []  # the pieces' results are no longer needed
            by_loop.setdefault(request.loop, []).append((request.future, result))
        for loop, pairs in by_loop.items():
            loop.call_soon_threadsafe(_set_results, pairs)

    def close(self) -> None:
        self._tokenizer.close()
        self._inference.close()
