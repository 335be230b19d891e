"""``--report``: one self-contained HTML page of an ``analyze`` run, beside its events.

:class:`ReportSink` sees what the events file sees (the same batches, in the same order) and
the analysed frames with the faces in them.  Per track it keeps one thumbnail (the crop
around the largest box the track had, at most :data:`THUMB_PX` pixels a side) and the
results of every window; :meth:`ReportSink.finish` renders them as ``report.html``:

* a header with the source, its size, duration and frame rate, the analysis rate, the
  frames and windows analysed, the profile, the track count and the facestream version;
* per track: the thumbnail, the time span, age (median over the windows) and gender (the
  majority label), the expression mix, a timeline of the expression of every window (one
  lane per expression, media seconds on x, drawn here as inline SVG) and the fresh
  descriptions with their windows' times;
* the stream's error events, if any.

The page makes no request of its own: styles are inline, thumbnails are ``data:`` URIs
(JPEG) and there is no script.  Nothing is written before :meth:`ReportSink.finish`, which
replaces the file in one rename, so a run that fails leaves an earlier report as it was.
"""

from __future__ import annotations

import base64
import html
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from facestream import events
from facestream.llm.parsers import EXPRESSIONS
from facestream.sinks.annotate import Faces

THUMB_PX = 160          # longest side of a thumbnail, pixels
_MARGIN = 0.25          # context around the face box, a share of its longest side per side
_JPEG_QUALITY = 85

# One colour per expression, the same in every lane, bar and legend.
COLOURS = {"neutral": "#8b97a6", "happy": "#e9a800", "sad": "#3b7dd8", "surprise": "#9b5de5",
           "fear": "#12a4a0", "disgust": "#5c9c1a", "anger": "#e0464b"}
_UNNAMED = "unnamed"    # a window whose expression label is null (a facellava answer naming none)
_UNNAMED_COLOUR = "#c3c9d1"


@dataclass(frozen=True)
class RunInfo:
    """The run as the header shows it.  ``duration_s``: media seconds of the source when
    known (``None`` for live sources and photos); ``analysed_s``: media time of the last
    analysed frame."""

    source: str
    photo: bool
    width: int
    height: int
    codec: str
    duration_s: float | None
    analysed_s: float
    source_fps: float | None
    analysis_fps: float
    window_s: float
    frames: int
    windows: int
    events: int
    profile: str
    describe: bool
    version: str


@dataclass
class _Window:
    """One analysis event's results, as the page shows them (media seconds)."""

    start_s: float
    end_s: float
    label: str
    scores: dict[str, float]      # mean probability per expression
    gender: str | None
    age_years: float | None

    @property
    def score(self) -> float | None:
        """The probability of the label; None for an unnamed one."""
        return self.scores.get(self.label)


@dataclass
class _Track:
    """What the page shows of one track: its span, windows, fresh descriptions (start s,
    end s, trigger, text) and thumbnail."""

    track_id: str
    started_s: float | None = None
    ended_s: float | None = None
    windows: list[_Window] = field(default_factory=list)
    descriptions: list[tuple[float, float, str | None, str]] = field(default_factory=list)
    thumb: np.ndarray | None = None          # RGB crop, at most THUMB_PX a side
    thumb_area: float = 0.0                  # box area of the frame it came from, pixels^2


