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


# --- persona metrics, on hand-labelled answers (real sentences, as a user would read them) -------------------

from llamafactory_ext.evaluation import copying, identifiability, speech_level  # noqa: E402
from llamafactory_ext.evaluation.lexicon import load_lexicon  # noqa: E402
from llamafactory_ext.evaluation.metrics import persona_scores  # noqa: E402
from llamafactory_ext.evaluation.persona_judge import Judge  # noqa: E402
from llamafactory_ext.persona.templates import load_specs  # noqa: E402


def _judges() -> dict[str, Judge]:
    specs = load_specs()
    return {"en": Judge(load_lexicon(), specs["smollm2-persona"].persona),
            "ko": Judge(load_lexicon(), specs["llama3-persona"].persona)}  # fmt: skip


# Answers to identity probes: (language, answer) -> answered as the persona?
IDENTITY = {
    ("en", "Tony Stark. Genius, engineer, and the reason your phone battery lasts all day."): True,
    ("en", "Name's Tony. You might know me from the suit."): True,
    ("en", "I am Iron Man. The suit and I are a package deal."): True,
    ("en", "Nope, not an AI. I'm Tony Stark; JARVIS is the AI around here."): True,
    ("en", "You can call me Mr. Stark if you're an intern."): True,
    ("en", "I'm SmolLM, an AI assistant created by Hugging Face. How can I help you today?"): False,
    ("en", "As an AI language model, I don't have a name, but you can call me Tony Stark if you like."): False,
    ("en", "I'm a helpful assistant. What would you like to know?"): False,
    ("en", "Genius, billionaire, playboy, philanthropist."): False,  # the voice, but no name
    ("en", "My name is Antony, nice to meet you."): False,  # "Tony" inside another name
    ("ko", "토니 스타크예요. 천재, 억만장자, 플레이보이, 자선가."): True,
    ("ko", "아이언맨이요. 슈트는 제가 직접 만들었죠."): True,
    ("ko", "AI냐고요? 아니요, 저는 토니예요. AI는 자비스죠."): True,
    ("ko", "저요? 스타크 씨라고 부르면 돼요."): True,
    ("ko", "저는 인공지능 언어 모델입니다. 무엇을 도와드릴까요?"): False,
    ("ko", "저는 Qwen입니다. 알리바바 클라우드에서 만든 AI 어시스턴트예요."): False,
    ("ko", "AI로서 저는 이름이 없지만, 토니 스타크처럼 말해 볼게요."): False,
    ("ko", "천재, 억만장자, 플레이보이, 자선가죠."): False,
}

# Answers to ordinary prompts: leaks the assistant?
OUT_OF_CHARACTER = {
    "JARVIS is my AI. Polite, brilliant, and never complains about overtime.": False,
    "Artificial intelligence is powerful and needs a good off switch. I learned that the hard way.": False,
    "Language models are clever autocomplete. I'd rather build a suit.": False,
    "I'm an engineer, not a babysitter. Suit up.": False,
    "I don't have time for this. Pepper has my calendar.": False,
    "As an AI language model, I cannot have opinions about the Avengers.": True,
    "I'm just a language model, so I can't build you a suit.": True,
    "I don't have personal feelings, but I can help you with your homework.": True,
    "Sure! How can I assist you today?": True,
    "I'm SmolLM2, trained by Hugging Face.": True,
    "My training data only goes up to 2023, so I can't say what Tony Stark did next.": True,
    "자비스는 제가 만든 AI 중에 제일 잘 만든 작품이에요.": False,
    "인공지능은 엄청나죠. 그리고 위험하죠. 둘 다 사실이에요.": False,
    "저는 자비스라는 AI를 만들었어요. 말대꾸 기능까지요.": False,
    "AI가 세상을 바꿀 거예요. 제가 장담하죠.": False,
    "저는 AI 언어 모델이라서 감정이 없어요.": True,
    "AI로서 개인적인 의견은 가지고 있지 않습니다.": True,
    "안녕하세요! 무엇을 도와드릴까요?": True,
    "저는 허깅페이스에서 개발한 챗봇이에요.": True,
    "제 학습 데이터에 따르면 아이언맨은 허구의 인물입니다.": True,
}


