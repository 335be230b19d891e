"""`facestream eval`: metrics on hand-checked cases, label files, and a real run on photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facestream import evaluation as ev
from facestream.errors import ConfigError, InputError
from tests.helpers import analyze_in_process, run_cli

# ---------------------------------------------------------------------------- metrics

# truth:     happy happy happy sad  sad   anger
# predicted: happy happy sad   sad  None  anger
# recalls by hand: happy 2/3, sad 1/2, anger 1/1 -> UAR = (2/3 + 1/2 + 1) / 3 = 13/18
# WAR = 4 correct of 6 = 2/3
TRUTH = ["happy", "happy", "happy", "sad", "sad", "anger"]
PREDICTED = ["happy", "happy", "sad", "sad", None, "anger"]


def test_uar_war_and_confusion_of_a_hand_checked_case():
    assert ev.uar(TRUTH, PREDICTED) == pytest.approx(13 / 18)
    assert ev.accuracy(TRUTH, PREDICTED) == pytest.approx(2 / 3)
    assert ev.class_recalls(TRUTH, PREDICTED) == pytest.approx(
        {"happy": 2 / 3, "sad": 0.5, "anger": 1.0})
    matrix = ev.confusion_matrix(TRUTH, PREDICTED, ["happy", "sad", "anger"])
    assert matrix == {"happy": {"happy": 2, "sad": 1, "anger": 0, "none": 0},
                      "sad": {"happy": 0, "sad": 1, "anger": 0, "none": 1},
                      "anger": {"happy": 0, "sad": 0, "anger": 1, "none": 0}}


def test_uar_ignores_classes_absent_from_the_truth():
    # a 6-class set (no surprise in the truth); a surprise prediction is simply wrong
    truth, predicted = ["sad", "fear"], ["surprise", "fear"]
    assert ev.uar(truth, predicted) == pytest.approx((0 + 1) / 2)


@pytest.mark.parametrize("truth, predicted, expected", [
    ([1, 1, 0, 0, 1], [1, 0, 1, 0, 1], 4 / 6),       # tp 2, fp 1, fn 1: 2*2 / (4 + 1 + 1)
    ([1, 1], [1, 1], 1.0),
    ([1, 0], [0, 1], 0.0),                           # tp 0, fp 1, fn 1
    ([0, 0], [0, 0], None),                          # no positive anywhere: undefined
])
def test_f1(truth, predicted, expected):
    got = ev.f1_score([bool(t) for t in truth], [bool(p) for p in predicted])
    assert got == (None if expected is None else pytest.approx(expected))


def test_mean_absolute_error():
    assert ev.mean_absolute_error([30, 40, 50], [33, 38, 50]) == pytest.approx(5 / 3)


def window(track: str, *, label=None, scores=None, years=None, aus=None, gender=None,
           fake=None, box=(0, 0, 10, 10), **attributes):
    return {"track_id": track, "bbox": list(box),
            "expression": {"label": label, "scores": scores},
            "attributes": {"gender": {"label": gender, "score": 0.9}, "age": {"years": years},
                           "celeba": attributes},
            "action_units": aus, "deepfake": None if fake is None else {"score": fake}}


def test_dominant_track_has_most_windows_then_the_larger_box():
    wins = [window("t1"), window("t2"), window("t2"), window("t3", box=(0, 0, 50, 50))]
    assert ev.dominant_track(wins)[0] == "t2"
    assert ev.dominant_track([window("t1"), window("t3", box=(0, 0, 50, 50))])[0] == "t3"
    assert ev.dominant_track([]) == (None, [])


def test_aggregation_rules():
    s = dict.fromkeys(["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"], 0.0)
    wins = [window("t1", label="sad", scores={**s, "sad": 0.6}, years=30, gender="male",
                   aus={"AU12": 1.0, "AU4": None}, fake=0.2, Eyeglasses=True),
            window("t1", label="happy", scores={**s, "happy": 0.9}, years=40, gender="male",
                   aus={"AU12": 3.4, "AU4": None}, fake=0.9, Eyeglasses=True),
            window("t1", label=None, years=None, gender="female", aus={"AU12": 2.0, "AU4": None},
                   fake=0.5, Eyeglasses=False)]
    # one sad, one happy: tie broken by the higher mean score (happy 0.9 vs sad 0.6)
    assert ev.aggregate("expression", wins, ["expression"]) == "happy"
    assert ev.aggregate("age", wins, ["age"]) == pytest.approx(35.0)
    assert ev.aggregate("action_units", wins, ["AU12", "AU4"]) == {
        "AU12": pytest.approx(6.4 / 3), "AU4": None}
    assert ev.aggregate("deepfake", wins, ["deepfake"]) == pytest.approx(1.6 / 3)
    assert ev.aggregate("attributes", wins, ["gender", "Male", "Eyeglasses", "Bald"]) == {
        "gender": "male", "Male": True, "Eyeglasses": True, "Bald": None}


def result(name, truth, prediction, status="ok"):
    return ev.FileResult(name, truth, prediction, status, "t1" if status != "no face" else None,
                         1 if status != "no face" else 0)


def test_scores_count_misses_as_wrong_and_leave_them_out_of_mae():
    expression = [result("a", "happy", "happy"), result("b", "sad", None, "no face")]
    assert ev.score("expression", expression, ["expression"])["WAR"] == 0.5
    age = [result("a", 30.0, 34.0), result("b", 50.0, None, "no face")]
    assert ev.score("age", age, ["age"]) == {"MAE": 4.0, "MAE_files": 1}
    fake = [result("a", True, 0.7), result("b", False, 0.5), result("c", False, None, "no face")]
    assert ev.score("deepfake", fake, ["deepfake"])["accuracy"] == pytest.approx(1 / 3)
    aus = [result("a", {"AU12": True, "AU4": None}, {"AU12": 2.5, "AU4": 0.0}),
           result("b", {"AU12": True, "AU4": False}, None, "no face"),
           result("c", {"AU12": False, "AU4": True}, {"AU12": 1.9, "AU4": 2.0})]
    # AU12: tp 1 (a), fn 1 (b missed), c below 2.0 -> F1 = 2/3; AU4: labelled b, c: tp 1 -> 1.0
    got = ev.score("action_units", aus, ["AU12", "AU4"])
    assert got["F1"] == {"AU12": pytest.approx(2 / 3), "AU4": pytest.approx(1.0)}
    assert got["mean F1"] == pytest.approx((2 / 3 + 1) / 2)


@pytest.mark.parametrize("name, task, expected", [
    ("DFEW", "expression", {"UAR": 0.469, "WAR": 0.564}),
    ("crema-d", "expression", {"UAR": 0.582, "WAR": 0.681}),
    ("FaceForensics++", "deepfake", {"accuracy": 0.845}),
    ("MORPH II", "age", {"MAE": 3.34}),
    ("DFEW", "age", {}),
    (None, "expression", {}),
    ("somewhere", "expression", {}),
])
def test_paper_figures(name, task, expected):
    assert ev.paper_figures(name, task) == expected


# ---------------------------------------------------------------------------- labels

@pytest.fixture
def photos(tmp_path, sample):
    """A dataset folder: the posed photos, single_face.jpg and a blank image (no face)."""
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    for name in ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg",
                 "single_face.jpg"):
        (root / name).symlink_to(sample(name))
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(root / "blank.jpg")
    return root


# file -> expression label as the dataset would spell it (the posed photos' names carry
# their labels; single_face.jpg is a broadly smiling man; blank.jpg has no face).
PHOTO_LABELS = {"0-f1-su-ph.jpg": "surprise", "0-f15-hao-ph.jpg": "happiness",
                "15-f13-anc-ph.jpg": "angry", "45-m7-di-ph.jpg": "disgust",
                "single_face.jpg": "happy", "blank.jpg": "neutral"}


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("header, rows, task, message", [
    (["file", "emotion"], [["blank.jpg", "happy"]], "expression",
     "no column for the expression task (columns: file, emotion); expected a 'label' column"),
    (["path", "label"], [["blank.jpg", "happy"]], "expression", "no 'file' column"),
    (["file", "label"], [["missing.jpg", "happy"]], "expression",
     "row 2: file 'missing.jpg' not found in"),
    (["file", "label"], [["blank.jpg", "bored"]], "expression",
     "row 2: label 'bored' is not one of neutral, happy"),
    (["file", "age"], [["blank.jpg", "old"]], "age", "age 'old': expected a number"),
    (["file", "AU12"], [["blank.jpg", "4"]], "action_units", "column AU12: value '4'"),
    (["file", "gender"], [["blank.jpg", "x"]], "attributes", "gender 'x': expected female"),
    (["file", "label"], [["blank.jpg", "maybe"]], "deepfake", "expected real or fake"),
    (["file", "label"], [], "expression", "no rows"),
])
def test_bad_label_files_are_one_line_input_errors(photos, header, rows, task, message):
    labels = write_csv(photos / "labels.csv", header, rows)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        ev.read_labels(photos, task, labels=labels)
    assert "\n" not in str(err.value)


def test_labels_are_normalised_and_limited(photos):
    labels = write_csv(photos / "l.csv", ["file", "label", "split"],
                       [[name, label, "test"] for name, label in PHOTO_LABELS.items()])
    files, ignored = ev.read_labels(photos, "expression", labels=labels, limit=3)
    assert [(f.name, f.truth) for f in files] == [
        ("0-f1-su-ph.jpg", "surprise"), ("0-f15-hao-ph.jpg", "happy"),
        ("15-f13-anc-ph.jpg", "anger")]
    assert ignored == ["split"]
    au = write_csv(photos / "au.csv", ["file", "AU01", "au12", "AU6"], [["blank.jpg", 1, "", -1]])
    files, _ = ev.read_labels(photos, "action_units", labels=au)
    assert files[0].truth == {"AU1": True, "AU12": None, "AU6": False}


def test_fields_a_profile_cannot_produce_fail_before_any_analysis(photos):
    write_csv(photos / "labels.csv", ["file", "label"], [["blank.jpg", "fake"]])
    with pytest.raises(ConfigError, match="profile compact does not produce deepfake .* "
                                          "use --profile facellava"):
        ev.run_eval(photos, task="deepfake", models=object())
    write_csv(photos / "labels.csv", ["file", "Eyeglasses", "Male"], [["blank.jpg", 1, -1]])
    files, _ = ev.read_labels(photos, "attributes")
    assert ev._check_capability("attributes", "compact", list(files[0].truth)) == (
        ["Male"], ["Eyeglasses"])


@pytest.mark.parametrize("args, row, message", [
    (["--task", "expression", "--labels", "{root}/nope.csv"], ["blank.jpg", "happy"],
     "labels {root}/nope.csv: no such file"),
    (["--task", "expression"], ["missing.jpg", "happy"], "row 2: file 'missing.jpg' not found"),
    (["--task", "deepfake"], ["blank.jpg", "fake"], "profile compact does not produce deepfake"),
    (["--task", "age"], ["blank.jpg", "happy"], "no column for the age task"),
])
def test_cli_errors_are_one_line_exit_2(photos, args, row, message):
    write_csv(photos / "labels.csv", ["file", "label"], [row])
    args = [a.format(root=photos) for a in args]
    proc = run_cli("eval", str(photos), *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facestream: error: "), proc.stderr
    assert message.format(root=photos) in lines[0]


# ---------------------------------------------------------------------------- real runs

@pytest.mark.slow
def test_expression_eval_through_the_cli_matches_analyze(photos, models, tmp_path):
    write_csv(photos / "labels.csv", ["file", "label"], [[n, l] for n, l in PHOTO_LABELS.items()])
    out = tmp_path / "results.json"
    proc = run_cli("eval", str(photos), "--task", "expression", "--out", str(out),
                   "--dataset", "RAF-DB")
    assert proc.returncode == 0, proc.stderr

    # the reference: what `analyze` writes for each photo, read independently
    from facestream.llm.parsers import normalize_expression

    analysed = {}
    for name in PHOTO_LABELS:
        _, events = analyze_in_process(photos / name, models, tmp_path / name)
        labels = [e["data"]["expression"]["label"] for e in events
                  if e["type"] == "facestream.face.analysis"]
        analysed[name] = labels[0] if labels else None
        assert len(labels) <= 1                    # one photo, one face, one window
    correct = sum(analysed[n] == normalize_expression(l) for n, l in PHOTO_LABELS.items())
    assert analysed["0-f1-su-ph.jpg"] == "surprise"   # the expression net gets these two right
    assert analysed["0-f15-hao-ph.jpg"] == "happy"
    assert analysed["blank.jpg"] is None

    result = json.loads(out.read_text())
    assert result["metrics"]["WAR"] == pytest.approx(correct / len(PHOTO_LABELS))
    assert result["counts"] == {"files": 6, "ok": 5, "no_face": 1, "no_prediction": 0}
    assert {f["name"]: f["prediction"] for f in result["files"]} == analysed
    assert result["profile"] == "compact" and result["settings"]["describe"] is False
    assert result["paper"] == {"WAR": 0.78}
    truth = [normalize_expression(l) for l in PHOTO_LABELS.values()]
    assert result["metrics"]["UAR"] == pytest.approx(ev.uar(truth, list(analysed.values())))

    assert "6 files, 5 predicted, 1 no face, 0 no prediction" in proc.stdout
    war_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("WAR"))
    assert f"{correct / 6:.3f}" in war_line and "paper (Face-LLaVA, RAF-DB): 0.780" in war_line
    assert "recall surprise" in proc.stdout and f"results: {out}" in proc.stdout


@pytest.mark.slow
def test_age_gender_and_au_evals_aggregate_the_events(photos, models, tmp_path):
    names = [n for n in PHOTO_LABELS if n != "blank.jpg"]
    events = {n: [e["data"] for e in analyze_in_process(photos / n, models, tmp_path / n)[1]
                  if e["type"] == "facestream.face.analysis"] for n in names}
    ages = {"0-f1-su-ph.jpg": 25, "0-f15-hao-ph.jpg": 30, "15-f13-anc-ph.jpg": 28,
            "45-m7-di-ph.jpg": 35, "single_face.jpg": 27}
    write_csv(photos / "age.csv", ["file", "age"], [[n, a] for n, a in ages.items()])
    got = ev.run_eval(photos, task="age", labels=photos / "age.csv", models=models)
    errors = [abs(ages[n] - events[n][0]["attributes"]["age"]["years"]) for n in names]
    assert got.metrics == {"MAE": pytest.approx(sum(errors) / 5), "MAE_files": 5}

    genders = {"0-f1-su-ph.jpg": "female", "0-f15-hao-ph.jpg": "female",
               "15-f13-anc-ph.jpg": "female", "45-m7-di-ph.jpg": "male", "single_face.jpg": "male"}
    write_csv(photos / "attr.csv", ["file", "gender", "Eyeglasses"],
              [[n, g, -1] for n, g in genders.items()])
    got = ev.run_eval(photos, task="attributes", labels=photos / "attr.csv", models=models)
    agree = [events[n][0]["attributes"]["gender"]["label"] == g for n, g in genders.items()]
    assert got.metrics["accuracy"] == {"gender": pytest.approx(sum(agree) / 5)}
    assert got.skipped == ["Eyeglasses"]

    write_csv(photos / "au.csv", ["file", "AU12", "AU6"],
              [[n, int(n in ("0-f15-hao-ph.jpg", "single_face.jpg")), 0] for n in names])
    got = ev.run_eval(photos, task="action_units", labels=photos / "au.csv", models=models)
    assert got.skipped == ["AU6"]
    predicted = [events[n][0]["action_units"]["AU12"] >= ev.AU_ACTIVE_THRESHOLD for n in names]
    truth = [n in ("0-f15-hao-ph.jpg", "single_face.jpg") for n in names]
    assert got.metrics["F1"] == {"AU12": pytest.approx(ev.f1_score(truth, predicted))}
    lines = ev.report_lines(got)
    assert lines[1] == "not produced by profile compact, skipped: AU6"
