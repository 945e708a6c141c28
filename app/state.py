"""Per-user state of the dashboard (held in `gr.State`, one per browser session) and its run log.

Nothing here is shared between users: the stop flags, the latest runs (for downloads, the round
inspector and the How-it-works screen) and the log of greedy runs that serves as the evidence of
output equality all live in one `UserState` per session.
What it is not: the session or anything shared between users (`context.py` holds that).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

from easyspec.core.engine.records import RoundRecord

MAX_LOG = 50
MAX_RUNS = 12  # finished runs kept per user (their records hold every span)


@dataclass(frozen=True)
class RunSummary:
    """What the equality evidence needs from one finished run."""

    source: str  # "generate" | "compare" | "pilot"
    prompt_key: str  # hash of the prompt token ids
    prompt_preview: str
    label: str
    mode: str
    greedy: bool
    token_ids: tuple[int, ...]
    complete: bool  # False when stopped early
    prompt_ids: tuple[int, ...] = ()  # for the greedy check of a difference (How it works)


@dataclass
class LastRun:
    """A finished run kept for downloads and inspection."""

    label: str
    mode: str
    records: list[RoundRecord]
    prompt_ids: tuple[int, ...]
    settings: dict
    files: dict[str, str] = field(default_factory=dict)  # kind -> path


def prompt_key(prompt_ids) -> str:
    return hashlib.sha1(",".join(map(str, prompt_ids)).encode()).hexdigest()[:12]


class UserState:
    """Create one per session (pass the class itself to gr.State so that Gradio calls it per session)."""

    def __init__(self) -> None:
        self.stops: dict[str, threading.Event] = {}
        self.armed: set[str] = set()  # screens whose Run was clicked and whose handler has not begun yet
        self.log: list[RunSummary] = []
        self.last: dict[str, LastRun] = {}  # screen -> latest run ("generate", "compare:1", ...)
        self.pilot_runs: dict[str, LastRun] = {}  # the latest pilot's runs, by label
        self.runs: list[LastRun] = []  # finished runs of every screen, oldest first
        self.pilot_report: tuple | None = None  # (runs, grid, ReportContext) of the latest finished pilot

    def __deepcopy__(self, memo) -> "UserState":
        # Gradio deep-copies a state's initial value; this object is already a fresh one per session
        # (its factory is called per session), and it holds thread events that cannot be copied.
        return self

    def arm(self, screen: str) -> None:
        """A stop flag for the run just clicked on `screen`, set up before the run waits in the device
        queue: a Stop pressed while it waits behind another user's run then cancels it before it starts."""
        self.stops[screen] = threading.Event()
        self.armed.add(screen)

    def begin(self, screen: str) -> threading.Event:
        """The stop flag of a run on `screen` that starts now: the one armed by its click (perhaps set
        already), else a fresh one (API calls, which no click arms)."""
        if screen in self.armed:
            self.armed.discard(screen)
            return self.stops[screen]
        event = threading.Event()
        self.stops[screen] = event
        return event

    def request_stop(self, screen: str) -> bool:
        event = self.stops.get(screen)
        if event is None or event.is_set():
            return False
        event.set()
        return True

    def remember(self, summary: RunSummary) -> None:
        self.log.append(summary)
        del self.log[:-MAX_LOG]

    def keep(self, screen: str, run: LastRun) -> None:
        self.last[screen] = run
        self.runs.append(run)
        del self.runs[:-MAX_RUNS]