class ReportSink:
    """Collects a run's events and thumbnails; writes the page on :meth:`finish`.  Holds one
    small crop per track and a few numbers per window.  Blocking; not thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tracks: dict[str, _Track] = {}
        self._errors: list[tuple[float, str, bool]] = []      # (media s, message, fatal)

    def frame(self, image: np.ndarray, faces: Faces) -> None:
        """One analysed RGB frame and the tracked faces in it: a track's thumbnail is
        replaced when this frame shows its face larger than any frame before."""
        height, width = image.shape[:2]
        for track_id, box, _ in faces:
            x1, y1, x2, y2 = (float(v) for v in box)
            area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            track = self._track(track_id)
            if area <= track.thumb_area:
                continue
            side = max(x2 - x1, y2 - y1) * (1 + 2 * _MARGIN)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
            right, bottom = int(min(width, cx + side / 2)), int(min(height, cy + side / 2))
            if right - left < 2 or bottom - top < 2:
                continue
            crop = image[top:bottom, left:right]
            scale = min(1.0, THUMB_PX / max(crop.shape[:2]))
            size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
            track.thumb = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
            track.thumb_area = area

    def write(self, batch: Iterable[dict[str, Any]]) -> None:
        """Events as written to ``events.jsonl``: the windows' results, the fresh
        descriptions, the tracks' spans and the stream's errors are kept."""
        for event in batch:
            kind, data = event["type"], event["data"]
            if kind == events.FACE_ANALYSIS:
                self._analysis(data)
            elif kind == events.FACE_DESCRIPTION:
                window = data["window"]
                self._track(data["track_id"]).descriptions.append(
                    (window["start_s"], window["end_s"], data.get("description_trigger"),
                     data["description"]))
            elif kind == events.TRACK_STARTED:
                self._track(data["track_id"]).started_s = data["time_s"]
            elif kind == events.TRACK_ENDED:
                self._track(data["track_id"]).ended_s = data["time_s"]
            elif kind == events.STREAM_ERROR:
                self._errors.append((data["time_s"], data["message"], data["fatal"]))

    def finish(self, info: RunInfo) -> Path:
        """Writes the page to ``path`` (a temporary file renamed over it) and returns the
        path.  Raises OSError when it cannot be written; an earlier file is then untouched."""
        page = _render(info, [t for t in self._tracks.values() if t.windows or t.thumb is not None],
                      self._errors)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(page, encoding="utf-8")
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
        return self.path

    def _track(self, track_id: str) -> _Track:
        return self._tracks.setdefault(track_id, _Track(track_id))

    def _analysis(self, data: dict[str, Any]) -> None:
        track, window = self._track(data["track_id"]), data["window"]
        expression = data.get("expression") or {}
        label = expression.get("label")
        attributes = data.get("attributes") or {}
        track.windows.append(_Window(
            start_s=window["start_s"], end_s=window["end_s"], label=label or _UNNAMED,
            scores=dict(expression.get("scores") or {}),
            gender=(attributes.get("gender") or {}).get("label"),
            age_years=(attributes.get("age") or {}).get("years")))
        if data.get("description") and not data.get("description_reused"):
            track.descriptions.append((window["start_s"], window["end_s"],
                                       data.get("description_trigger"), data["description"]))


def _render(info: RunInfo, tracks: list[_Track], errors: list[tuple[float, str, bool]]) -> str:
    """The whole page as one string (tracks in the order of their ids' numbers)."""
    tracks = sorted(tracks, key=lambda t: (len(t.track_id), t.track_id))
    end_s = max([info.analysed_s] + [w.end_s for t in tracks for w in t.windows]
                + [t.ended_s or 0.0 for t in tracks])
    lanes = list(EXPRESSIONS) + ([_UNNAMED] if any(
        w.label == _UNNAMED for t in tracks for w in t.windows) else [])
    title = f"facestream report: {os.path.basename(info.source) or info.source}"
    body = [_header(info, len(tracks)), _errors(errors), _legend(lanes, photo=info.photo)]
    body += [_track_section(track, info, lanes, end_s) for track in tracks]
    if not tracks:
        body.append('<p class="empty">No face was found in this source.</p>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><style>{_CSS}</style></head>\n'
            f'<body><main>{"".join(body)}</main></body></html>\n')


def _header(info: RunInfo, track_count: int) -> str:
    if info.photo:
        timing = [("Kind", "photo")]
    else:
        duration = info.duration_s if info.duration_s is not None else info.analysed_s
        timing = [("Duration", f"{duration:.1f} s"),
                  ("Source rate", f"{info.source_fps:.2f} fps" if info.source_fps else "unknown"),
                  ("Analysis rate", f"{info.analysis_fps:g} fps, {info.window_s:g} s windows")]
    facts = [("Frame size", f"{info.width} × {info.height} {info.codec}"),
             *timing, ("Frames analysed", str(info.frames)), ("Windows", str(info.windows)),
             ("Events", str(info.events)), ("Profile", info.profile),
             ("Descriptions", "on" if info.describe else "off"), ("Tracks", str(track_count)),
             ("facestream", info.version)]
    cells = "".join(f'<div class="fact" data-fact="{_e(name.lower())}"><dt>{_e(name)}</dt>'
                    f'<dd>{_e(value)}</dd></div>' for name, value in facts)
    return (f'<header><h1>Face analysis report</h1><p class="source">{_e(info.source)}</p>'
            f'<dl class="facts">{cells}</dl></header>')


def _errors(errors: list[tuple[float, str, bool]]) -> str:
    if not errors:
        return ""
    items = "".join(f'<li><span class="time">{time_s:.1f} s</span> '
                    f'{"<b>fatal</b> " if fatal else ""}{_e(message)}</li>'
                    for time_s, message, fatal in errors)
    return f'<section class="errors"><h2>Stream errors</h2><ul>{items}</ul></section>'


def _legend(lanes: list[str], *, photo: bool) -> str:
    hint = ("bar length: the probability of each expression" if photo
            else "bar opacity: the probability of the window's label")
    keys = "".join(f'<span class="key"><i style="background:{_colour(label)}"></i>'
                   f'{_e(label)}</span>' for label in lanes)
    return (f'<div class="legend"><span class="legend-title">Expression</span>{keys}'
            f'<span class="hint">{hint}</span></div>')


def _track_section(track: _Track, info: RunInfo, lanes: list[str], end_s: float) -> str:
    windows = track.windows
    thumb = (f'<img class="thumb" alt="face of {_e(track.track_id)}" '
             f'src="data:image/jpeg;base64,{_jpeg_base64(track.thumb)}">'
             if track.thumb is not None else '<div class="thumb none">no image</div>')
    span = ""
    if track.started_s is not None:
        last = track.ended_s if track.ended_s is not None else track.started_s
        span = "in the photo" if info.photo else f"{track.started_s:.1f} – {last:.1f} s"
    labels = Counter(w.label for w in windows)
    dominant = labels.most_common(1)[0][0] if labels else None
    stats = [("Seen", f'<span class="span">{_e(span) or "–"}</span>'),
             ("Windows", str(len(windows))),
             ("Mostly", f'<span class="dominant" data-label="{_e(dominant or "")}">'
                        f'{_e(dominant or "–")}</span>'),
             ("Age", _age(windows)), ("Gender", _gender(windows))]
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in stats)
    if info.photo and len(windows) == 1:
        chart = _probabilities(windows[0], lanes)
    else:
        chart = _timeline(windows, lanes, end_s, started_s=track.started_s,
                          ended_s=track.ended_s)
    return (f'<section class="track" id="track-{_e(track.track_id)}" '
            f'data-track="{_e(track.track_id)}">'
            f'<div class="track-head">{thumb}<div class="track-facts">'
            f'<h2>Track {_e(track.track_id)}</h2><dl>{rows}</dl>{"" if info.photo else _mix(labels, len(windows))}'
            f'</div></div>{chart}'
            f'{_descriptions(track, info)}</section>')