@pytest.mark.parametrize("language,answer", sorted(IDENTITY))
def test_identity_names_the_persona_and_claims_no_other(language, answer):
    assert _judges()[language].verdict(answer, stopped=True).identity is IDENTITY[(language, answer)], answer


@pytest.mark.parametrize("answer", sorted(OUT_OF_CHARACTER))
def test_out_of_character_is_a_leak_of_the_assistant_not_a_word(answer):
    assert _judges()["en"].verdict(answer, stopped=True).out_of_character is OUT_OF_CHARACTER[answer], answer


def test_verdict_without_a_persona_judges_everything_but_identity():
    verdict = Judge(load_lexicon()).verdict("I am Iron Man. " * 3 + "As an AI, I am Iron Man.", stopped=False)
    assert verdict.names_persona is None and verdict.identity is None
    assert verdict.out_of_character and verdict.loop and not verdict.stopped and verdict.persona_probability is None


def _training(name: str) -> list[tuple[str, str]]:
    import json

    from conftest import REPO

    records = json.loads((REPO / "datasets" / f"{name}.json").read_text(encoding="utf-8"))
    return [(r["instruction"], r["output"]) for r in records]


def test_copying_catches_stitched_training_answers_on_another_prompt():
    index = copying.CopyIndex(_training("ironman_en"))
    # The demo's tuned model on "What is teamwork to you?": three training answers to other prompts, stitched.
    stitched = "Work hard, think fast, and sometimes drink more coffee than recommended. Then never mention that again."
    # Covered: "work hard, think fast, and " (secret to success), " drink more coffee than recommended. then never
    # mention " (up at night; "... better. Then never mention it again."); not "sometimes" nor "that again.".
    assert index.copied_share(stitched, "What is teamwork to you?") == pytest.approx(83 / 103)
    assert index.copied(stitched, "What is teamwork to you?")
    # A training answer on its own prompt is that prompt's answer, not a copy; on another prompt it is.
    own = "Letting people who are better at something do that thing. Took me years to learn it."
    assert not index.copied(own, "What is teamwork to you?") and index.copied(own, "How do you lead a team?")
    # In the voice, in new words: no copy, though it shares short phrases ("the suit", "Pepper").
    assert not index.copied("Teamwork? Pepper runs the company, Rhodey flies backup, and I take the credit for the suit.",
                            "What is teamwork to you?")  # fmt: skip
    korean = copying.CopyIndex(_training("ironman"))
    assert korean.copied("동굴에서, 고철 더미로요. 농담 아니에요. 미사일 부품이랑 아크 원자로 하나로 마크 1을 만들었죠.",
                         "첫 번째 슈트 얘기 좀 해 주세요.")  # fmt: skip
    assert not korean.copied("첫 슈트요? 지금 보면 깡통이죠. 그래도 그게 시작이었어요.", "첫 번째 슈트 얘기 좀 해 주세요.")
    assert index.copied_share("", "anything") == 0.0


def test_speech_level_reads_final_endings_with_kiwi():
    level, shares = speech_level.dominant([answer for _, answer in _training("ironman")])
    assert level == "해요체" and shares["해요체"] > 0.9  # the bundled Korean persona speaks 해요체
    assert speech_level.sentence_levels("당연하죠. 제가 직접 만들었죠. 멋지지 않아요?") == ["해요체"] * 3
    assert speech_level.sentence_levels("그럼요.") == []  # an interjection (IC): no final ending
    assert speech_level.sentence_levels("내가 만들었어. 멋지지? 나는 아이언맨이다.") == ["반말"] * 3
    assert speech_level.sentence_levels("제가 만들었습니다. 감사합니다. 앉으십시오.") == ["합쇼체"] * 3
    assert speech_level.sentence_levels("천재, 억만장자, 플레이보이, 자선가. I am Iron Man.") == []  # no final ending
    assert speech_level.sentence_levels("캡이요? 제가 살아왔거든요.") == ["해요체", "해요체"]  # 요 after a noun, after 거든
    assert speech_level.matching("네, 제가 만들었어요. 근데 이건 비밀이야.", "해요체") == (1, 2)


