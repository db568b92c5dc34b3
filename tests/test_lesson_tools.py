"""What the lessons share besides parameters: self-checks, worked solutions that run, and the
one-time build of the shared upstream models (``bitkit prepare``)."""

import json

import nbformat
import pytest
from ipywidgets.widgets.widget import CallbackDispatcher
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bitkit import cli, experiments, lesson, runs
from bitkit.lesson import Question, answer_key
from widgets import SelfCheck

KERNELSPEC = {"name": "bitkit", "display_name": "bitkit (.venv)", "language": "python"}


@pytest.fixture(autouse=True)
def strict(monkeypatch):
    """Button callbacks raise instead of being logged by ipywidgets."""

    def call(self, *args, **kwargs):
        for callback in self.callbacks:
            callback(*args, **kwargs)

    monkeypatch.setattr(CallbackDispatcher, "__call__", call)


# ------------------------------------------------------------------------------- self-checks


def test_a_question_needs_its_answer_among_distinct_choices():
    q = Question("Did transfer win?", ["yes", "no"], "yes", "62.6% vs 44.2%")
    assert q.choices == ("yes", "no") and q.is_right("yes") and not q.is_right("no")
    with pytest.raises(ValueError, match="'maybe' is not a choice"):
        q.is_right("maybe")
    with pytest.raises(ValueError, match="answer 'perhaps' is not one of the choices"):
        Question("?", ["yes", "no"], "perhaps")
    with pytest.raises(ValueError, match="at least two different choices"):
        Question("?", ["yes", "yes"], "yes")
    assert answer_key([q]) == [{"question": "Did transfer win?", "choices": ["yes", "no"],
                                "answer": "yes"}]


def test_self_check_marks_answers_and_explains_only_the_right_ones():
    questions = [Question("Which arm won?", ["transfer", "scratch"], "transfer", "by 18 points"),
                 Question("How many classes?", ["10", "20", "728"], "20")]
    quiz = SelfCheck(questions)
    assert quiz.score() == {"right": 0, "answered": 0, "total": 2}
    assert quiz.answer(0, "scratch") is False
    assert "not yet" in quiz.feedback[0].value and "18 points" not in quiz.feedback[0].value
    assert quiz.feedback[1].value == ""  # unanswered: no verdict
    assert "0 of 2 right, 1 unanswered" in quiz.summary.value
    assert quiz.answer(0, "transfer") is True and "by 18 points" in quiz.feedback[0].value
    quiz.choosers[1].value = "20"  # a click on the radio button, then Check
    quiz.check_button.click()
    assert quiz.score() == {"right": 2, "answered": 2, "total": 2}
    assert "2 of 2 right" in quiz.summary.value
    with pytest.raises(IndexError, match="has 2"):
        quiz.answer(2, "20")
    with pytest.raises(ValueError, match="'11' is not a choice"):
        quiz.answer(1, "11")
    with pytest.raises(ValueError, match="at least one Question"):
        SelfCheck([])


def test_self_check_static_view_lists_questions_and_folds_the_answers():
    quiz = SelfCheck([Question("Which arm won?", ["transfer", "scratch"], "scratch", "<why>")])
    bundle = quiz._repr_mimebundle_()
    static = bundle["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "Which arm won?" in static and "<li>transfer</li>" in static
    # the answer is there for a reader of the export, but behind a toggle; text is escaped
    assert static.index("<details>") < static.index("<b>scratch</b>")
    assert "&lt;why&gt;" in static and "<why>" not in static


# ----------------------------------------------------------------------- worked solutions run


def _lesson(folder, solutions):
    nb = new_notebook(metadata={"kernelspec": KERNELSPEC})
    params = new_code_cell("x = 3")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell("# tiny"), params,
                new_code_cell("from bitkit import lesson\nsquare = x * x\n"
                              "lesson.save_metrics({'square': square})")]
    path = folder / "tiny.ipynb"
    nbformat.write(nb, str(path))
    if solutions is not None:
        (folder / "solutions").mkdir()
        (folder / "solutions" / "tiny.md").write_text(solutions)
    return path


