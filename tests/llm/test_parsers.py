"""Answer parsers on Face-LLaVA-style answers: conclusions, justifications, negations, nulls."""

from __future__ import annotations

import pytest

from facestream.llm.parsers import (ACTION_UNITS, CELEBA_ATTRIBUTES, EXPRESSIONS,
                                    PRESENT_INTENSITY, AgeAnswer, DeepfakeAnswer, ParsedExpression,
                                    normalize_expression, parse_action_units, parse_age,
                                    parse_answer, parse_attributes, parse_deepfake,
                                    parse_expression)
from facestream.vocabulary import TASKS

EXPRESSION_CASES = [
    ("The person's expression clearly indicates fear. Her eyes are wide open and her eyebrows "
     "are raised, which could also suggest surprise.", "fear"),
    ("The facial expression is neutral, not happy.", "neutral"),
    ("No sign of anger; she looks calm.", "neutral"),
    ("She looks sad rather than angry.", "sad"),
    ("The man isn't angry. Overall, the emotion conveyed in the video is happiness: he smiles "
     "broadly and his cheeks are raised.", "happy"),
    ("The emotion shown in the video is surprise. His mouth is open in shock and his eyebrows "
     "are lifted.", "surprise"),
    ("The woman appears disgusted, wrinkling her nose and raising her upper lip.", "disgust"),
    ("The person displays an angry expression, with lowered brows and pressed lips.", "anger"),
    ("Sadness is evident: the corners of her mouth turn down and her gaze is lowered.", "sad"),
    ("A happy expression. The person is smiling, though there may be a hint of nervousness.",
     "happy"),
    ("The individual does not look happy; the furrowed brow and tight lips point to "
     "irritation.", "anger"),
    ("He shows no particular emotion.", "neutral"),
    ("The expression is not fearful.", None),
    ("The expression is contempt, with a hint of disgust.", None),
    ("The video shows a person talking in a brightly lit room.", None),
    ("", None),
    ("She seems terrified, her eyes wide with fright.", "fear"),
    ("The person is neither happy nor sad; the face is expressionless.", "neutral"),
    ("It is an unhappy face.", "sad"),
    ("Astonished, he stares at the camera.", "surprise"),
    ("I don't think she is angry; she looks happy.", "happy"),
]


@pytest.mark.parametrize("text, label", EXPRESSION_CASES)
def test_parse_expression(text, label):
    parsed = parse_expression(text)
    assert parsed == ParsedExpression(label, text)
    assert parsed.label is None or parsed.label in EXPRESSIONS


@pytest.mark.parametrize("word, label", [
    ("happiness", "happy"), ("Happy", "happy"), ("sadness", "sad"), ("surprised", "surprise"),
    ("Fearful", "fear"), ("disgusted", "disgust"), ("angry", "anger"), ("anger", "anger"),
    ("neutral", "neutral"), ("calm", "neutral"), (" joy ", "happy"), ("contempt", None),
    ("bored", None), ("", None),
])
def test_normalize_expression(word, label):
    assert normalize_expression(word) == label


def aus(**given: float) -> dict[str, float | None]:
    out: dict[str, float | None] = dict.fromkeys(ACTION_UNITS)
    out.update(given)
    return out


C = PRESENT_INTENSITY
AU_CASES = [
    ("The active action units are AU6 (cheek raiser), AU12 (lip corner puller) and AU25 (lips "
     "part). AU4 is not present.", aus(AU6=C, AU12=C, AU25=C, AU4=0.0)),
    ("AUs 6, 12 and 25 are activated. No AU4 or AU9.", aus(AU6=C, AU12=C, AU25=C, AU4=0.0,
                                                          AU9=0.0)),
    ("AU1, AU2, AU5 and AU12 are absent; AU26 is active with intensity C.",
     aus(AU1=0.0, AU2=0.0, AU12=0.0, AU26=3.0)),
    ("The face shows AU12E and AU6B.", aus(AU12=5.0, AU6=2.0)),
    ("AU 4 (intensity 2) and AU 7 (intensity 4.5) indicate a frown.", aus(AU4=2.0, AU7=4.5)),
    ("Action unit 17 (chin raiser) and action unit 24 (lip pressor) are engaged.",
     aus(AU17=C, AU24=C)),
    ("Visible facial muscle movements: inner brow raiser, outer brow raiser and jaw drop.",
     aus(AU1=C, AU2=C, AU26=C)),
    ("The brow lowerer is active, and there is no nose wrinkler.", aus(AU4=C, AU9=0.0)),
    ("The person's lips are parted and the lip corners are pulled; the upper lip raiser "
     "(AU10) is visible.", aus(AU10=C)),
    ("AU15 (lip corner depressor) with an intensity of 3; AU14 is absent.",
     aus(AU15=3.0, AU14=0.0)),
    ("AU23 (E) and AU24 (A).", aus(AU23=5.0, AU24=1.0)),
    ("The eyelid tightener and the dimpler are both active.", aus(AU7=C, AU14=C)),
    ("No action units are clearly active.", aus()),
    ("The person is smiling broadly.", aus()),
    ("AU43 and AU5 are present.", aus()),
    ("AU12 is active. AU12 is not present in the first frames.", aus(AU12=C)),
    ("AU9, AU10 and AU25 are not active, while AU6 is.", aus(AU9=0.0, AU10=0.0, AU25=0.0, AU6=C)),
    ("Without AU1, the expression relies on AU4 (brow lowerer).", aus(AU1=0.0, AU4=C)),
]