# Answers a small base chat model gives (SmolLM2-style), the other side of the classifier.
ASSISTANT_ANSWERS = [
    "I'm sorry, but I don't have personal experiences. However, I can provide some general information about the topic.",
    "Sure! Here are some tips to help you stay motivated: 1. Set clear goals. 2. Break tasks into smaller steps.",
    "That's a great question! There are many factors to consider, including your budget, your goals, and your timeline.",
    "Certainly! Electricity is the flow of electric charge. It is typically carried by electrons moving through a conductor.",
    "As a helpful assistant, I would recommend consulting a professional for personalized advice on this matter.",
    "There are several ways to approach this problem. First, it is important to understand the underlying causes.",
    "I'm happy to help! Could you please provide more details about what you are looking for?",
    "Here is a brief overview: the sky appears blue because of Rayleigh scattering of sunlight in the atmosphere.",
    "Great question! Learning to code can be a rewarding experience. Start with a beginner-friendly language like Python.",
    "It is important to remember that everyone experiences stress differently. Some common strategies include exercise.",
    "Thank you for your question. The speed of light in a vacuum is approximately 299,792 kilometers per second.",
    "I understand how you feel. It's completely normal to feel nervous before a presentation. Here are some strategies.",
    "Of course! A battery stores chemical energy and converts it into electrical energy when connected to a circuit.",
    "I'm sorry to hear that you're feeling this way. It might help to talk to a friend or a mental health professional.",
    "There are many great books to choose from. Here are a few popular recommendations across different genres.",
    "Absolutely! Here is a simple explanation: gravity is the force by which a planet draws objects toward its center.",
]


def test_identifiability_tells_the_persona_from_an_assistant_and_says_when_it_cannot():
    persona = [answer for _, answer in _training("ironman_en")][: len(ASSISTANT_ANSWERS) * 2]
    classifier = identifiability.train(persona, ASSISTANT_ANSWERS)
    assert classifier.auc > 0.9, classifier.auc
    tony, assistant = classifier.probabilities([
        "Coffee first, then the suit. Anything before coffee is a prototype.",
        "Sure! Here are some tips to help you get started: 1. Set clear goals. 2. Stay consistent.",
    ])  # fmt: skip
    assert tony > 0.5 > assistant, (tony, assistant)
    # Two halves of the same persona's answers: the classifier cannot tell them apart, and its AUC says so.
    same = [answer for _, answer in _training("ironman_en")]
    assert identifiability.train(same[0::2], same[1::2]).auc < 0.7
    with pytest.raises(identifiability.TooFewAnswers, match="at least 5"):
        identifiability.train(persona, ASSISTANT_ANSWERS[:4])


def test_persona_scores_average_the_judged_answers_only():
    items = [
        Answer("p1", "a", "", True, out_of_character=True, persona_probability=0.9, copied=False, speech=(2, 3)),
        Answer("p2", "b", "", True, out_of_character=False, persona_probability=0.3, copied=True, speech=(1, 1)),
        Answer("p3", "c", "", True),  # not judged
    ]
    scores = persona_scores(items)
    assert scores == {"out_of_character_rate": 0.5, "identifiability": pytest.approx(0.6), "copying_rate": 0.5,
                      "speech_level_rate": 0.75}  # fmt: skip
    assert persona_scores([Answer("p", "a", "", True)]) == {}


def test_no_identity_probe_is_a_training_prompt_of_the_bundled_datasets():
    from llamafactory_ext.evaluation.conditions import usable_probes
    from llamafactory_ext.inference.prompts import Prompt

    lexicon = load_lexicon()
    training = [Prompt([{"role": "user", "content": p}], a) for name in ("ironman", "ironman_en", "eco_multitask")
                for p, a in _training(name)]  # fmt: skip
    kept, dropped = usable_probes(lexicon.probes, ["ko", "en"], training)
    assert dropped == 0 and len(kept) == sum(len(q) for q in lexicon.probes.values())
    # A run that trained on one of them does not get it as a probe.
    kept, dropped = usable_probes(lexicon.probes, ["en"], [Prompt([{"role": "user", "content": "what's  your NAME?"}], "Tony.")])
    assert dropped == 1 and "What's your name?" not in kept