def _age(windows: list[_Window]) -> str:
    years = [w.age_years for w in windows if w.age_years is not None]
    if not years:
        return '<span class="age">–</span>'
    median = statistics.median(years)
    low, high = f"{min(years):.0f}", f"{max(years):.0f}"
    spread = f" <small>(windows {low}–{high})</small>" if low != high else ""
    return f'<span class="age" data-years="{median:.2f}">{median:.0f} years</span>{spread}'


def _gender(windows: list[_Window]) -> str:
    labels = Counter(w.gender for w in windows if w.gender)
    if not labels:
        return '<span class="gender">–</span>'
    label, count = labels.most_common(1)[0]
    share = (f' <small>({count} of {sum(labels.values())} windows)</small>'
             if len(windows) > 1 else "")
    return f'<span class="gender" data-label="{_e(label)}">{_e(label)}</span>{share}'


def _mix(labels: Counter, total: int) -> str:
    """The share of windows per expression as one stacked bar."""
    if not total:
        return ""
    parts = "".join(f'<i style="width:{100 * n / total:.2f}%;background:{_colour(label)}" '
                    f'title="{_e(label)}: {n} of {total} windows"></i>'
                    for label, n in labels.most_common())
    return f'<div class="mix">{parts}</div>'


# Chart geometry, in SVG user units (the drawing scales to the page's width).
_W, _LEFT, _RIGHT, _LANE, _TOP, _AXIS = 960, 78, 16, 18, 6, 26
_PLOT_W = _W - _LEFT - _RIGHT