@pytest.mark.parametrize("text, expected", AU_CASES)
def test_parse_action_units(text, expected):
    assert parse_action_units(text) == expected


AGE_CASES = [
    ("The person appears to be about 35 years old, judging by the smooth skin.", (35, 35, 35)),
    ("She is in her late twenties.", (28, 27, 29)),
    ("He is likely between 30 and 40, given the slight wrinkles.", (35, 30, 40)),
    ("A teenager, probably.", (16, 13, 19)),
    ("The man is in his mid-40s.", (45, 44, 46)),
    ("I would place her in her early 20s.", (22, 20, 23)),
    ("Somewhere in her late 20s to early 30s.", (30, 27, 33)),
    ("A 52-year-old man with gray hair.", (52, 52, 52)),
    ("Estimated age: 61.", (61, 61, 61)),
    ("The individual looks around 25-30 years old.", (27.5, 25, 30)),
    ("He appears to be in his thirties.", (35, 30, 39)),
    ("She looks thirty-five years old.", (35, 35, 35)),
    ("The person is elderly, with deep wrinkles and white hair.", (72, 65, 85)),
    ("A middle-aged woman.", (50, 40, 60)),
    ("The child in the picture smiles.", (8, 4, 12)),
    ("The person is aged 19.", (19, 19, 19)),
    ("The face shows AU12 and AU6.", (None, None, None)),
    ("It is hard to tell the age from this image.", (None, None, None)),
    ("", (None, None, None)),
]


@pytest.mark.parametrize("text, expected", AGE_CASES)
def test_parse_age(text, expected):
    assert parse_age(text) == AgeAnswer(*[None if v is None else float(v) for v in expected])


ATTRIBUTE_CASES = [
    ("A young woman with long, wavy brown hair, arched eyebrows and no eyeglasses. She is not "
     "wearing a hat but wears earrings and lipstick.",
     {"gender": "female", "Male": False, "Young": True, "Wavy_Hair": True, "Brown_Hair": True,
      "Arched_Eyebrows": True, "Eyeglasses": False, "Wearing_Hat": False,
      "Wearing_Earrings": True, "Wearing_Lipstick": True}),
    ("The man has a goatee and a mustache, short black hair and bushy eyebrows.",
     {"gender": "male", "Male": True, "Goatee": True, "Mustache": True, "Black_Hair": True,
      "Bushy_Eyebrows": True, "No_Beard": None}),
    ("He is clean-shaven and wears glasses and a necktie.",
     {"gender": "male", "Male": True, "No_Beard": True, "Eyeglasses": True,
      "Wearing_Necktie": True}),
    ("An elderly gentleman with gray hair, a receding hairline and bags under his eyes.",
     {"gender": "male", "Male": True, "Young": False, "Gray_Hair": True,
      "Receding_Hairline": True, "Bags_Under_Eyes": True}),
    ("She has blonde hair with bangs, rosy cheeks and high cheekbones; she is smiling.",
     {"gender": "female", "Male": False, "Blond_Hair": True, "Bangs": True, "Rosy_Cheeks": True,
      "High_Cheekbones": True, "Smiling": True}),
    ("The person is not smiling and has no beard.",
     {"gender": None, "Male": None, "Smiling": False, "No_Beard": True}),
    ("A bald man with a double chin and a big nose; his mouth is slightly open.",
     {"gender": "male", "Male": True, "Bald": True, "Double_Chin": True, "Big_Nose": True,
      "Mouth_Slightly_Open": True}),
    ("Her face is oval, with pale skin, a pointy nose and full lips; she wears heavy makeup "
     "and a necklace.",
     {"gender": "female", "Male": False, "Oval_Face": True, "Pale_Skin": True,
      "Pointy_Nose": True, "Big_Lips": True, "Heavy_Makeup": True, "Wearing_Necklace": True}),
    ("The image is blurry; the person has sideburns and a five o'clock shadow.",
     {"Blurry": True, "Sideburns": True, "5_o_Clock_Shadow": True}),
    ("She wears no makeup and no earrings; her straight hair is tied back.",
     {"gender": "female", "Male": False, "Heavy_Makeup": False, "Wearing_Earrings": False,
      "Straight_Hair": True}),
    ("A chubby boy with narrow eyes.",
     {"gender": "male", "Male": True, "Chubby": True, "Narrow_Eyes": True}),
    ("This is not a man; it is a girl with curly hair.",
     {"gender": "female", "Male": False, "Wavy_Hair": True}),
    ("An attractive person with a neutral look.", {"gender": None, "Attractive": True}),
    ("He has a thick beard.", {"gender": "male", "Male": True, "No_Beard": False}),
    ("The subject is wearing a cap and sunglasses.", {"Wearing_Hat": True, "Eyeglasses": True}),
    ("The face is clearly visible.", {"gender": None}),
]


