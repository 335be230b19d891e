"""``facestream eval``: the paper's metrics over a labelled folder, from facestream's events.

A dataset is a folder and a CSV (default ``DATASET_DIR/labels.csv``) with a ``file`` column
(a path relative to the folder: an image or a video) and the task's ground truth:

* expression — ``label``: one of the seven expressions or a synonym ("happiness", "angry");
  6-class sets (CREMA-D) are fine;
* action_units — ``AU1`` ... ``AUn`` columns of 0/1 (blank = not labelled);
* age — ``age`` in years;
* attributes — ``gender`` (female/male) and/or CelebA attribute columns (1/-1 or 1/0);
* deepfake — ``label``: real/fake (or 0/1, 1 = fake).

Each file runs through the embedded pipeline (:func:`facestream.workers.embedded.analyze`,
models loaded once), so any profile works: eval only reads events.  The events of the
file's dominant track (most analysis windows; ties: the larger mean box) are aggregated into
one prediction: expression = the most frequent window label (ties: higher mean score);
age = mean years; action units = mean intensity, active iff >= ``au_threshold``
(:data:`AU_ACTIVE_THRESHOLD`, DISFA's usual "intensity >= 2 is an occurrence"); gender and
CelebA attributes = majority; deepfake = mean score >= 0.5.  CelebA attributes are read from
``data.attributes.celeba.<CelebA name>`` (true/false/null) and ``Male`` from the gender.

Misses are counted, never dropped: a file with no face ("no face") or whose dominant track
carries null for the field ("no prediction") is a wrong answer for the classification
metrics (it lowers WAR, UAR, F1 recall, accuracy) and is left out of the age MAE (which says
over how many files it was computed).  Columns the profile cannot produce are listed and
skipped; when none is left the run stops before analysing anything.

Metrics are pure functions below (UAR = mean recall over the classes present in the ground
truth; WAR = overall accuracy; F1 per AU, undefined (None) for an AU with no positive in
truth or prediction, left out of the mean).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from facestream import events
from facestream.config import Settings
from facestream.encoder.action_units import GEOMETRIC_AUS
from facestream.errors import ConfigError, InputError
from facestream.llm.parsers import (ACTION_UNITS, CELEBA_ATTRIBUTES, EXPRESSIONS,
                                    normalize_expression)
from facestream.vocabulary import PROFILES, TASKS

AU_ACTIVE_THRESHOLD = 2.0
NO_PREDICTION = "none"            # the confusion matrix's column for misses

# What each profile's events carry (column names as in a labels CSV).
PRODUCES: dict[str, frozenset[str]] = {
    "compact": frozenset({"expression", "age", "gender", "Male", *GEOMETRIC_AUS}),
    "facellava": frozenset({"expression", "age", "gender", "deepfake", *CELEBA_ATTRIBUTES,
                            *ACTION_UNITS}),
}

# Face-LLaVA's zero-shot results (the paper, arXiv:2504.07198), by normalised dataset name.
PAPER: dict[str, tuple[str, dict[str, float]]] = {
    "dfew": ("expression", {"UAR": 0.469, "WAR": 0.564}),
    "cremad": ("expression", {"UAR": 0.582, "WAR": 0.681}),
    "rafdb": ("expression", {"WAR": 0.780}),
    "morphii": ("age", {"MAE": 3.34}),
    "utkface": ("age", {"MAE": 4.89}),
    "celeba": ("attributes", {"mean accuracy": 0.868}),
    "faceforensics": ("deepfake", {"accuracy": 0.845}),
}
_PAPER_ALIASES = {"morph": "morphii", "morph2": "morphii", "ff": "faceforensics",
                  "ffpp": "faceforensics"}

# ---------------------------------------------------------------------------- metrics


def confusion_matrix(truth: Sequence[str], predicted: Sequence[str | None],
                     labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """``matrix[true][predicted]`` counts over ``labels`` + :data:`NO_PREDICTION` (None)."""
    columns = [*labels, NO_PREDICTION]
    matrix = {t: dict.fromkeys(columns, 0) for t in labels}
    for t, p in zip(truth, predicted, strict=True):
        matrix[t][NO_PREDICTION if p is None else p] += 1
    return matrix


def class_recalls(truth: Sequence[str], predicted: Sequence[str | None]) -> dict[str, float]:
    """Recall of every class present in ``truth``."""
    totals = Counter(truth)
    hits = Counter(t for t, p in zip(truth, predicted, strict=True) if t == p)
    return {label: hits[label] / totals[label] for label in totals}


def uar(truth: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Unweighted average recall: the mean of the per-class recalls."""
    recalls = class_recalls(truth, predicted)
    return sum(recalls.values()) / len(recalls) if recalls else 0.0


