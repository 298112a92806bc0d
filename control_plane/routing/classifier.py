"""Deterministic prompt classifier: task type, complexity and a confidence, from weighted regular expressions.

Compiled rules per task, searched over the head and tail of the last user message (plus the system
prompt at half weight); each rule counts once. No model, no randomness: the same prompt always gets the
same answer, in tens of microseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec

Task = Literal["code_generation", "analysis", "summarization", "translation", "math", "creative", "chat"]
Complexity = Literal["simple", "moderate", "complex"]
TASKS: tuple[Task, ...] = ("code_generation", "analysis", "summarization", "translation", "math", "creative", "chat")
COMPLEXITIES: tuple[Complexity, ...] = ("simple", "moderate", "complex")

#: Only this much of a long prompt's start (and end) is scanned: instructions live there.
HEAD_CHARS, TAIL_CHARS = 2000, 600

_LANGS = (r"english|french|spanish|german|italian|portuguese|dutch|polish|russian|chinese|mandarin|cantonese|"
          r"japanese|korean|arabic|hindi|swedish|norwegian|danish|finnish|greek|turkish|hebrew|vietnamese|thai|"
          r"indonesian|ukrainian|czech|romanian|hungarian|bengali|urdu|persian|farsi|swahili|latin")
_CODE_LANGS = (r"python|javascript|typescript|java|golang|go|rust|c\+\+|c#|kotlin|swift|ruby|php|scala|haskell|"
               r"elixir|lua|perl|r|matlab|dart|c")
_CODE_NOUNS = (r"functions?|methods?|class(es)?|script|program|api|endpoint|query|regex|component|module|library|"
               r"cli|dockerfile|workflow|yaml|unit tests?|tests? for|algorithm|parser|server|app|web ?page|"
               r"html page|binary search tree|linked list|data structure|microservice|service|schema|migration")

# (rule, weight): a rule's weight is added once when it matches. Intent rules (what the user asks for) weigh
# more than topic rules (what the text is about), so "summarize this article about Python" is a summary.
_RULES: dict[Task, Sequence[tuple[str, float]]] = {
    "code_generation": (
        (rf"\b(write|implement|create|build|generate|code|make|add)\b[^.?!\n]{{0,60}}?\b({_CODE_NOUNS})\b", 3.0),
        (r"\b(refactor|debug)\w*|\bfix (this|the|my|a) (bug|code|error|function|script)", 3.0),
        (r"\boptimi[sz]e (this|the|my|our)( \w+)? (code|query|function|loop|script|algorithm)", 3.0),
        (rf"\b(convert|port|translate|rewrite)\b[^.\n]{{0,50}}\b(to|into|in) ({_CODE_LANGS})\b(?! (language|word))", 3.0),
        (r"```|^\s{4}\S.*\n\s{4}\S", 2.5),
        (r"\b(segfaults?|stack ?trace|traceback|typeerror|syntaxerror|valueerror|keyerror|nullpointer\w*|"
         r"exception|compile error|undefined is not|runtime error)\b", 2.5),
        (r"\bdef \w+\(|\bfunction\s*\w*\s*\(|=>|#include|\bpublic static\b|^\s*import \w+|\bselect (\*|\w+) from\b|"
         r"\bconsole\.log\b|\bdf\.\w+\(|\w+\.merge\(", 2.0),
        (r"\b(python|javascript|typescript|java|golang|rust|c\+\+|c#|kotlin|swift|ruby|php|sql|bash|shell script|"
         r"powershell|html|css|react|vue|angular|django|flask|fastapi|node\.js|kubernetes|docker|terraform|pandas|"
         r"numpy|regex|json|yaml|git|github actions|ci|go program|in go)\b", 1.5),
        (r"\b(code|variables?|compiler|bugs?|algorithms?|database|repository|programming|programs?|strings?|"
         r"arrays?|hashmap|recursion|loop|unit tests?|pull requests?|crash(es)?)\b", 1.0),
    ),
    "analysis": (
        (r"\banaly[sz](e|es|is|ing)\b|\banalytical", 3.0),
        (r"\bcompar(e|es|ison|ing)\b|\bcontrast\b|\bversus\b|\bvs\.?\b", 3.0),
        (r"\bevaluat(e|ion|ing)\b|\bassess(ment|ing)?\b|\bcritique\b|\bcritically\b|\bexamine\b|\bweigh\b", 3.0),
        (r"\bpros and cons\b|\badvantages and disadvantages\b|\bbenefits and drawbacks\b|"
         r"\bstrengths and weaknesses\b|\btrade-?offs?\b", 3.0),
        (r"\bimplications?\b|\broot cause\b|\binterpret\w*\b|\bcompetitive landscape\b|\bsecond-order\b", 3.0),
        (r"\breview (this|the|my|our)\b|\bidentify (the )?(\w+ )?(risks?|weak\w*|fallac\w*|flaws?|issues|assumptions)", 3.0),
        (r"\b(should (we|i|our)|is it (a good idea|worth|better|wise))\b|\bwhich is better\b|\bwhy did\b|"
         r"\bwhat does .{0,60} suggest\b", 3.0),
        (r"\b(risks?|strategy|strategic|policy|policies|economic|market|causes?|factors|themes?)\b", 1.0),
    ),
    "summarization": (
        (r"\bsummar(y|ies|i[sz]e|i[sz]es|i[sz]ing)\b|\btl;? ?dr\b|\bexecutive summary\b", 4.0),
        (r"\bkey (points|takeaways|findings)\b|\bmain (points|arguments|ideas)\b|\bthe gist\b", 4.0),
        (r"\bcondense\b|\bin a nutshell\b|\b(brief|short|quick|high-level) overview\b|\brecap\b|\bshorten\b|"
         r"\bboil (this|it) down\b", 4.0),
        (r"\b(in|to|into) (one|two|three|\d) (sentences?|bullet points|lines?)\b|\bbullet points\b", 1.0),
    ),
    "translation": (
        (r"\btranslat(e|ion|ing|or)\b|\b(traduce|traduis|traduire|traduzca|traduza|traduci|übersetze\w*|vertaal|"
         r"przetłumacz|переведи)\b", 4.0),
        (rf"\b(in|into|to|ins|en|al) ({_LANGS}|englische|inglés|anglais)\b", 2.0),
        (r"\bhow (do|would|can|to) (you|i|we)? ?say\b|\bwhat('s| is) the (\w+ )?word for\b", 4.0),
        (rf"\bmeans? in ({_LANGS})\b|\bwhat does ['\"].{{1,60}}['\"] mean\b", 2.5),
        (rf"\b(render|put|rewrite)\b[^.\n]{{0,40}}\b(in|into) ({_LANGS})\b", 3.0),
    ),
    "math": (
        (r"\bsolve\b|\bequations?\b|\bsystem of\b", 2.5),
        (r"\bintegra(l|te)\b|\bderivative\b|\bdifferentiate\b|\bderive\b|\bgenerating functions?\b", 3.0),
        (r"\bprove\b|\bproof\b|\bshow that\b|\binduction\b|\btheorem\b|\blemma\b|\birrational\b", 2.5),
        (r"\bprobability\b|\bexpected value\b|\bhow many ways\b|\bcombinatori\w*|\bpermutations?\b", 3.0),
        (r"\b(eigen\w*|matri(x|ces)|determinant|polynomial|quadratic|logarithm|factorial|prime numbers?|"
         r"square root|sqrt|limit of|converge\w*|area of|volume of|circumference|simplify|fraction|radius|"
         r"continuous|interval|sequence|dice)\b", 2.0),
        (r"\d\s*[-+*/×^]\s*\(?\d|\b\d*[a-z]\s*[-+*/=^]\s*\d|\b[a-z]\^\d|\bf\([a-z]\)|\d+(\.\d+)?\s*%|"
         r"\bpercent(age)?\b|\bwhat is \d", 2.5),
        (r"\bcalculate\b|\bcompute\b|\bconvert \d|\bhow (far|fast|long|much|many)\b", 1.5),
        (r"\b\d+(\.\d+)?\s*(km/h|mph|km|miles|hours|kg|cm|m/s|degrees)\b", 1.0),
    ),
    "creative": (
        (r"\b(poems?|poetry|haikus?|sonnets?|limericks?|lyrics|songs?|ballads?|rap|verses?)\b", 4.0),
        (r"\b(short )?stor(y|ies)\b|\bbedtime\b|\bfairy ?tales?\b|\bfables?\b", 3.0),
        (r"\b(novel|chapter|screenplay|scene|plot|narrator|fiction|fantasy|sci-?fi|science fiction|characters?)\b", 2.5),
        (r"\b(slogans?|taglines?|catchy|jingles?|jokes?|funny|puns?)\b", 3.0),
        (r"\b(toast|birthday message|wedding speech|greeting card|vows|love letter)\b", 3.0),
        (r"\bimagine\b|\bpretend\b|\brole-?play\b|\binvent\b|\bbrainstorm\b|\bcome up with\b", 2.5),
        (r"\b(vivid|poetic|whimsical|in the style of|creative)\b", 2.0),
        (r"\bnames? for\b", 0.8),
    ),
    "chat": (
        (r"^\W*(hi|hello|hey|yo|good (morning|afternoon|evening|night)|thanks|thank you|ok|okay|cool|bye)\b", 3.0),
        (r"\bhow are you\b|\bwho are you\b|\btell me about yourself\b|\bwhat can you do\b|\btalk (to you )?tomorrow\b", 3.0),
        (r"\b(tips|advice|recommend\w*|suggest(ion)?s?|what should i)\b", 1.5),
        (r"\bexplain\b(?! why)", 0.5),
    ),
}
#: Chat is what a prompt is when nothing else speaks up.
_CHAT_BASE = 1.0

_COMPLEX_CUES = re.compile(
    r"\b(step by step|in detail|detailed|comprehensive|thorough(ly)?|rigorous(ly)?|production-ready|scale to|"
    r"edge cases|architect\w*|design and implement|distributed|concurrency|end-to-end|full test suite|"
    r"each (chapter|section|clause|party|stanza|generation)|well-structured|structured|richly|twists?|"
    r"second-order|multiple|millions|consider\b|cite|justify|glossary|synthesis)\b")
_MODERATE_CUES = re.compile(
    r"\b(explain|why|compare|implement|prove|derive|refactor|optimi[sz]e|fix|analy[sz]e|evaluate|assess\w*|examine|"
    r"interpret|suggest|trade-?offs?|strengths|advantages|risky|story|chapter|scene|lyrics|verses|sonnet|fairy ?tale|"
    r"invent|traditions|component|unit tests?|design|integral|derivative|eigen\w*|probability|how many ways|contrast|"
    r"critique|review|adapt\w*|history|plan|itinerary|arguments|paper|legal|terminology|precise|infer|limit|"
    r"induction|multi-stage|sorting|pagination|hooks|rewrite|error)\b")
_SIMPLE_CUES = re.compile(
    r"\b(quick(ly)?|brief(ly)?|one (word|line|sentence)|simple|just|hello world|tl;?dr|in a nutshell|shorten|"
    r"(in|into|to) (one|two|three|\d) (sentences?|lines?|bullet points)|under \d+ words|one-liner)\b")
_REQUIREMENTS = re.compile(r",|;|\band\b|\bwith\b|\bincluding\b|\bthen\b|^\s*(\d+\.|-|\*) ", re.MULTILINE)

_COMPILED: tuple[tuple[Task, tuple[tuple[re.Pattern[str], float], ...]], ...] = tuple(
    (task, tuple((re.compile(rule, re.MULTILINE), weight) for rule, weight in rules)) for task, rules in _RULES.items()
)


class Classification(msgspec.Struct, frozen=True):
    """What the prompt asks for, how hard it looks, and how sure the classifier is (0..1)."""

    task: Task
    complexity: Complexity
    confidence: float


def _scan(text: str) -> str:
    text = text.lower()
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]
    return text


def task_scores(text: str) -> dict[Task, float]:
    """The weight of every task's matching rules in `text` (each rule counted once)."""
    scanned = _scan(text)
    scores: dict[Task, float] = {}
    for task, rules in _COMPILED:
        total = math.fsum(weight for pattern, weight in rules if pattern.search(scanned))
        if total:
            scores[task] = total
    return scores


