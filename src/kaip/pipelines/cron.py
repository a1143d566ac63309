"""KFP's cron: six fields, seconds first (robfig/cron), plus `@every <duration>` and `@hourly`-style names.

`0 0 9 ? * 2-6` is 09:00:00 on weekdays. As in robfig/cron, when both day-of-month and day-of-week are
restricted a day matches if either does. All times are UTC. Pure: the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = {m: i + 1 for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                           "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_NAMED = {"@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
          "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *", "@hourly": "0 0 * * * *"}
_FIELDS = (("second", 0, 59, {}), ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
           ("month", 1, 12, _MONTHS), ("day of week", 0, 6, _DAYS))


class CronError(ValueError):
    pass


@dataclass(frozen=True)
class Cron:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    dom_star: bool
    dow_star: bool
    every: float = 0.0  # `@every`: a fixed interval instead of fields

    def day_matches(self, d: datetime) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow


def _value(text: str, lo: int, hi: int, names: dict[str, int], field: str) -> int:
    key = text.upper()
    if key in names:
        return names[key]
    try:
        value = int(text)
    except ValueError as err:
        raise CronError(f"{field}: {text!r} is not a number") from err
    if field == "day of week" and value == 7:
        value = 0
    if not lo <= value <= hi:
        raise CronError(f"{field}: {value} is outside {lo}-{hi}")
    return value


def _field(text: str, lo: int, hi: int, names: dict[str, int], field: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field}: invalid step {step_text!r}")
            step = int(step_text)
        if rng in ("*", "?"):
            start, end = lo, hi
        elif "-" in rng:
            a, _, b = rng.partition("-")
            start, end = _value(a, lo, hi, names, field), _value(b, lo, hi, names, field)
            if start > end:
                raise CronError(f"{field}: range {rng!r} runs backwards")
        else:
            start = _value(rng, lo, hi, names, field)
            end = hi if step_text else start
        out.update(range(start, end + 1, step))
    return frozenset(out)


def parse_cron(expression: str) -> Cron:
    text = expression.strip()
    if text.startswith("@every"):
        from kaip.pipelines.dag import parse_duration

        try:
            seconds = parse_duration(text.removeprefix("@every").strip())
        except ValueError as err:
            raise CronError(f"invalid @every interval in {expression!r}") from err
        if seconds < 1:
            raise CronError("@every needs an interval of at least 1s")
        empty: frozenset[int] = frozenset()
        return Cron(empty, empty, empty, empty, empty, empty, True, True, every=seconds)
    text = _NAMED.get(text, text)
    parts = text.split()
    if len(parts) != 6:
        raise CronError(f"cron {expression!r} has {len(parts)} fields; KFP uses 6 (second minute hour "
                        "day-of-month month day-of-week), e.g. '0 0 9 ? * 2-6'")
    sets = [_field(p, lo, hi, names, name) for p, (name, lo, hi, names) in zip(parts, _FIELDS, strict=True)]
    return Cron(*sets, dom_star=parts[3] in ("*", "?"), dow_star=parts[5] in ("*", "?"))


def next_after(cron: Cron, t: datetime, *, anchor: datetime | None = None) -> datetime | None:
    """The first fire time strictly after `t` (UTC), or None within the next five years."""
    if cron.every:
        base = anchor or t
        n = int((t - base).total_seconds() // cron.every) + 1
        return base + timedelta(seconds=n * cron.every)
    t = t.astimezone(UTC).replace(microsecond=0)
    day = t.replace(hour=0, minute=0, second=0)
    for _ in range(366 * 5):
        if day.month in cron.months and cron.day_matches(day):
            for h in sorted(cron.hours):
                for m in sorted(cron.minutes):
                    if day.replace(hour=h, minute=m, second=59) <= t:
                        continue
                    for s in sorted(cron.seconds):
                        candidate = day.replace(hour=h, minute=m, second=s)
                        if candidate > t:
                            return candidate
        day += timedelta(days=1)
    return None


def due_times(cron: Cron, last: datetime, now: datetime, *, catchup: bool = True, limit: int = 100,
              anchor: datetime | None = None) -> list[datetime]:
    """Fire times in (last, now]. Without catch-up only the latest missed one; at most `limit`."""
    out: list[datetime] = []
    t = last
    while True:
        nxt = next_after(cron, t, anchor=anchor)
        if nxt is None or nxt > now:
            break
        out.append(nxt)
        if len(out) > limit:
            out.pop(0)
        t = nxt
    return out if catchup else out[-1:]