SOLUTIONS = """# Solutions · tiny

## Exercise 1 · The cube

From a terminal:

```bash
bitkit run tiny.ipynb -p x 4
```

In the lesson's kernel, with its own `square`:

```python
cube = square * x
print(f"cube = {cube}")
```

The cube of 3 is 27.
"""


def test_solutions_are_cells_after_the_lesson_prose_markdown_python_code(tmp_path):
    path = _lesson(tmp_path, SOLUTIONS)
    assert runs.solutions_file(path) == tmp_path / "solutions" / "tiny.md"
    cells = runs.solution_cells(path)
    assert [c.cell_type for c in cells] == ["markdown", "markdown", "code", "markdown"]
    assert "```bash\nbitkit run tiny.ipynb -p x 4\n```" in cells[1].source  # shown, not run
    assert cells[2].source == 'cube = square * x\nprint(f"cube = {cube}")'
    assert cells[2].metadata["tags"] == [runs.SOLUTION_TAG]
    assert cells[3].source == "The cube of 3 is 27."


def test_run_with_solutions_executes_them_in_the_lessons_kernel(tmp_path, capsys):
    path = _lesson(tmp_path, SOLUTIONS)
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "-p", "x", "4", "--out", str(out), "--quiet",
                     "--solutions"]) == 0
    executed = nbformat.read(str(out / "tiny.ipynb"), as_version=4)
    solved = [c for c in executed.cells if runs.SOLUTION_TAG in c.metadata.get("tags", [])]
    assert [o["text"] for o in solved[0].outputs] == ["cube = 64\n"]  # the lesson's x and square
    assert json.loads((out / "metrics.json").read_text()) == {"square": 16}
    assert not list(tmp_path.glob("**/*with-solutions*"))  # the augmented copy is temporary
    # without the flag the executed copy is the lesson alone
    runs.run_notebook(path, {}, tmp_path / "plain", log_output=False)
    plain = nbformat.read(str(tmp_path / "plain" / "tiny.ipynb"), as_version=4)
    assert len(plain.cells) == 3


def test_a_broken_solution_fails_the_run_at_its_cell(tmp_path):
    path = _lesson(tmp_path, "## Exercise 1\n\n```python\nprint(undefined_name)\n```\n")
    with pytest.raises(runs.NotebookFailed) as e:
        runs.run_notebook(path, {}, tmp_path / "out", log_output=False, solutions=True)
    assert e.value.cell == 5 and "NameError" in e.value.error  # 3 lesson cells, 2 appended


def test_solutions_missing_or_without_code_are_named(tmp_path):
    path = _lesson(tmp_path, None)
    with pytest.raises(FileNotFoundError, match=r"tiny.ipynb has no worked solutions to run: "
                       r"expected .*solutions/tiny.md"):
        runs.solution_cells(path)
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "tiny.md").write_text("## Exercise 1\n\nThink about it.\n")
    with pytest.raises(ValueError, match="no ```python block"):
        runs.solution_cells(path)


# ------------------------------------------------------------------- shared upstream models