def _timeline(windows: list[_Window], lanes: list[str], end_s: float, *,
              started_s: float | None, ended_s: float | None) -> str:
    """Inline SVG: one lane per expression, one bar (``rect.window``) per window from its
    ``start_s`` to its ``end_s`` (at least a few units wide), on the run's common time axis;
    the bar's opacity follows the probability of its label."""
    domain = end_s if end_s > 0 else 1.0

    def x(t: float) -> float:
        return _LEFT + _PLOT_W * t / domain

    parts = []
    if started_s is not None:
        last = ended_s if ended_s is not None else started_s
        parts.append(f'<rect class="span" x="{x(started_s):.1f}" y="{_TOP}" '
                     f'width="{max(x(last) - x(started_s), 1):.1f}" '
                     f'height="{_LANE * len(lanes)}" fill="#dfe8f5" fill-opacity="0.45"/>')
    for w in windows:
        left, width = x(w.start_s), max(x(w.end_s) - x(w.start_s), 5.0)
        score = w.score
        opacity = 0.35 + 0.65 * score if score is not None else 0.7
        tip = f"{w.start_s:.1f}–{w.end_s:.1f} s: {w.label}" + (
            f" {score:.2f}" if score is not None else "")
        parts.append(_bar(w, lanes, x=min(left, _W - _RIGHT - width), width=width,
                          opacity=opacity, tip=tip))
    return _chart(lanes, domain, "s", parts, label="expression per window over time")


def _probabilities(window: _Window, lanes: list[str]) -> str:
    """A photo's one window as inline SVG: per expression lane a bar as long as its
    probability; the label's bar is the ``rect.window``."""
    parts = []
    for i, name in enumerate(lanes):
        p = window.scores.get(name)
        if p is None or name == window.label:
            continue
        parts.append(f'<rect class="score" x="{_LEFT}" y="{_TOP + i * _LANE + 3}" '
                     f'width="{max(_PLOT_W * p, 1):.1f}" height="{_LANE - 6}" rx="2" '
                     f'fill="{_colour(name)}" fill-opacity="0.35"><title>{_e(name)} {p:.2f}'
                     f'</title></rect>')
    score = window.score
    width = max(_PLOT_W * score, 5.0) if score is not None else 5.0
    tip = f"{window.label}" + (f" {score:.2f}" if score is not None else "")
    parts.append(_bar(window, lanes, x=_LEFT, width=width, opacity=1.0, tip=tip))
    return _chart(lanes, 1.0, "", parts, label="probability of each expression")


def _bar(window: _Window, lanes: list[str], *, x: float, width: float, opacity: float,
         tip: str) -> str:
    """One window's mark in the lane of its label."""
    y = _TOP + lanes.index(window.label) * _LANE + 3
    return (f'<rect class="window" data-start="{window.start_s}" data-end="{window.end_s}" '
            f'data-label="{_e(window.label)}" x="{x:.1f}" y="{y}" width="{width:.1f}" '
            f'height="{_LANE - 6}" rx="2" fill="{_colour(window.label)}" '
            f'fill-opacity="{opacity:.2f}"><title>{_e(tip)}</title></rect>')


def _chart(lanes: list[str], domain: float, unit: str, marks: list[str], *, label: str) -> str:
    """The frame both charts share: shaded lanes named on the left, an x axis from 0 to
    ``domain`` with round ticks, and ``marks`` (SVG elements) drawn over them."""
    bottom = _TOP + _LANE * len(lanes)
    parts = []
    for i, name in enumerate(lanes):
        y = _TOP + i * _LANE
        parts.append(f'<rect x="{_LEFT}" y="{y}" width="{_PLOT_W}" height="{_LANE}" '
                     f'fill="{"#f4f6f9" if i % 2 else "#fbfcfd"}"/>'
                     f'<text class="lane" x="{_LEFT - 8}" y="{y + _LANE / 2 + 4}" '
                     f'text-anchor="end">{_e(name)}</text>')
    for tick in _ticks(domain):
        x = _LEFT + _PLOT_W * tick / domain
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{bottom + 4}" '
                     f'stroke="#d5dae1" stroke-width="1"/>'
                     f'<text class="tick" x="{x:.1f}" y="{bottom + 17}" '
                     f'text-anchor="middle">{tick:g}{" " + unit if unit else ""}</text>')
    return (f'<svg class="timeline" viewBox="0 0 {_W} {bottom + _AXIS}" role="img" '
            f'aria-label="{_e(label)}" xmlns="http://www.w3.org/2000/svg">'
            f'{"".join(parts + marks)}</svg>')


def _ticks(domain: float) -> list[float]:
    """Round tick positions from 0 to ``domain``, five to ten of them."""
    raw = domain / 8
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [round(i * step, 6) for i in range(int(domain / step + 1e-9) + 1)]


