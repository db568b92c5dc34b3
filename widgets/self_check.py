"""SelfCheck: a lesson's closing quiz, checked in the notebook.

A lesson ends with a few multiple-choice questions (:class:`bitkit.lesson.Question`). Several
answers come from the learner's own run ("did transfer beat scratch in *your* run?"), so the
check asks what the learner saw rather than what a textbook says. The learner picks a choice per
question and presses *Check*; each question then says right or not yet, with its explanation.

Headless (``bitkit run``) the executed copy keeps a static view: the questions and their
choices, with the answers folded away under a "show answers" toggle.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import ipywidgets as W

from bitkit.lesson import Question
from widgets._common import Panel, guarded, heading

RIGHT, WRONG = "#1b7f3b", "#b00020"


class SelfCheck(Panel):
    """Radio buttons per question, one Check button, feedback per question.

    ``answer(i, choice)`` answers question ``i`` from code (tests, a teacher's script) exactly
    as a click would; ``score()`` counts the right answers so far.
    """

    title = "Self-check"

    def __init__(self, questions: Sequence[Question], *, title: str = "Self-check") -> None:
        super().__init__()
        questions = list(questions)
        if not questions:
            raise ValueError("SelfCheck needs at least one Question")
        bad = [q for q in questions if not isinstance(q, Question)]
        if bad:
            raise TypeError(f"SelfCheck takes bitkit.lesson.Question objects, got "
                            f"{type(bad[0]).__name__}")
        self.title = title
        self.questions = questions
        self.choosers = [W.RadioButtons(options=list(q.choices), value=None,
                                        layout=W.Layout(width="auto"))
                         for q in questions]
        self.feedback = [W.HTML() for _ in questions]
        self.check_button = W.Button(description="Check", button_style="primary",
                                     tooltip="check every answered question")
        self.check_button.on_click(lambda _b: self.check())
        self.summary = W.HTML()
        rows = []
        for i, (q, chooser, fb) in enumerate(zip(questions, self.choosers, self.feedback,
                                                 strict=True), 1):
            rows.append(W.VBox([W.HTML(f"<b>{i}.</b> {html.escape(q.text)}"), chooser, fb],
                               layout=W.Layout(margin="4px 0 8px 0")))
        self._root = W.VBox([heading(title, "pick an answer per question, then Check"), *rows,
                             W.HBox([self.check_button, self.summary]), self.status])

    def answer(self, i: int, choice: str) -> bool:
        """Answer question ``i`` (0-based) with ``choice`` and check it; True when right."""
        if not 0 <= i < len(self.questions):
            raise IndexError(f"question {i} does not exist; this self-check has "
                             f"{len(self.questions)} (0 to {len(self.questions) - 1})")
        right = self.questions[i].is_right(choice)  # a choice it does not offer is an error
        self.choosers[i].value = choice
        self.check()
        return right

    @guarded
    def check(self) -> dict[str, int]:
        """Mark every answered question right or wrong (with its explanation); return the score."""
        for q, chooser, fb in zip(self.questions, self.choosers, self.feedback, strict=True):
            if chooser.value is None:
                fb.value = ""
                continue
            ok = q.is_right(chooser.value)
            mark = (f'<span style="color:{RIGHT};font-weight:600">right.</span>' if ok else
                    f'<span style="color:{WRONG};font-weight:600">not yet: try again.</span>')
            # the explanation only after the right answer: a wrong pick should make one think
            fb.value = mark + (f" {html.escape(q.why)}" if ok and q.why else "")
        s = self.score()
        self.summary.value = (f"&nbsp;{s['right']} of {s['total']} right"
                              + (f", {s['total'] - s['answered']} unanswered"
                                 if s["answered"] < s["total"] else ""))
        return s

    def score(self) -> dict[str, int]:
        """How many questions are answered, how many of them rightly, out of how many."""
        answered = [(q, c.value) for q, c in zip(self.questions, self.choosers, strict=True)
                    if c.value is not None]
        return {"right": sum(q.is_right(v) for q, v in answered), "answered": len(answered),
                "total": len(self.questions)}

    def static_html(self) -> str:
        items = []
        for q in self.questions:
            choices = "".join(f"<li>{html.escape(c)}</li>" for c in q.choices)
            items.append(f"<li><p>{html.escape(q.text)}</p><ul>{choices}</ul></li>")
        answers = "".join(
            f"<li><b>{html.escape(q.answer)}</b>{(' ' + html.escape(q.why)) if q.why else ''}</li>"
            for q in self.questions)
        return (f'<div class="bitkit-selfcheck"><h4>{html.escape(self.title)} (static copy: open '
                f"the notebook in JupyterLab to answer)</h4><ol>{''.join(items)}</ol>"
                f"<details><summary>show answers</summary><ol>{answers}</ol></details></div>")