def test_prepare_builds_each_shared_model_once(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv("BITKIT_CACHE", str(tmp_path / "cache"))
    tiny = dict(model="R14x0.25", upstream="world-upstream", size=64, steps=5, batch_size=16,
                seed=0)
    monkeypatch.setattr(lesson, "SHARED_UPSTREAMS", [{**tiny, "lessons": ["00", "02"]},
                                                     {**tiny, "seed": 1, "lessons": ["02"]}])
    assert not experiments.is_pretrained(**tiny)
    assert cli.main(["prepare", "--list"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("not built") == 2 and "lessons 00, 02: R14x0.25 pre-trained on" in listed
    rows = lesson.prepare(only="0", progress=False)  # lesson "0" is "00"
    assert [r["cached"] for r in rows] == [False] and experiments.is_pretrained(**tiny)
    assert not experiments.is_pretrained(**{**tiny, "seed": 1})
    assert cli.main(["prepare", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] cached" in out and "[2/2] building" in out and "2 shared upstream" in out
    with pytest.raises(ValueError, match="no shared upstream model is used by lesson '07'"):
        lesson.prepare(only="07")


def test_describe_upstream_says_how_the_shared_model_is_trained():
    line = lesson.describe_upstream("R14x0.25", "world-upstream", size=50_000, steps=600,
                                    batch_size=128, seed=0)
    # BiT's rule: peak lr 0.03 x 128/256, weight decay 1e-4, 600 x 128 / 50,000 = 1.5 epochs
    assert line == ("R14x0.25 pre-trained on world-upstream: 50,000 images, 600 SGD steps at "
                    "batch 128 (1.5 epochs), peak lr 0.015 (BiT's upstream rule, 0.03 x "
                    "batch/256), weight decay 0.0001, BiT-S's schedule compressed to those "
                    "steps, seed 0")
    assert "peak lr 0.1 (given)" in lesson.describe_upstream("R14x0.25", base_lr=0.1)
    assert lesson.SHARED_UPSTREAMS[0] | {"lessons": None} == dict(
        model="R14x0.25", upstream="world-upstream", size=50_000, steps=600, batch_size=128,
        seed=0, lessons=None)  # the rule-lr model of lessons 02, 04-07 and 09


def test_describe_upstream_names_an_overridden_weight_decay_once():
    line = lesson.describe_upstream("R14x0.25", base_lr=0.1, weight_decay=0.0)
    assert "weight decay 0," in line and "weight_decay" not in line and "0.0001" not in line


def test_train_size_must_fit_the_tasks_training_split_before_any_compute(tmp_path):
    with pytest.raises(lesson.ParameterError, match=r"'digits' has 1,297 training examples; "
                                                    r"use at most 1,047"):
        lesson.check_parameters(task="digits", train_size=1200, val_size=250)
    with pytest.raises(lesson.ParameterError, match="parameter train_size = 5000"):
        lesson.check_parameters(task="world-objects", train_size=5000)
    assert lesson.check_parameters(task="world-objects", train_size=1750, val_size=250)
    assert lesson.check_parameters(task=str(tmp_path), train_size=10**6)  # a folder: size unknown yet


def _defaults(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    p = {}
    exec(cell.source, p)  # the parameters cell is plain assignments
    return p


def _default_upstreams(name):
    """The upstream models lesson ``name`` pre-trains with its defaults (pretrain's arguments)."""
    p = _defaults(name)
    spec = lambda m, size, steps, lr: dict(  # noqa: E731
        model=m, upstream=p["upstream"], size=size, steps=steps, batch_size=p["upstream_batch"],
        seed=p.get("seed", 0), base_lr=lr)
    if name.startswith("02"):  # the grid, its longer run, and the grid's first cell at the rule's lr
        m, big = p["models"][0], max(p["upstream_sizes"])
        return ([spec(a, n, p["upstream_steps"], p["upstream_lr"]) for a in p["models"]
                 for n in p["upstream_sizes"]]
                + [spec(m, big, p["upstream_steps"] * p["longer"], p["upstream_lr"]),
                   spec(m, big, p["upstream_steps"], None)])
    if name.startswith("08"):
        return [spec(a, n, p["upstream_steps"], p["upstream_lr"]) for a, n in p["upstream_models"]]
    return [spec(p["model"], p["upstream_size"], p["upstream_steps"], p.get("upstream_lr"))]


@pytest.mark.parametrize("name", ["00_quickstart", "02_pretraining", "03_transfer", "04_few_shot",
                                  "05_vtab", "06_error_browser", "07_duplicates",
                                  "08_out_of_context", "09_released_bit"])
def test_every_default_upstream_model_is_one_bitkit_prepare_builds(name):
    # a lesson whose default model is not shared would pre-train in class, not before it
    shared = [dict({k: v for k, v in u.items() if k != "lessons"}, base_lr=u.get("base_lr"))
              for u in lesson.SHARED_UPSTREAMS if name[:2] in u["lessons"]]
    wanted = _default_upstreams(name)
    assert all(w in shared for w in wanted), (wanted, shared)
    assert all(s in wanted for s in shared), "tagged with a lesson that does not use it"