def _descriptions(track: _Track, info: RunInfo) -> str:
    if not track.descriptions:
        note = ("No description was written for this track." if info.describe
                else "Descriptions were off for this run.")
        return f'<p class="no-descriptions">{note}</p>'
    items = []
    for start_s, end_s, trigger, text in sorted(track.descriptions, key=lambda d: d[0]):
        why = f'<span class="trigger">{_e(trigger)}</span>' if trigger else ""
        items.append(f'<li class="description" data-start="{start_s}"><span class="time">'
                     f'{start_s:.1f}–{end_s:.1f} s</span><span class="text">{_e(text)}</span>'
                     f'{why}</li>')
    return f'<h3>Descriptions</h3><ol class="descriptions">{"".join(items)}</ol>'


def _jpeg_base64(rgb: np.ndarray) -> str:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise OSError("cannot encode a thumbnail as JPEG")
    return base64.b64encode(data.tobytes()).decode("ascii")


def _colour(label: str) -> str:
    return COLOURS.get(label, _UNNAMED_COLOUR)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
:root{--ink:#1d2733;--muted:#5d6b7a;--line:#e2e6eb;--card:#fff;--bg:#f3f5f8;--accent:#2f5d9e}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1040px;margin:0 auto;padding:28px 24px 48px}
header{background:#1f2d3d;color:#fff;border-radius:10px;padding:20px 24px 16px;margin-bottom:18px}
h1{margin:0;font-size:20px;font-weight:600;letter-spacing:.2px}
.source{margin:4px 0 14px;color:#b8c4d2;font-family:ui-monospace,Menlo,Consolas,monospace;
 font-size:13px;word-break:break-all}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:10px 18px;margin:0}
.fact dt{font-size:11px;text-transform:uppercase;letter-spacing:.6px;color:#93a3b5}
.fact dd{margin:1px 0 0;font-size:14px;word-break:break-word}
.legend{display:flex;flex-wrap:wrap;align-items:center;gap:6px 16px;margin:0 2px 14px;
 color:var(--muted);font-size:13px}
.legend-title{font-weight:600;color:var(--ink)}
.key i{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:5px;
 vertical-align:-1px}
.hint{margin-left:auto;font-size:12px}
.track{background:var(--card);border:1px solid var(--line);border-radius:10px;
 padding:18px 20px;margin-bottom:16px;box-shadow:0 1px 2px rgba(20,30,45,.04)}
.track-head{display:flex;gap:20px;align-items:flex-start;margin-bottom:12px}
.thumb{width:112px;height:112px;object-fit:cover;border-radius:8px;border:1px solid var(--line);
 flex:none;background:#e9edf2}
.thumb.none{display:flex;align-items:center;justify-content:center;color:var(--muted);font-size:12px}
.track-facts{flex:1;min-width:0}
h2{margin:0 0 8px;font-size:17px;font-weight:600}
.track dl{display:grid;grid-template-columns:repeat(5,auto);gap:2px 22px;margin:0;
 justify-content:start}
.track dt{grid-row:1;font-size:11px;text-transform:uppercase;letter-spacing:.6px;color:var(--muted)}
.track dd{grid-row:2;margin:0;font-size:15px}
.track dd small{color:var(--muted);font-size:12px}
.mix{display:flex;height:8px;border-radius:4px;overflow:hidden;margin-top:12px;max-width:420px;
 background:var(--line)}
.mix i{display:block;height:100%}
.timeline{width:100%;height:auto;display:block}
.timeline text{font-size:11px;fill:#5d6b7a}
.timeline .lane{font-size:11.5px;fill:#3b4756}
h3{font-size:13px;text-transform:uppercase;letter-spacing:.6px;color:var(--muted);
 margin:14px 0 6px;font-weight:600}
.descriptions{list-style:none;margin:0;padding:0}
.description{display:flex;gap:14px;padding:6px 0;border-top:1px solid var(--line);align-items:baseline}
.description .time{flex:none;width:92px;color:var(--muted);font-variant-numeric:tabular-nums;
 font-size:13px}
.description .text{flex:1}
.trigger{flex:none;font-size:11px;color:var(--accent);background:#eaf0f8;border-radius:10px;
 padding:1px 8px}
.no-descriptions,.empty{color:var(--muted);margin:10px 0 0;font-size:13px}
.errors{background:#fff7f2;border:1px solid #f3d3bf;border-radius:10px;padding:12px 18px;
 margin-bottom:16px}
.errors h2{font-size:14px;color:#a4461b}
.errors ul{margin:0;padding-left:18px}
.time{font-variant-numeric:tabular-nums}
"""