def _word_count(text: str) -> int:
    if len(text) > 20_000:
        return len(text) // 6
    return len(text.split())


def complexity_of(text: str, task: Task) -> Complexity:
    """simple | moderate | complex from length, the number of requirements, and wording."""
    scanned = _scan(text)
    words = _word_count(text)
    if task in ("summarization", "translation"):  # the text to work on is data, not requirements
        words //= 4
    points = (words > 40) + (words > 120) + (words > 400)
    points += min(len(set(m.group(0) for m in _COMPLEX_CUES.finditer(scanned))), 3)
    points += 1 if _MODERATE_CUES.search(scanned) else 0
    points -= 1 if _SIMPLE_CUES.search(scanned) else 0
    requirements = sum(1 for _ in _REQUIREMENTS.finditer(scanned[:HEAD_CHARS]))
    points += (requirements >= 5) + (requirements >= 9)
    if task in ("chat", "translation"):
        points -= 1
    if points <= 0:
        return "simple"
    return "moderate" if points <= 2 else "complex"


def _confidence(best: float, runner_up: float) -> float:
    margin = (best - runner_up) / best
    strength = 1.0 - math.exp(-best / 3.0)
    return round(min(0.99, 0.4 + 0.35 * margin + 0.25 * strength), 2)


def classify_text(text: str, *, system: str = "") -> Classification:
    """Classify one prompt (the system prompt, if any, counts half)."""
    scores = task_scores(text)
    if system:
        for task, weight in task_scores(system).items():
            scores[task] = scores.get(task, 0.0) + weight / 2
    if not scores:
        return Classification("chat", complexity_of(text, "chat"), 0.5)
    scores["chat"] = scores.get("chat", 0.0) + _CHAT_BASE
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], TASKS.index(kv[0])))
    (task, best), runner_up = ranked[0], ranked[1][1] if len(ranked) > 1 else 0.0
    return Classification(task, complexity_of(text, task), _confidence(best, runner_up))


def _content(message: Any) -> tuple[str, str]:
    if isinstance(message, Mapping):
        return str(message.get("role", "")), str(message.get("content") or "")
    return str(getattr(message, "role", "")), str(getattr(message, "content", "") or "")


def classify(messages: Iterable[Any]) -> Classification:
    """Classify a conversation by its last user message, with its system prompt as a hint."""
    system, last_user, last_any = "", "", ""
    for message in messages:
        role, content = _content(message)
        if role == "system":
            system = content
        elif role == "user":
            last_user = content
        if content:
            last_any = content
    return classify_text(last_user or last_any, system=system)