def accuracy(truth: Sequence[Any], predicted: Sequence[Any]) -> float:
    """Share of equal pairs (WAR for expressions); a None prediction is wrong."""
    pairs = list(zip(truth, predicted, strict=True))
    return sum(t == p for t, p in pairs) / len(pairs) if pairs else 0.0


def f1_score(truth: Sequence[bool], predicted: Sequence[bool]) -> float | None:
    """F1 of the positive class; None when neither truth nor prediction has a positive."""
    tp = sum(t and p for t, p in zip(truth, predicted, strict=True))
    fp = sum(p and not t for t, p in zip(truth, predicted))
    fn = sum(t and not p for t, p in zip(truth, predicted))
    return None if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def mean_absolute_error(truth: Sequence[float], predicted: Sequence[float]) -> float:
    pairs = list(zip(truth, predicted, strict=True))
    if not pairs:
        raise ValueError("mean_absolute_error of no pairs")
    return sum(abs(t - p) for t, p in pairs) / len(pairs)


# ---------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelledFile:
    """One CSV row: ``truth`` is a label (expression), years (age), a bool (deepfake, True =
    fake) or a column -> value dict (action units: bool|None; attributes: str|bool|None)."""

    name: str
    path: Path
    truth: Any


_TRUE, _FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "-1", "-1.0", "false", "no"}
_FAKE = {"fake": True, "1": True, "deepfake": True, "manipulated": True,
         "real": False, "0": False, "original": False, "genuine": False, "authentic": False}
_GENDER = {"female": "female", "f": "female", "woman": "female",
           "male": "male", "m": "male", "man": "male"}
_AU_COLUMN = re.compile(r"au0*(\d{1,2})", re.IGNORECASE)
_CELEBA_BY_LOWER = {name.lower(): name for name in CELEBA_ATTRIBUTES}


def _binary(value: str, where: str) -> bool | None:
    text = value.strip().lower()
    if not text:
        return None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise InputError(f"{where}: value {value!r}: expected 1 or 0/-1 (blank = not labelled)")


def _columns(task: str, header: list[str], where: str) -> tuple[dict[str, str], list[str]]:
    """(target name -> CSV column, columns not evaluated) for ``task``."""
    targets: dict[str, str] = {}
    for column in header:
        key = column.strip()
        if task in ("expression", "deepfake") and key == "label":
            targets[task] = column
        elif task == "age" and key == "age":
            targets["age"] = column
        elif task == "action_units" and (m := _AU_COLUMN.fullmatch(key)):
            targets[f"AU{int(m.group(1))}"] = column
        elif task == "attributes" and key.lower() == "gender":
            targets["gender"] = column
        elif task == "attributes" and key.lower() in _CELEBA_BY_LOWER:
            targets[_CELEBA_BY_LOWER[key.lower()]] = column
    if not targets:
        wanted = {"expression": "a 'label' column", "deepfake": "a 'label' column (real/fake)",
                  "age": "an 'age' column", "action_units": "AU1..AUn columns",
                  "attributes": "a 'gender' column or CelebA attribute columns"}[task]
        raise InputError(f"{where}: no column for the {task} task (columns: "
                         f"{', '.join(header)}); expected {wanted}")
    ignored = [c for c in header if c != "file" and c not in targets.values()]
    return targets, ignored


def _truth(task: str, row: dict[str, str], targets: dict[str, str], where: str) -> Any:
    if task == "expression":
        raw = row[targets["expression"]] or ""
        label = normalize_expression(raw)
        if label is None:
            raise InputError(f"{where}: label {raw!r} is not one of {', '.join(EXPRESSIONS)} "
                             "(or a synonym such as happiness, angry)")
        return label
    if task == "deepfake":
        raw = (row[targets["deepfake"]] or "").strip().lower()
        if raw not in _FAKE:
            raise InputError(f"{where}: label {raw!r}: expected real or fake (or 0/1)")
        return _FAKE[raw]
    if task == "age":
        raw = row[targets["age"]] or ""
        try:
            years = float(raw)
        except ValueError:
            raise InputError(f"{where}: age {raw!r}: expected a number of years") from None
        if not 0 <= years <= 120:
            raise InputError(f"{where}: age {years}: expected 0 to 120 years")
        return years
    out: dict[str, Any] = {}
    for name, column in targets.items():
        raw = row[column] or ""
        if name == "gender":
            text = raw.strip().lower()
            if text and text not in _GENDER:
                raise InputError(f"{where}: gender {raw!r}: expected female or male")
            out[name] = _GENDER.get(text)
        else:
            out[name] = _binary(raw, f"{where}, column {column}")
    return out