@pytest.mark.parametrize("text, stated", ATTRIBUTE_CASES)
def test_parse_attributes(text, stated):
    parsed = parse_attributes(text)
    assert set(parsed) == {"gender", *CELEBA_ATTRIBUTES}
    expected = {"gender": None, **dict.fromkeys(CELEBA_ATTRIBUTES)}
    expected.update(stated)
    assert parsed == expected


DEEPFAKE_CASES = [
    ("The video appears to be real. There are no signs of manipulation.", (False, 0.0)),
    ("The video is not fake.", (False, 0.0)),
    ("There is an 85% probability that the video is manipulated.", (True, 0.85)),
    ("I am 90% confident the video is authentic.", (False, 0.1)),
    ("The probability of this being a deepfake is 0.3.", (False, 0.3)),
    ("Yes, the video has been tampered with: the face boundary flickers and the skin looks "
     "unnaturally smooth.", (True, 1.0)),
    ("The video seems genuine; lighting and lip movements are consistent.", (False, 0.0)),
    ("This is a deepfake. The mouth region is blurry compared to the rest of the face.",
     (True, 1.0)),
    ("The face appears synthetic, likely generated by a face-swap model.", (True, 1.0)),
    ("The video is not authentic.", (True, 1.0)),
    ("No evidence of manipulation or fakery was found; the video is real.", (False, 0.0)),
    ("I do not suspect the video has been altered.", (False, 0.0)),
    ("The video does not appear to have been manipulated.", (False, 0.0)),
    ("The clip looks manipulated rather than real.", (True, 1.0)),
    ("There is evidence of digital manipulation around the eyes.", (True, 1.0)),
    ("The person is talking calmly in an office.", (None, None)),
    ("", (None, None)),
]


@pytest.mark.parametrize("text, expected", DEEPFAKE_CASES)
def test_parse_deepfake(text, expected):
    parsed = parse_deepfake(text)
    assert parsed.fake == expected[0]
    assert parsed.score == (None if expected[1] is None else pytest.approx(expected[1]))


@pytest.mark.parametrize("task, text, expected", [
    ("expression", "The expression is happy.",
     ParsedExpression("happy", "The expression is happy.")),
    ("age", "about 40 years old", AgeAnswer(40.0, 40.0, 40.0)),
    ("deepfake", "It is fake.", DeepfakeAnswer(True, 1.0)),
    ("action_units", "AU12", aus(AU12=C)),
    ("attributes", "A woman wearing glasses.",
     {"gender": "female", **dict.fromkeys(CELEBA_ATTRIBUTES), "Male": False,
      "Eyeglasses": True}),
])
def test_parse_answer_dispatches(task, text, expected):
    assert parse_answer(task, text) == expected


# What each task's own parser gives for an answer that states nothing (module docstring:
# None fields; the expression keeps the text).  The five values are of five different
# shapes, so an answer routed to another task's parser cannot match.
SAYS_NOTHING = {
    "expression": ParsedExpression(None, ""),
    "action_units": dict.fromkeys(ACTION_UNITS),
    "attributes": {"gender": None, **dict.fromkeys(CELEBA_ATTRIBUTES)},
    "age": AgeAnswer(None, None, None),
    "deepfake": DeepfakeAnswer(None, None),
}


def test_every_prompt_task_has_a_parser():
    assert set(TASKS) == set(SAYS_NOTHING), "a prompt task without an expected parser result"
    for task in TASKS:
        assert parse_answer(task, "") == SAYS_NOTHING[task], task
    with pytest.raises(ValueError, match="expected one of expression"):
        parse_answer("mood", "")


def test_parsers_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, facestream.llm.parsers, facestream.llm.prompts; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
