"""A sweep trial's trainer waits after each evaluation for the sweep's verdict (worker/
training/verdict.py): until the supervisor writes a judged step at least the evaluation's,
at most its bound. A fake clock: nothing here depends on how fast the machine is."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerControl, TrainerState, TrainingArguments

from tests.worker.training.conftest import make_spec, sentiment_rows
from worker.training import run
from worker.training.layout import VERDICT_FILENAME
from worker.training.verdict import POLL_SECONDS, AwaitVerdict, VerdictFile


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_the_verdict_file_reads_the_judged_step_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / VERDICT_FILENAME
    judged = VerdictFile(path)
    assert judged() == 0  # not written yet
    path.write_text("12")
    assert judged() == 12
    path.write_text("")  # never half-written by the supervisor; read as "not yet" anyway
    assert judged() == 0


def test_waits_until_the_evaluation_is_judged() -> None:
    fake = FakeTime()
    judged = {"step": 0}

    def verdict() -> int:
        if fake.now >= 1.0:  # the sweep judges step 8 after a second
            judged["step"] = 8
        return judged["step"]

    waiter = AwaitVerdict(verdict, 30.0, clock=fake.clock, sleep=fake.sleep)
    assert waiter.wait(8) is True
    assert 1.0 <= fake.now < 1.0 + 2 * POLL_SECONDS
    # an evaluation judged already (a resumed trial's, or a verdict that came first) is free
    fake.slept = 0.0
    assert waiter.wait(4) is True and fake.slept == 0.0


def test_a_driver_that_never_answers_holds_the_trainer_only_for_the_bound() -> None:
    fake = FakeTime()
    waiter = AwaitVerdict(lambda: 0, 5.0, clock=fake.clock, sleep=fake.sleep)
    assert waiter.wait(8) is False
    assert 5.0 <= fake.now < 5.0 + 2 * POLL_SECONDS
    assert waiter.waits == [(8, fake.now)]


def test_the_last_evaluation_is_not_waited_on() -> None:
    asked: list[int] = []

    def verdict() -> int:
        asked.append(1)
        return 0

    fake = FakeTime()
    waiter = AwaitVerdict(verdict, 5.0, clock=fake.clock, sleep=fake.sleep)
    state = TrainerState(global_step=12, max_steps=12)
    args: Any = TrainingArguments(output_dir="/tmp/unused", report_to=[])
    waiter.on_evaluate(args, state, TrainerControl())
    assert not asked and fake.now == 0.0
    waiter.on_evaluate(args, TrainerState(global_step=6, max_steps=12), TrainerControl())
    assert waiter.waits and waiter.waits[0][0] == 6


def test_the_trainer_stays_at_each_evaluation_until_it_is_judged(
    tmp_path: Path, tiny_bert: Path
) -> None:
    # 24 rows in batches of 4: 6 steps an epoch, evaluations at 4, 8 and 12 (the last)
    spec = make_spec(
        tmp_path,
        "classification",
        tiny_bert,
        sentiment_rows(),
        None,
        {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        eval_steps=4,
    )
    spec["verdict_seconds"] = 600.0
    verdict = Path(spec["output_dir"]) / VERDICT_FILENAME
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    judges: list[threading.Thread] = []

    def judge(step: int) -> None:
        time.sleep(0.3)  # the sweep takes its time; the trainer must not train meanwhile
        with lock:
            seen.append(("verdict", step))
        verdict.write_text(str(step))

    def emit(event: dict[str, Any]) -> None:
        with lock:
            seen.append((event["type"], int(event.get("step", 0))))
        if event["type"] == "eval":
            judges.append(threading.Thread(target=judge, args=(event["step"],)))
            judges[-1].start()

    result = run.train(spec, emit)
    for thread in judges:
        thread.join()
    assert result["type"] == "succeeded"
    order = [(kind, step) for kind, step in seen if kind in ("eval", "verdict", "progress")]
    # after evaluations 4 and 8 the next step comes only after their verdict
    for step in (4, 8):
        at = order.index(("eval", step))
        assert order[at + 1] == ("verdict", step), order
        assert order[at + 2] == ("progress", step + 1), order
    assert [step for kind, step in order if kind == "progress"] == list(range(1, 13))