def read_labels(dataset_dir: Path, task: str, *, labels: Path | None = None,
                limit: int | None = None) -> tuple[list[LabelledFile], list[str]]:
    """The first ``limit`` rows of the labels CSV, checked; (files, columns not evaluated).

    Raises InputError (one line: file, row, what was expected) for a missing file or column,
    an unknown label or an unreadable value.
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise InputError(f"dataset {dataset_dir}: not a folder")
    path = Path(labels) if labels is not None else dataset_dir / "labels.csv"
    if not path.is_file():
        raise InputError(f"labels {path}: no such file; pass --labels FILE or put labels.csv "
                         "in the dataset folder")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        if "file" not in header:
            raise InputError(f"labels {path}: no 'file' column (columns: {', '.join(header)}); "
                             "expected file plus the task's label columns")
        targets, ignored = _columns(task, header, f"labels {path}")
        files = []
        for i, row in enumerate(reader):
            if limit is not None and i >= limit:
                break
            where = f"labels {path} row {i + 2}"
            name = (row["file"] or "").strip()
            media = dataset_dir / name
            if not name or not media.is_file():
                raise InputError(f"{where}: file {name!r} not found in {dataset_dir}; paths are "
                                 "relative to the dataset folder")
            files.append(LabelledFile(name, media, _truth(task, row, targets, where)))
    if not files:
        raise InputError(f"labels {path}: no rows")
    return files, ignored


# ---------------------------------------------------------------------------- predictions


def dominant_track(analysis: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """(track id, its events' data) of the track with most windows; ties: larger mean box."""
    by_track: dict[str, list[dict[str, Any]]] = {}
    for data in analysis:
        by_track.setdefault(data["track_id"], []).append(data)
    if not by_track:
        return None, []

    def area(d: dict[str, Any]) -> float:
        x1, y1, x2, y2 = d["bbox"]
        return (x2 - x1) * (y2 - y1)

    best = max(by_track, key=lambda t: (len(by_track[t]),
                                        sum(map(area, by_track[t])) / len(by_track[t])))
    return best, by_track[best]


def _majority(values: list[Any], weight: Callable[[Any], float] | None = None) -> Any:
    values = [v for v in values if v is not None]
    if not values:
        return None
    counts = Counter(values)
    top = max(counts.values())
    tied = [v for v in counts if counts[v] == top]
    if len(tied) == 1 or weight is None:
        return tied[0]
    return max(tied, key=weight)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def aggregate(task: str, windows: list[dict[str, Any]], targets: Sequence[str]) -> Any:
    """One prediction from the dominant track's event data (rules: module docstring).

    expression: label | None; age: years | None; deepfake: mean score | None; action units:
    AU -> mean intensity | None; attributes: column -> "female"/"male" or bool | None.
    """
    if task == "expression":
        exprs = [w["expression"] for w in windows if w.get("expression")]

        def mean_score(label: str) -> float:
            return _mean([(e.get("scores") or {}).get(label) for e in exprs]) or 0.0
        return _majority([e["label"] for e in exprs], mean_score)
    if task == "age":
        return _mean([((w.get("attributes") or {}).get("age") or {}).get("years")
                      for w in windows])
    if task == "deepfake":
        return _mean([(w.get("deepfake") or {}).get("score") for w in windows])
    if task == "action_units":
        return {au: _mean([(w.get("action_units") or {}).get(au) for w in windows])
                for au in targets}
    genders = [((w.get("attributes") or {}).get("gender") or {}).get("label") for w in windows]
    gender = _majority(genders)
    out: dict[str, Any] = {}
    for name in targets:
        if name == "gender":
            out[name] = gender
        elif name == "Male":
            out[name] = None if gender is None else gender == "male"
        else:
            out[name] = _majority([((w.get("attributes") or {}).get("celeba") or {}).get(name)
                                   for w in windows])
    return out


# ---------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class FileResult:
    """``status``: "ok", "no face" or "no prediction" (a face, but null for the field)."""

    name: str
    truth: Any
    prediction: Any
    status: str
    track_id: str | None
    windows: int


@dataclass
class EvalResult:
    task: str
    profile: str
    dataset_dir: Path
    dataset: str | None
    files: list[FileResult]
    metrics: dict[str, Any]
    evaluated: list[str]                   # target columns scored
    skipped: list[str]                     # target columns the profile cannot produce
    ignored: list[str]                     # CSV columns that are not targets of the task
    settings: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        statuses = Counter(f.status for f in self.files)
        return {"files": len(self.files), "ok": statuses["ok"], "no_face": statuses["no face"],
                "no_prediction": statuses["no prediction"]}


def settings_for(profile: str, task: str, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings for an eval run of ``profile`` on ``task``: no compact descriptions; the
    facellava profile asks exactly the task's question (settings and FACESTREAM_* variables
    still give its checkpoint and towers)."""
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r}: expected one of {', '.join(PROFILES)}")
    values = {"describe": False, "profile": profile, **(overrides or {})}
    if profile == "facellava":
        values.setdefault("facellava_tasks", task)
    return Settings.load(values)


def _check_capability(task: str, profile: str, targets: list[str]) -> tuple[list[str], list[str]]:
    produced = PRODUCES[profile]
    evaluated = [t for t in targets if t in produced]
    if not evaluated:
        others = [p for p, fields in PRODUCES.items() if set(targets) & fields and p != profile]
        hint = f"use --profile {others[0]}" if others else "no profile produces them"
        raise ConfigError(f"profile {profile} does not produce {', '.join(targets)} for the "
                          f"{task} task (its events carry null there); {hint}")
    return evaluated, [t for t in targets if t not in produced]


def run_eval(dataset_dir: Path, *, task: str, labels: Path | None = None,
             profile: str = "compact", limit: int | None = None, dataset: str | None = None,
             settings: Settings | None = None, models=None,
             au_threshold: float = AU_ACTIVE_THRESHOLD,
             progress: Callable[[int, int, str], None] | None = None) -> EvalResult:
    """Analyse every labelled file and score the predictions.  Blocking; loads the models
    once (or uses ``models``); each file's events go to a temporary folder."""
    from facestream.ingest.sources import parse_source
    from facestream.workers.compose import Models
    from facestream.workers.embedded import analyze

    files, ignored = read_labels(dataset_dir, task, labels=labels, limit=limit)
    targets = _targets(task, files)
    evaluated, skipped = _check_capability(task, profile, targets)
    settings = settings or settings_for(profile, task)
    models = models or Models.load(settings)
    results = []
    with tempfile.TemporaryDirectory(prefix="facestream-eval-") as tmp:
        for i, item in enumerate(files):
            if progress is not None:
                progress(i, len(files), item.name)
            spec = parse_source(str(item.path))
            summary = analyze(spec, settings, out_dir=Path(tmp) / str(i), models=models,
                              stream_id=spec.name)
            analysis = []
            for line in summary.events_path.read_text().splitlines():
                event = json.loads(line)
                if event["type"] == events.FACE_ANALYSIS:
                    analysis.append(event["data"])
            produced_by = {d["model"]["profile"] for d in analysis}
            if produced_by - {profile}:
                raise ConfigError(f"asked for profile {profile} but the pipeline wrote "
                                  f"{', '.join(sorted(produced_by))} events")
            track, windows = dominant_track(analysis)
            prediction = aggregate(task, windows, evaluated) if windows else None
            empty = prediction is None or (isinstance(prediction, dict)
                                           and all(v is None for v in prediction.values()))
            status = "no face" if not windows else "no prediction" if empty else "ok"
            results.append(FileResult(item.name, item.truth, prediction, status, track,
                                      len(windows)))
    metrics = score(task, results, evaluated, au_threshold=au_threshold)
    kept = ("fps", "window_s", "min_detection_confidence", "min_face_px", "max_faces",
            "encoder_backend", "describe")
    return EvalResult(task, profile, Path(dataset_dir), dataset, results, metrics, evaluated,
                      skipped, ignored,
                      {**{k: getattr(settings, k) for k in kept}, "au_threshold": au_threshold})


def _targets(task: str, files: list[LabelledFile]) -> list[str]:
    if task in ("action_units", "attributes"):
        return list(files[0].truth)
    return [task]


def score(task: str, results: list[FileResult], evaluated: Sequence[str], *,
          au_threshold: float = AU_ACTIVE_THRESHOLD) -> dict[str, Any]:
    """The task's metrics over ``results`` (misses count as wrong; MAE leaves them out)."""
    if task == "expression":
        truth = [r.truth for r in results]
        predicted = [r.prediction for r in results]
        labels = [label for label in EXPRESSIONS
                  if label in truth or label in predicted]
        return {"WAR": accuracy(truth, predicted), "UAR": uar(truth, predicted),
                "recall": class_recalls(truth, predicted),
                "support": dict(Counter(truth)),
                "confusion": confusion_matrix(truth, predicted, labels)}
    if task == "age":
        pairs = [(r.truth, r.prediction) for r in results if r.prediction is not None]
        return {"MAE": mean_absolute_error(*zip(*pairs)) if pairs else None,
                "MAE_files": len(pairs)}
    if task == "deepfake":
        predicted = [None if r.prediction is None else r.prediction >= 0.5 for r in results]
        return {"accuracy": accuracy([r.truth for r in results], predicted)}
    if task == "action_units":
        f1s: dict[str, float | None] = {}
        for au in evaluated:
            rows = [r for r in results if r.truth[au] is not None]
            f1s[au] = f1_score([r.truth[au] for r in rows],
                               [_active(r.prediction, au, au_threshold) for r in rows])
        defined = [v for v in f1s.values() if v is not None]
        return {"mean F1": sum(defined) / len(defined) if defined else None, "F1": f1s}
    per_column = {}
    for name in evaluated:
        rows = [r for r in results if r.truth[name] is not None]
        per_column[name] = accuracy([r.truth[name] for r in rows],
                                    [(r.prediction or {}).get(name) for r in rows])
    return {"mean accuracy": sum(per_column.values()) / len(per_column),
            "accuracy": per_column}


def _active(prediction: dict[str, float | None] | None, au: str, threshold: float) -> bool:
    value = None if prediction is None else prediction.get(au)
    return value is not None and value >= threshold


# ---------------------------------------------------------------------------- output


def paper_figures(dataset: str | None, task: str) -> dict[str, float]:
    """Face-LLaVA's published numbers for ``dataset`` when they concern ``task``."""
    if not dataset:
        return {}
    key = re.sub(r"[^a-z0-9]", "", dataset.lower())
    key = _PAPER_ALIASES.get(key, key)
    paper_task, figures = PAPER.get(key, ("", {}))
    return figures if paper_task == task else {}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report_lines(result: EvalResult) -> list[str]:
    """The printed table: a header, one line per metric, then per-class / per-column rows."""
    c = result.counts()
    lines = [f"{result.task} on {result.dataset_dir} (profile {result.profile}): {c['files']} "
             f"files, {c['ok']} predicted, {c['no_face']} no face, "
             f"{c['no_prediction']} no prediction"]
    if result.skipped:
        lines.append(f"not produced by profile {result.profile}, skipped: "
                     f"{', '.join(result.skipped)}")
    if result.ignored:
        lines.append(f"columns not evaluated: {', '.join(result.ignored)}")
    paper = paper_figures(result.dataset, result.task)
    m = result.metrics

    def row(name: str, value: float | None, note: str = "") -> str:
        line = f"  {name:<24}{_fmt(value):>7}"
        if name in paper:
            line += f"   paper (Face-LLaVA, {result.dataset}): {paper[name]:.3f}"
        return line + (f"   {note}" if note else "")

    if result.task == "expression":
        lines += [row("WAR", m["WAR"]), row("UAR", m["UAR"])]
        lines += [row(f"recall {label}", m["recall"][label], f"({m['support'][label]} files)")
                  for label in EXPRESSIONS if label in m["recall"]]
        columns = list(next(iter(m["confusion"].values())))
        lines.append("  confusion (rows: truth, columns: predicted)")
        lines.append("  " + " " * 10 + "".join(f"{col:>9}" for col in columns))
        lines += ["  " + f"{t:<10}" + "".join(f"{n:>9}" for n in counts.values())
                  for t, counts in m["confusion"].items() if t in m["support"]]
    elif result.task == "age":
        lines.append(row("MAE", m["MAE"], f"(years, over {m['MAE_files']} files)"))
    elif result.task == "deepfake":
        lines.append(row("accuracy", m["accuracy"]))
    elif result.task == "action_units":
        lines.append(row("mean F1", m["mean F1"],
                         f"(active: mean intensity >= {result.settings['au_threshold']:g})"))
        lines += [row(f"F1 {au}", v) for au, v in m["F1"].items()]
    else:
        lines.append(row("mean accuracy", m["mean accuracy"]))
        lines += [row(f"accuracy {name}", v) for name, v in m["accuracy"].items()]
    return lines


def write_json(result: EvalResult, path: Path) -> Path:
    """Metrics, counts, profile, settings and per-file predictions as JSON at ``path``."""
    payload = {
        "task": result.task, "profile": result.profile,
        "dataset_dir": str(result.dataset_dir), "dataset": result.dataset,
        "paper": paper_figures(result.dataset, result.task) or None,
        "counts": result.counts(), "metrics": result.metrics,
        "evaluated": result.evaluated, "skipped": result.skipped, "ignored": result.ignored,
        "settings": result.settings,
        "files": [dataclasses.asdict(f) for f in result.files],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
