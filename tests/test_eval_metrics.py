"""Metric arithmetic of lfx eval on fixed predictions with known answers (no model, milliseconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sacrebleu.metrics import CHRF

from llamafactory_ext.evaluation.metrics import (
    Answer,
    chrf,
    has_loop,
    json_keys_match_rate,
    json_valid_rate,
    language_rate,
    length_ratio,
    loop_rate,
    persona_chrf,
    script_share,
    stop_rate,
    summarize,
)


def test_stop_rate_counts_answers_cut_at_the_limit():
    assert stop_rate([True, True, False, True]) == 0.75
    assert stop_rate([False, False]) == 0.0
    assert stop_rate([]) is None


def test_chrf_is_sacrebleus_sentence_chrf_averaged():
    assert chrf(["I am Iron Man."], ["I am Iron Man."]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["abc"]) == 0.0
    assert chrf([""], ["anything"]) == 0.0
    hyp, ref = ["Genius, billionaire.", "토니 스타크입니다"], ["Genius, billionaire, playboy.", "저는 토니 스타크예요"]
    expected = [CHRF().sentence_score(h, [r]).score for h, r in zip(hyp, ref)]
    assert 0 < expected[1] < 100
    assert chrf(hyp, ref) == pytest.approx(sum(expected) / 2)


def test_persona_chrf_takes_the_best_training_answer_per_answer():
    persona = ["I am Iron Man.", "Suit up. We have work to do."]
    # Each answer equals one training answer: best match 100 whichever it is.
    assert persona_chrf(["Suit up. We have work to do.", "I am Iron Man."], persona) == pytest.approx(100.0)
    one = CHRF().sentence_score("I am a helpful assistant.", ["I am Iron Man."]).score
    other = CHRF().sentence_score("I am a helpful assistant.", ["Suit up. We have work to do."]).score
    assert persona_chrf(["I am a helpful assistant."], persona) == pytest.approx(max(one, other))
    assert persona_chrf(["x"], []) is None


def test_json_valid_share_and_key_match():
    refs = ['{"recommend": "a", "challenges": []}'] * 4
    answers = ['{"recommend": "b", "challenges": [1]}',  # valid, same keys
               ' {"recommend": "b"} ',                   # valid, a key missing
               '["recommend", "challenges"]',            # valid JSON, not an object
               'Sure! {"recommend": "b", "challenges": []}']  # prose around: not JSON  # fmt: skip
    assert json_valid_rate(answers) == 0.75
    assert json_keys_match_rate(answers, refs) == 0.25
    assert json_valid_rate(["null"]) == 0.0


def test_hangul_share_among_letters():
    assert script_share("안녕하세요", "ko") == 1.0
    assert script_share("안녕 hi", "ko") == 0.5  # 2 Hangul of 4 letters; digits and spaces ignored
    assert script_share("123 !!", "ko") == 0.0
    answers = ["네, 제가 토니 스타크입니다.", "I am Tony Stark.", "슈트 Mark 42요", "…"]
    # Hangul among letters: 1, 0, 3 of 7 (below half), no letters at all
    assert script_share(answers[2], "ko") == pytest.approx(3 / 7)
    assert language_rate(answers, "ko") == 0.25
    assert language_rate(answers, "en") == 0.5  # "I am Tony Stark." and the Latin-majority "슈트 Mark 42요"


def test_length_ratio_is_total_characters():
    assert length_ratio(["abcd", "ef"], ["ab", "cdef"]) == 1.0
    assert length_ratio(["abcdef", "ab"], ["ab", "ab"]) == 2.0


def test_repeated_ngram_loops():
    loop = "I am Iron Man. " + "I am Iron Man and " * 3
    assert has_loop(loop)
    assert not has_loop("I am Iron Man. Genius, billionaire, playboy, philanthropist.")
    assert not has_loop("a b c d a b c d")  # twice is not a loop
    assert loop_rate([loop, "fine answer", "또 또 또 또 또 또"]) == pytest.approx(2 / 3)


def test_summarize_overall_per_dataset_and_per_task():
    items = [
        Answer("p1", '{"a": 1}', '{"a": 2}', True, "eco", "challenge_recommend", True),
        Answer("p2", "not json", '{"a": 2}', False, "eco", "challenge_recommend", True),
        Answer("p3", "잘했어요", "잘했어요", True, "eco", "weekly_feedback", False),
        Answer("p4", "좋아요", "좋아요!", True, "ironman", None, False),
    ]
    result = summarize(items, ["잘했어요"], "ko")
    overall = result["overall"]
    assert overall["n"] == 4 and overall["stop_rate"] == 0.75
    assert overall["json_n"] == 2 and overall["json_valid_rate"] == 0.5 and overall["json_keys_match_rate"] == 0.5
    assert overall["language_rate"] == 0.5  # the JSON answer and "not json" have Latin letters only
    assert set(result["datasets"]) == {"eco", "ironman"} and result["datasets"]["ironman"]["n"] == 1
    assert "json_valid_rate" not in result["datasets"]["ironman"]
    assert set(result["tasks"]) == {"challenge_recommend", "weekly_feedback"}
    assert result["tasks"]["challenge_recommend"]["stop_rate"] == 0.5
    assert result["tasks"]["weekly_feedback"]["chrf"] == pytest.approx(100.0)
    assert result["tasks"]["weekly_feedback"]["persona_chrf"] == pytest.approx(100.0)


def test_metrics_module_imports_no_torch():
    code = "import sys, llamafactory_ext.evaluation.metrics as m; m.chrf(['a b'], ['a b']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
